"""Security: API keys.

API keys
  * Only hashes at rest: after `concord keys create`, no key name or value in
    Redis contains the key, and a key of CONCORD_API_KEYS never reaches Redis at
    all (MONITOR sees neither it nor its digest). An agent's credential reaches
    Redis only as its digest.
  * A revoked key is refused (401) by EVERY instance within the documented one
    second of cache: two `concord serve` processes on one Redis, both holding the
    key in their cache, answer 401 once one second has passed since
    `concord keys revoke` returned.
  * No secret is ever compared. server/http/auth.py hashes the presented key with
    SHA-256 and looks the digest up: in a dict for CONCORD_API_KEYS, with HGET in
    the ``<prefix>:apikeys`` hash for stored keys. Equality is only ever tested
    between digests (by dict/hash lookup), never between a presented key and a
    stored secret, so there is no byte-by-byte comparison whose timing could
    reveal a key prefix, and nothing for hmac.compare_digest to protect. The
    tests check the consequence: a key that shares a real key's length and
    prefix, or differs from it in one character, or is its digest, is 401.

Figures (revocation latency) are printed with `pytest -s` and appended as JSON lines to
the file named by CONCORD_SECURITY_REPORT, if set (tests/system/security_support.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Self

import httpx
import pytest
import redis as redis_py
import redis.asyncio

from concord.server.errors import ConcordError
from concord.server.http.auth import CACHE_SECONDS, Authenticator
from concord.server.principals import KeyGrant
from concord.server.settings import Settings, key_digest, parse_api_keys
from concord.server.store import Store
from concord.server.store.keys import Keys
from tests.cli.test_serve_and_keys import concord, everything_in
from tests.conftest import API_KEY, OTHER_API_KEY, TENANT
from tests.support.api import V1, C, problem
from tests.support.helpers import RedisServer, eventually, service
from tests.system.security_support import AGENTS, bearer, security_report
from tests.system.security_support import private_redis as private_redis  # a fixture: pytest finds it here


class Monitor:
    """Every command a redis-server executes while the block runs, as MONITOR shows
    them: the commands run inside scripts too. (AUTH and HELLO arguments are
    redacted by Redis itself.)"""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []
        self._end = f"monitor-end-{uuid.uuid4().hex}"

    def __enter__(self) -> Self:
        self._client = redis_py.Redis(port=self.server.port, decode_responses=True, protocol=2)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        for item in self._monitor.listen():
            if self._end in item["command"]:
                return
            self.commands.append(item["command"])

    def __exit__(self, *exc_info: object) -> None:
        admin = self.server.client()
        try:
            admin.echo(self._end)  # the listener stops at this one
        finally:
            admin.close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "MONITOR never showed its end marker"
        self._client.close()


# --- API keys: no secret is compared, only digests are kept -------------------------


async def test_keys_are_looked_up_by_digest_and_held_only_as_digests():
    """The Authenticator passes the store nothing but SHA-256 digests, never asks
    the store about a configured key, and keeps no key in any attribute."""
    looked_up: list[str] = []
    stored = {key_digest("stored-key-0123456789"): KeyGrant(id="key_0123456789abcdef", tenant="initech")}

    async def lookup(digest: str) -> KeyGrant | None:
        looked_up.append(digest)
        return stored.get(digest)

    auth = Authenticator(parse_api_keys("acme:static-key-0123456789"), lookup)
    assert (await auth.grant("Bearer static-key-0123456789")).tenant == "acme"
    assert looked_up == []  # a configured key never reaches the store
    assert (await auth.grant("Bearer stored-key-0123456789")).tenant == "initech"
    assert looked_up == [key_digest("stored-key-0123456789")]
    for wrong in (
        "static-key-012345678",
        "static-key-0123456789x",
        "STATIC-KEY-0123456789",
        key_digest("static-key-0123456789"),
        "stored-key-0123456788",
    ):
        with pytest.raises(ConcordError) as refused:
            await auth.grant(f"Bearer {wrong}")
        assert refused.value.code == "unauthorized" and wrong not in refused.value.detail
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in looked_up)
    held = repr(vars(auth))
    assert "static-key" not in held and "stored-key" not in held, held

    settings = Settings.from_env({"CONCORD_API_KEYS": "acme:static-key-0123456789"})
    assert dict(settings.api_keys) == {key_digest("static-key-0123456789"): KeyGrant(id="cfg-1", tenant="acme")}
    assert "static-key" not in repr(settings)


async def test_keys_close_to_a_real_key_are_refused(asgi_app, redis_client, keys):
    """Keys of the same length and prefix as a real one, one character off, a
    prefix or an extension of it, or its SHA-256 (what Redis holds) are all 401:
    being found by digest, a key either is one or is not, however close it comes."""
    stored, _ = await Store(redis_client, keys).apikeys.create(TENANT)
    assert stored.startswith("ck_")

    def near(key: str) -> list[str]:
        def flip(ch: str) -> str:
            return "A" if ch != "A" else "B"

        middle = len(key) // 2
        return [
            key[:3] + secrets.token_urlsafe(64)[: len(key) - 3],  # same prefix, same length
            key[:-1] + flip(key[-1]),
            flip(key[0]) + key[1:],
            key[:middle] + flip(key[middle]) + key[middle + 1 :],
            key.swapcase(),
            key[:-1],
            key + "A",
            key_digest(key),
        ]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_app), base_url="http://concord.test") as c:
        for real in (stored, API_KEY):
            assert (await c.get(AGENTS, headers=bearer(real))).status_code == 200
            candidates = near(real)
            assert len(set(candidates)) == len(candidates) and real not in candidates
            for candidate in candidates:
                response = await c.get(AGENTS, headers=bearer(candidate))
                problem(response, 401, "unauthorized")
                assert candidate not in response.text and real not in response.text
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await c.get(AGENTS, headers=bearer(OTHER_API_KEY))).status_code == 200


@pytest.mark.real
def test_only_digests_of_api_keys_reach_redis(private_redis: RedisServer, tmp_path: Path):
    """`concord keys create` stores the key's SHA-256 only; a key of CONCORD_API_KEYS
    never reaches Redis, not even as a digest. Checked in what Redis holds and in
    every command it executed (MONITOR), and in the service's log."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": prefix}
    static_key = f"acme-{secrets.token_urlsafe(24)}"
    with Monitor(private_redis) as monitor:
        created = concord("keys", "create", "--tenant", "initech", settings=settings)
        assert created.returncode == 0, created.stderr
        stored_key, stored_key_id = json.loads(created.stdout)["apiKey"], json.loads(created.stdout)["id"]
        with service({**settings, "CONCORD_API_KEYS": f"acme:{static_key}"}, tmp_path / "concord.log") as proc:
            credentials = []
            for api_key, tenant in ((static_key, "acme"), (stored_key, "initech")):
                agent = httpx.post(
                    f"{proc.url}{V1}/register", json={"agentName": "sdr"}, headers=bearer(api_key), timeout=10
                )
                assert agent.status_code == 201 and agent.json()["tenantId"] == tenant, agent.text
                credentials.append((tenant, agent.json()["id"], agent.json()["credential"]))
                beat = httpx.post(
                    f"{proc.url}{C}/heartbeat",
                    json={"agentId": agent.json()["id"]},
                    headers=bearer(agent.json()["credential"]),
                    timeout=10,
                )
                assert beat.status_code == 200, beat.text
                problem(
                    httpx.get(f"{proc.url}{AGENTS}", headers=bearer(api_key + "x"), timeout=10), 401, "unauthorized"
                )
            log = proc.log_text()

    client = private_redis.client()
    try:
        at_rest = everything_in(client)
        stored = client.hgetall(Keys(prefix).api_keys())
        # The key's digest (its grant) and its id (naming the digest): never the key.
        assert set(stored) == {key_digest(stored_key), f"id:{stored_key_id}"}
        assert stored[f"id:{stored_key_id}"] == key_digest(stored_key)
        # An agent's credential is held as its digest, in the agent's hash.
        for tenant, agent_id, credential in credentials:
            assert client.hget(Keys(prefix).agent(tenant, agent_id), "credential") == key_digest(credential)
    finally:
        client.close()
    never = {
        "the stored key": stored_key,
        "the configured key": static_key,
        "the configured key's digest": key_digest(static_key),
        **{f"agent {agent_id}'s credential": credential for _, agent_id, credential in credentials},
    }
    for what, secret in never.items():
        assert not [item for item in at_rest if secret in item], f"{what} is in Redis"
        assert not [c for c in monitor.commands if secret in c], f"{what} was sent to Redis"
        assert secret not in log, f"{what} is in the service's log"
    assert any(key_digest(stored_key) in c for c in monitor.commands)  # stored keys are found by digest
    for _, _, credential in credentials:  # and a heartbeat's script is handed the credential's digest
        assert any(key_digest(credential) in c for c in monitor.commands)


