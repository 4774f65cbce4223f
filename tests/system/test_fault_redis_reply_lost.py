"""Fault 3, the lost reply: a script's reply is lost on the wire after the script
ran, the service's client runs it again, and the second run changes nothing more.
Redis stalled under load is tests/system/test_fault_redis_stalled.py.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from concord.server.errors import ConcordError
from concord.server.principals import AgentPrincipal, KeyGrant
from concord.server.redis.connect import connect
from concord.server.settings import Settings, key_digest
from concord.server.store import Store
from concord.server.store.keys import Keys, agent_tag, lease_id
from concord.server.store.scripts import LIB, script_text, sources
from tests.support.api import ms
from tests.support.helpers import RedisServer
from tests.support.reports import fault_record
from tests.system.faults_support import REDIS_TIMEOUT, FaultyProxy
from tests.system.faults_support import stall_redis as stall_redis  # a fixture: pytest finds it by name

pytestmark = pytest.mark.real


# --- 3b. A lost reply: the service runs the script again -------------------------------------

LOST = "lostreply"
ADMIN = KeyGrant(id="cfg-1", tenant=LOST)  # the admin key that registers and deregisters


def first(result: Any) -> Any:
    """The value of a store answer that may come with a flag: (value, created) -> value."""
    return result[0] if isinstance(result, tuple) else result


async def test_a_script_whose_reply_is_lost_runs_again_and_changes_nothing_more(stall_redis: RedisServer):
    """The service's own Redis client (concord.server.redis.connect.connect) and store talk to Redis
    through a proxy that lets one script call through and then cuts the connection
    instead of passing its reply back. The batcher (concord.server.redis.batcher.Batcher) sends
    the call again on a new connection, so the script runs twice; the second
    run must change nothing. What the caller hears may differ from a single run
    (a registration says "updated", a release "not found"), which is harmless."""
    prefix = f"t{os.urandom(6).hex()}"
    keys = Keys(prefix)
    db = stall_redis.client()
    reruns, answers = 0, {}
    with fault_record(
        "lost-reply-script-rerun",
        "a proxy cuts the connection after a script ran, before its reply; the service retries the call",
    ) as record:
        async with FaultyProxy(stall_redis.port) as proxy:
            for name in sources():  # loaded already, as in a running service
                if name != LIB:
                    db.script_load(script_text(name))
            client = connect(Settings(redis_url=proxy.url, redis_timeout_seconds=REDIS_TIMEOUT))
            store = Store(client, keys, 300)
            try:

                async def lost_once(operation: Callable[[], Awaitable[Any]]) -> Any:
                    """Run ``operation`` (one script call) with its first reply lost."""
                    nonlocal reruns
                    calls, lost = proxy.script_calls, proxy.replies_lost
                    proxy.lose_next_reply()
                    try:
                        result = await operation()
                    except ConcordError as exc:
                        result = exc
                    assert proxy.replies_lost == lost + 1, "the proxy lost no reply"
                    assert proxy.script_calls == calls + 2, f"{proxy.script_calls - calls} script calls, expected 2"
                    reruns += 1
                    return result

                def count(pattern: str) -> int:
                    return sum(1 for _ in db.scan_iter(match=f"{keys.tenant(LOST)}:{pattern}", count=1000))

                # Registration: one agent, created once.
                sdr, created = await lost_once(lambda: store.agents.register(LOST, "sdr", None, None, ADMIN))
                answers["register"] = "updated" if not created else "created"
                assert db.zcard(keys.agents(LOST)) == 1 and db.zcard(keys.heartbeats(LOST)) == 1
                assert db.hget(keys.agent(LOST, sdr.id), "registeredAt") == str(ms(sdr.registered_at))
                # Both runs stored the credential the caller was answered: it works.
                as_sdr = key_digest(sdr.credential)
                assert db.hget(keys.agent(LOST, sdr.id), "credential") == as_sdr

                beat = await lost_once(lambda: store.agents.heartbeat(LOST, sdr.id, as_sdr))
                assert db.zscore(keys.heartbeats(LOST), sdr.id) == ms(beat.last_heartbeat)

                # A rotation: both runs store the one new credential answered; the old one is refused.
                rotated = await lost_once(lambda: store.agents.rotate(LOST, sdr.id, ADMIN))
                stale, as_sdr = as_sdr, key_digest(rotated.credential)
                assert db.hget(keys.agent(LOST, sdr.id), "credential") == as_sdr != stale
                with pytest.raises(ConcordError) as stale_beat:
                    await store.agents.heartbeat(LOST, sdr.id, stale)
                assert stale_beat.value.code == "unauthorized"
                assert db.zscore(keys.heartbeats(LOST), sdr.id) == ms(beat.last_heartbeat)

                # A grant: one lease, one token taken from the fence.
                lease, created = await lost_once(
                    lambda: store.leases.acquire(LOST, sdr.id, "alice@example.com", None, 600_000, as_sdr)
                )
                answers["acquire"] = "extended" if not created else "granted"
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                lease_key, registry = (
                    keys.lease(LOST, "alice@example.com"),
                    keys.lease_registry(LOST, agent_tag(sdr.id)),
                )
                holder, token = db.get(lease_key).split("|", 2)[:2]
                assert (f"agent_{holder}", token) == (sdr.id, str(lease.fencing_token))
                assert lease.id == lease_id(sdr.id, lease.fencing_token)
                assert db.pexpiretime(lease_key) == ms(lease.expires_at)
                assert db.hgetall(registry) == {str(lease.fencing_token): f"{ms(lease.expires_at)}:alice@example.com"}
                assert count("lease:*") == 1 and count("leases:*") == 1

                renewed = await lost_once(lambda: store.leases.renew(LOST, lease.id, sdr.id, 900_000, as_sdr))
                assert (renewed.id, renewed.fencing_token) == (lease.id, lease.fencing_token)
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                assert db.pexpiretime(lease_key) == ms(renewed.expires_at)
                assert db.hgetall(registry) == {str(lease.fencing_token): f"{ms(renewed.expires_at)}:alice@example.com"}

                # A consensus request: one request, in each of its lists once.
                peers = [first(await store.agents.register(LOST, f"peer-{i}", None, None, ADMIN)) for i in range(3)]
                request = first(
                    await lost_once(
                        lambda: store.consensus.request(LOST, sdr.id, "offer", None, None, 3_600_000, as_sdr)
                    )
                )
                assert count("consensus:cons_*") == 1
                for listed in ("all", "pending"):
                    assert db.zrange(keys.consensus_list(LOST, listed), 0, -1) == [request.id]
                assert db.zrange(keys.consensus_due(LOST), 0, -1) == [request.id]

                # Votes: each counted once; the deciding one decides once.
                as_peer = [key_digest(peer.credential) for peer in peers]
                voted = await lost_once(
                    lambda: store.consensus.vote(LOST, request.id, peers[0].id, "approve", None, as_peer[0])
                )
                assert (voted.status, voted.tally.approve, len(voted.votes)) == ("pending", 1, 1)
                assert db.hlen(keys.votes(LOST, request.id)) == 1
                decided = await lost_once(
                    lambda: store.consensus.vote(LOST, request.id, peers[1].id, "approve", None, as_peer[1])
                )
                assert (decided.status, decided.tally.approve, len(decided.votes)) == ("approved", 2, 2), decided
                assert db.hlen(keys.votes(LOST, request.id)) == 2
                assert db.zrange(keys.consensus_list(LOST, "approved"), 0, -1) == [request.id]
                assert db.zcard(keys.consensus_list(LOST, "pending")) == 0
                read = await store.consensus.get(LOST, request.id)
                assert (read.status, read.resolved_at, read.votes) == ("approved", decided.resolved_at, decided.votes)

                # Release and deregistration: done once; the second run finds nothing to do.
                holder = AgentPrincipal(LOST, sdr.id, as_sdr)
                released = await lost_once(lambda: store.leases.release(LOST, lease.id, sdr.id, holder))
                answers["release"] = getattr(released, "code", "released")
                assert not db.exists(lease_key, registry)
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                removed = await lost_once(lambda: store.agents.remove(LOST, peers[2].id, ADMIN))
                answers["remove"] = getattr(removed, "code", "removed")
                assert not db.exists(keys.agent(LOST, peers[2].id))
                assert db.zscore(keys.agents(LOST), peers[2].id) is None
                assert db.zcard(keys.agents(LOST)) == 3
            finally:
                await client.aclose()
                db.close()
            record.trials = reruns
            record.acknowledged = reruns
            record.extra = {"scripts_run_twice": reruns, "changed_twice": 0, "answers_after_a_rerun": answers}
