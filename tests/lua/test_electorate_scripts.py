"""The electorate of a consensus request, fixed when it is made (lua/lib.lua, the
electorate): who may vote, how the tally counts, and what active-since and the
lapse mark hold afterwards, on fakeredis and on a real Redis.

An agent "lapses in time" here by moving its heartbeat to just past the window
while the lapse mark stays: what the clock does, which the sweep must find on its
own. ``lapse()`` (the epoch, mark deleted) is a lapse made by hand, which the
rebuild finds.
"""

from __future__ import annotations

from concord.server.store import Store
from concord.server.store.replies import Reply
from tests.lua.scripts_support import (
    TENANT,
    clock,
    cons,
    dump,
    heartbeat,
    lapse,
    new_agent,
    opened,
    read,
    register,
    remove,
    vote,
)


async def since(store: Store) -> dict[str, int]:
    """active-since: agent -> when its current run began, µs."""
    return {a: int(s) for a, s in await store.redis.zrange(store.keys.active_since(TENANT), 0, -1, withscores=True)}


async def lapse_in_time(store: Store, agent_id: str) -> None:
    """The agent lapses as the clock makes agents lapse: it was active at the lapse
    mark (the last sweep) and lapsed just after it. Its last heartbeat becomes one
    window and 1 ms before the mark's time + 1 ms, and Redis's clock is then past
    that (a few reads of TIME), the mark kept as it is."""
    mark = await store.redis.get(store.keys.lapse_mark(TENANT))
    if mark is None:  # no sweep yet: any lapse is after it
        mark_ms = (await clock(store.redis))[0]
    else:
        mark_ms = int(mark.split(":")[0])
    last = mark_ms - store.ctx.window_ms + 1
    assert await store.redis.zadd(store.keys.heartbeats(TENANT), {agent_id: last}, xx=True, ch=True) == 1
    for _ in range(10_000):  # Redis's clock moves on within a millisecond or two
        if (await clock(store.redis))[0] > mark_ms + 1:
            return
    raise AssertionError("Redis's clock did not move")


async def test_registering_starts_a_run_and_heartbeats_keep_it(store, redis_client):
    before_us = (await clock(redis_client))[1]
    sdr = await new_agent(store, "sdr")
    start = (await since(store))[sdr]
    assert start >= before_us

    assert (await heartbeat(store, sdr))[0] == Reply.OK
    assert (await register(store, "sdr"))[0] == Reply.OK  # registering again is a heartbeat too

    assert (await since(store))[sdr] == start


async def test_a_heartbeat_after_a_lapse_starts_a_new_run(store):
    sdr = await new_agent(store, "sdr")
    start = (await since(store))[sdr]
    await lapse_in_time(store, sdr)

    assert (await heartbeat(store, sdr))[0] == Reply.OK

    assert (await since(store))[sdr] > start


async def test_an_agent_registered_after_the_request_is_not_eligible_and_nothing_is_written(
    store, redis_client, prefix
):
    requester, peer = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    latecomers = [await new_agent(store, f"puppet-{i}") for i in range(3)]
    before = await dump(redis_client, prefix)
    electorate_at = before[store.keys.consensus(TENANT, consensus_id)][1]["electorateAt"]

    for latecomer in latecomers:
        assert await vote(store, consensus_id, latecomer, "approve") == [Reply.NOT_ELIGIBLE, electorate_at, "later"]

    assert await dump(redis_client, prefix) == before
    # The one member decides: eligible 1, needed 1, whatever joined since.
    decided = cons(await vote(store, consensus_id, peer, "reject"))
    assert (decided.status, decided.tally) == ("rejected", (0, 1, 1, 1))


async def test_a_member_that_lapses_and_comes_back_is_not_eligible(store):
    requester, peer = await new_agent(store, "sdr"), await new_agent(store, "support")
    returning = await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    assert cons(await read(store, consensus_id)).tally == (0, 0, 2, 2)
    await lapse_in_time(store, returning)

    # The sweep takes it out (the mark stays as it was: this is the clock's lapse) ...
    assert cons(await read(store, consensus_id)).tally == (0, 0, 1, 1)
    assert returning not in await since(store)
    # ... and coming back does not bring it in again.
    assert (await heartbeat(store, returning))[0] == Reply.OK
    assert (await vote(store, consensus_id, returning, "approve"))[0] == Reply.NOT_ELIGIBLE
    assert cons(await read(store, consensus_id)).tally == (0, 0, 1, 1)
    assert cons(await vote(store, consensus_id, peer, "approve")).status == "approved"


async def test_a_cast_vote_stands_once_when_its_voter_lapses_or_comes_back(store):
    requester = await new_agent(store, "sdr")
    voter, a, _ = [await new_agent(store, n) for n in ("support", "retention", "billing")]
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, voter, "approve")).tally == (1, 0, 3, 2)

    await lapse_in_time(store, voter)
    assert cons(await read(store, consensus_id)).tally == (1, 0, 3, 2)
    assert (await heartbeat(store, voter))[0] == Reply.OK
    assert cons(await read(store, consensus_id)).tally == (1, 0, 3, 2)
    assert cons(await vote(store, consensus_id, a, "approve")).status == "approved"


async def test_a_member_deregistered_before_voting_leaves_the_electorate(store):
    requester, _, gone = [await new_agent(store, n) for n in ("sdr", "support", "retention")]
    consensus_id = await opened(store, requester)

    assert (await remove(store, gone, []))[0] == Reply.OK

    assert gone not in await since(store)
    assert cons(await read(store, consensus_id)).tally == (0, 0, 1, 1)


async def test_a_missing_lapse_mark_is_rebuilt_from_the_heartbeats(store, redis_client):
    requester, peer, sleeper = [await new_agent(store, n) for n in ("sdr", "support", "retention")]
    consensus_id = await opened(store, requester)
    await lapse(store, sleeper)  # behind any mark: only a rebuild finds it
    await redis_client.delete(store.keys.active_since(TENANT))
    now_ms, now_us = await clock(redis_client)

    assert cons(await read(store, consensus_id)).tally == (0, 0, 0, 1)

    # Lapsed agents out, active ones in, counted from the rebuild: of no earlier electorate.
    rebuilt = await since(store)
    assert set(rebuilt) == {requester, peer} and all(start >= now_us for start in rebuilt.values())
    mark_ms, window_ms = (int(n) for n in (await redis_client.get(store.keys.lapse_mark(TENANT))).split(":"))
    assert mark_ms >= now_ms and window_ms == store.ctx.window_ms
    assert (await vote(store, consensus_id, peer, "approve"))[0] == Reply.NOT_ELIGIBLE
    # A request made after the rebuild counts them.
    assert cons(await read(store, await opened(store, requester))).tally == (0, 0, 1, 1)


async def test_a_sweep_that_finds_no_lapse_writes_nothing(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    before = await dump(redis_client, prefix)

    assert cons(await read(store, consensus_id)).tally == (0, 0, 1, 1)

    assert await dump(redis_client, prefix) == before


async def test_a_request_made_before_electorates_were_fixed_keeps_the_earlier_rule(store, redis_client):
    requester, peer = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    await redis_client.hdel(store.keys.consensus(TENANT, consensus_id), "electorateAt")
    latecomer = await new_agent(store, "retention")

    counted = cons(await vote(store, consensus_id, latecomer, "approve"))

    assert counted.code == Reply.CREATED and counted.tally == (1, 0, 2, 2)
    assert cons(await vote(store, consensus_id, peer, "approve")).status == "approved"