# --- API keys: revocation on every instance --------------------------------------

POLL_DEADLINE = 10.0  # seconds after the revocation: far past the documented 1 s


@pytest.mark.real
async def test_a_revoked_key_is_refused_by_every_instance_within_the_cache_second(
    private_redis: RedisServer, tmp_path: Path
):
    """Two instances on one Redis both hold the key in their one-second cache
    (each is asked continuously while `concord keys revoke` runs). Then:

    * every request sent one second (CACHE_SECONDS) or more after the revoke
      command returned is refused, on both instances (401, or 429 once the
      address has spent its budget of refused credentials). That bound is exact, not a
      timing guess: a cache entry saying the key is valid was made by a lookup
      that began before the key was deleted, so it expires within a second of the
      deletion, and the command returns after the deletion;
    * once an instance refuses the key, it never accepts it again;
    * another key of the same tenant keeps working.
    The time to the first 401 on each instance is reported, not asserted.
    """
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    (doomed, doomed_id), (kept, _) = (
        (made["apiKey"], made["id"])
        for made in (
            json.loads(concord("keys", "create", "--tenant", "initech", settings=settings).stdout) for _ in range(2)
        )
    )
    assert doomed and kept
    with service(settings, tmp_path / "one.log") as one, service(settings, tmp_path / "two.log") as two:
        instances = (one, two)
        async with AsyncExitStack() as stack:
            doomed_clients = [await stack.enter_async_context(p.client(doomed)) for p in instances]
            kept_clients = [await stack.enter_async_context(p.client(kept)) for p in instances]
            for c in doomed_clients + kept_clients:
                assert (await c.get(AGENTS)).status_code == 200

            revoke: dict[str, float] = {}
            answers: list[list[tuple[float, int]]] = [[] for _ in instances]  # (sent at, status) per instance

            async def ask(i: int, c: httpx.AsyncClient) -> None:
                """Ask continuously until well past the bound (deadline-bounded)."""
                while True:
                    sent_at = time.monotonic()
                    status = (await c.get(AGENTS)).status_code
                    answers[i].append((sent_at, status))
                    # 429: the address has spent its budget of refused credentials (security.md)
                    assert status in (200, 401, 429), status
                    done = revoke.get("done")
                    if done is not None and sent_at > done + CACHE_SECONDS + 0.2:
                        return
                    await asyncio.sleep(0.005)

            async def deleted() -> None:
                """When the key left Redis (to within one poll), for the report."""
                while await watcher.hexists(Keys(settings["CONCORD_KEY_PREFIX"]).api_keys(), key_digest(doomed)):
                    await asyncio.sleep(0.002)
                revoke["deleted"] = time.monotonic()

            async def all_answering() -> bool:
                return all(answers)

            watcher = await stack.enter_async_context(redis_py.asyncio.Redis(port=private_redis.port))
            askers = [asyncio.create_task(ask(i, c)) for i, c in enumerate(doomed_clients)]
            try:
                await eventually(all_answering, what="both instances answering")
                revoke["start"] = time.monotonic()
                askers.append(asyncio.create_task(deleted()))
                run = await asyncio.to_thread(concord, "keys", "revoke", doomed_id, settings=settings)
                revoke["done"] = time.monotonic()
                assert run.returncode == 0, run.stderr
                await asyncio.wait_for(asyncio.gather(*askers), timeout=POLL_DEADLINE)
            finally:
                for task in askers:
                    task.cancel()

            bound = revoke["done"] + CACHE_SECONDS
            first_refusals, after_deletion = [], []
            for i, log in enumerate(answers):
                assert {s for t, s in log if t < revoke["start"]} == {200}, f"instance {i + 1} refused too early"
                refused = [t for t, s in log if s in (401, 429)]
                assert refused, f"instance {i + 1} never refused the revoked key"
                assert all(s != 200 for t, s in log if t >= refused[0]), f"instance {i + 1} accepted it again"
                late = [(t - revoke["done"], s) for t, s in log if t >= bound]
                assert late and all(s != 200 for _, s in late), f"instance {i + 1} accepted it past the bound"
                first_refusals.append(refused[0] - revoke["done"])
                after_deletion.append(refused[0] - revoke["deleted"])
            for c in doomed_clients:
                assert (await c.get(AGENTS)).status_code in (401, 429)
            for c in kept_clients:
                assert (await c.get(AGENTS)).status_code == 200

    revoke_ms = (revoke["done"] - revoke["start"]) * 1000
    firsts = [round(t * 1000) for t in first_refusals]
    from_deletion = [round(t * 1000) for t in after_deletion]
    security_report(
        f"key revocation: first 401 on instance 1 / 2 at {from_deletion[0]} / {from_deletion[1]} ms after the key "
        f"left Redis, {firsts[0]} / {firsts[1]} ms after `concord keys revoke` returned (it took {revoke_ms:.0f} ms); "
        f"every request from +{CACHE_SECONDS * 1000:.0f} ms on was 401 ({sum(len(a) for a in answers)} requests)",
        {
            "check": "key-revocation",
            "instances": len(instances),
            "firstRefusalMsAfterDeletion": from_deletion,
            "firstRefusalMsAfterRevoke": firsts,
            "revokeCommandMs": round(revoke_ms),
            "boundMs": round(CACHE_SECONDS * 1000),
            "requests": sum(len(a) for a in answers),
            "acceptedPastBound": 0,
        },
    )
