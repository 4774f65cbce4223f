"""What a newcomer sees when `concord serve` starts for the first time.

On a fresh Redis (and on the embedded store) the first requests of every kind
meet their scripts already loaded, so /metrics shows no Redis errors: loading
the scripts is not an error. A Redis-backed service with no API key configured
or stored says, at start-up, how to make one.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api.test_metrics import parse_exposition
from tests.support.api import V1, C, bearer
from tests.support.helpers import HANG_SECONDS, redis_server, service, wait_until

KEY = "first-start-key-0123456789"


async def exercise(url: str, key: str) -> None:
    """One request of every kind that runs a script, as a first day would: the admin
    key registers the agents, each agent acts with its own credential."""
    async with httpx.AsyncClient(base_url=url, headers=bearer(key), timeout=HANG_SECONDS) as c:
        sdr = (await c.post(f"{V1}/register", json={"agentName": "sdr"})).json()
        peer = (await c.post(f"{V1}/register", json={"agentName": "peer"})).json()
        rotated = await c.post(f"{V1}/agents/{sdr['id']}/credentials")
        assert rotated.status_code == 200, rotated.text
        as_sdr, as_peer = bearer(rotated.json()["credential"]), bearer(peer["credential"])
        assert (await c.post(f"{C}/heartbeat", json={}, headers=as_sdr)).status_code == 200
        leased = await c.post(f"{C}/lease", json={"contactEmail": "a@example.com"}, headers=as_sdr)
        lease = leased.json()
        assert (await c.post(f"{C}/lease/{lease['id']}/renew", json={}, headers=as_sdr)).status_code == 200
        check = {"contactEmail": "a@example.com"}
        assert (await c.post(f"{C}/send-check", json=check, headers=as_sdr)).json()["allowed"] is True
        asked = (await c.post(f"{C}/consensus", json={"action": "discount"}, headers=as_sdr)).json()
        voted = await c.post(f"{C}/consensus/{asked['id']}/vote", json={"vote": "approve"}, headers=as_peer)
        assert voted.status_code == 200, voted.text
        assert (await c.get(f"{C}/consensus/{asked['id']}", headers=as_peer)).status_code == 200
        assert (await c.get(f"{C}/consensus")).status_code == 200
        assert (await c.delete(f"{C}/lease/{lease['id']}", headers=as_sdr)).status_code == 200
        assert (await c.delete(f"{V1}/agents/{peer['id']}")).status_code == 200


async def redis_errors(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=HANG_SECONDS) as client:
        samples = parse_exposition((await client.get(f"{url}/metrics")).text)
    return {
        dict(labels)["kind"]: value for (name, labels), value in samples.items() if name == "concord_redis_errors_total"
    }


@pytest.mark.real
async def test_a_fresh_redis_shows_no_redis_errors_after_the_first_requests(tmp_path: Path):
    with redis_server(tmp_path / "redis") as redis:
        settings = {
            "CONCORD_REDIS_URL": redis.url,
            "CONCORD_API_KEYS": f"acme:{KEY}",
            "CONCORD_RATE_LIMITS": "tenant=1000/s",
        }
        with service(settings, tmp_path / "concord.log") as proc:
            await exercise(proc.url, KEY)
            errors = await redis_errors(proc.url)
    assert errors and set(errors.values()) == {0}, errors


async def test_the_embedded_store_shows_no_redis_errors_after_the_first_requests(tmp_path: Path):
    log = tmp_path / "concord.log"
    with service({}, log) as proc:
        key = wait_until(lambda: _demo_key(log), what="the demo key")
        await exercise(proc.url, key)
        errors = await redis_errors(proc.url)
    assert errors and set(errors.values()) == {0}, errors


def _demo_key(log: Path) -> str | None:
    marker = "for tenant 'demo': "
    text = log.read_text()
    return text.split(marker, 1)[1].split()[0] if marker in text else None


@pytest.mark.real
def test_a_redis_backed_service_without_keys_says_how_to_make_one(tmp_path: Path):
    with redis_server(tmp_path / "redis") as redis:
        with service({"CONCORD_REDIS_URL": redis.url}, tmp_path / "concord.log") as proc:
            response = httpx.get(f"{proc.url}{V1}/agents", timeout=HANG_SECONDS)
            assert response.status_code == 401
            log = proc.log_text()
    assert "No API key is configured or stored in Redis" in log
    assert "concord keys create --tenant <tenant>" in log and "CONCORD_API_KEYS=<tenant>:<key>" in log


@pytest.mark.real
def test_a_service_with_a_stored_key_says_nothing_of_keys(tmp_path: Path):
    with redis_server(tmp_path / "redis") as redis:
        redis.client().hset("concord:apikeys", "0" * 64, "acme")
        with service({"CONCORD_REDIS_URL": redis.url}, tmp_path / "concord.log") as proc:
            log = proc.log_text()
    assert "No API key" not in log
