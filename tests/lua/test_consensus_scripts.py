"""consensus_request, consensus_vote and consensus_read: every reply, the majority of
the eligible (active) agents that decides, expiry at the deadline, the status lists,
and that request and vote are safe to run twice. A wrong credential, and who each
event names as its actor, are in test_credential_scripts.py. How the tests work:
scripts_support.py.
"""

from __future__ import annotations

from concord.server.store.consensus import RETENTION_MS
from concord.server.store.keys import agent_id_for, new_id
from concord.server.store.replies import Reply
from tests.lua.scripts_support import (
    CONTACT,
    HOUR_MS,
    TENANT,
    Cons,
    clock,
    cons,
    dump,
    lapse,
    members,
    new_agent,
    opened,
    read,
    request,
    vote,
)
from tests.support.helpers import eventually

# --- consensus_request -------------------------------------------------------


async def test_request_opens_a_pending_consensus(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, name) for name in ("retention", "support")]
    await lapse(store, await new_agent(store, "sleeper"))
    consensus_id = new_id("cons")
    before, before_us = await clock(redis_client)

    reply = cons(await request(store, requester, consensus_id, timeout_ms=HOUR_MS, contact=CONTACT, reason="bounced"))

    after, after_us = await clock(redis_client)
    assert reply.code == Reply.CREATED
    assert reply.fields == await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    created = int(reply.fields["createdAt"])
    assert before <= created <= after
    # The electorate is fixed now, to the microsecond (when each member's run began is too).
    electorate_us = int(reply.fields["electorateAt"])
    assert before_us <= electorate_us <= after_us and electorate_us // 1000 == created
    assert reply.fields == {
        "id": consensus_id,
        "requestingAgentId": requester,
        "action": "unsubscribe",
        "contactEmail": CONTACT,
        "reason": "bounced",
        "status": "pending",
        "createdAt": str(created),
        "expiresAt": str(created + HOUR_MS),
        "electorateAt": str(electorate_us),
    }
    assert reply.votes == {}
    # The two active peers are eligible; the requester and the inactive agent are not.
    assert reply.tally == (0, 0, len(peers), 2)
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == created + HOUR_MS + RETENTION_MS
    assert await redis_client.zscore(k.consensus_list(TENANT, "all"), consensus_id) == created
    assert await redis_client.zscore(k.consensus_list(TENANT, "pending"), consensus_id) == created
    assert await redis_client.zscore(k.consensus_due(TENANT), consensus_id) == created + HOUR_MS
    for status in ("approved", "rejected", "expired"):
        assert await members(store, status) == set()


async def test_request_run_twice_with_one_id_returns_the_first_request(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = new_id("cons")
    first = cons(await request(store, requester, consensus_id, action="first"))
    before = await dump(redis_client, prefix)

    again = cons(await request(store, requester, consensus_id, action="second"))

    assert again.code == Reply.OK
    assert (again.fields, again.votes, again.tally) == (first.fields, first.votes, first.tally)
    assert again.fields["action"] == "first"
    assert await dump(redis_client, prefix) == before


async def test_request_by_an_unregistered_agent_is_bad_credential(store, redis_client, prefix):
    """An unknown agent has no credential, so whatever digest claims it is refused first."""
    await new_agent(store, "support")
    before = await dump(redis_client, prefix)

    assert await request(store, agent_id_for(TENANT, "nobody")) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


async def test_request_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    await lapse(store, requester)
    before = await dump(redis_client, prefix)

    assert await request(store, requester) == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_request_prunes_list_entries_older_than_max_age(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    for status in ("all", "approved", "rejected", "expired", "pending"):
        await redis_client.zadd(k.consensus_list(TENANT, status), {"cons_ancient": 1})

    consensus_id = await opened(store, requester)

    for status in ("all", "approved", "rejected", "expired"):
        assert await members(store, status) == ({consensus_id} if status == "all" else set()), status
    # Pending entries are settled by reads, not pruned by age.
    assert await members(store, "pending") == {"cons_ancient", consensus_id}


# --- consensus_vote ----------------------------------------------------------


async def test_vote_is_recorded(store, redis_client):
    k = store.keys
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    before, _ = await clock(redis_client)

    reply = cons(await vote(store, consensus_id, voter, "approve", "looks right | to me"))

    after, _ = await clock(redis_client)
    assert (reply.code, reply.decided) == (Reply.CREATED, 0)  # a vote counted now; nothing decided
    assert reply.status == "pending"
    assert reply.tally == (1, 0, 2, 2)
    assert reply.votes == await redis_client.hgetall(k.votes(TENANT, consensus_id))
    choice, voted_at, name, reason = reply.votes[voter].split("|", 3)
    assert (choice, name, reason) == ("approve", "support", "looks right | to me")
    assert before <= int(voted_at) // 1000 <= after  # microseconds, so votes keep their casting order
    expires = int(reply.fields["expiresAt"])
    assert await redis_client.pexpiretime(k.votes(TENANT, consensus_id)) == expires + RETENTION_MS


async def test_vote_approves_once_approvals_reach_a_majority_of_the_eligible(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, f"peer{i}") for i in range(4)]
    consensus_id = await opened(store, requester)
    created = int(await redis_client.hget(k.consensus(TENANT, consensus_id), "createdAt"))

    # eligible 4 -> needed floor(4/2)+1 = 3
    assert cons(await vote(store, consensus_id, peers[0], "approve")).tally == (1, 0, 4, 3)
    reply = cons(await vote(store, consensus_id, peers[1], "reject"))
    assert (reply.status, reply.tally) == ("pending", (1, 1, 4, 3))
    assert cons(await vote(store, consensus_id, peers[2], "approve")).status == "pending"
    before, _ = await clock(redis_client)
    reply = cons(await vote(store, consensus_id, peers[3], "approve"))
    after, _ = await clock(redis_client)

    assert (reply.code, reply.decided) == (Reply.CREATED, 1)  # this vote decided it
    assert (reply.status, reply.tally) == ("approved", (3, 1, 4, 3))
    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert stored == reply.fields
    resolved = int(stored["resolvedAt"])
    assert before <= resolved <= after
    assert (stored["eligible"], stored["needed"]) == ("4", "3")
    assert await members(store, "approved") == {consensus_id}
    assert await redis_client.zscore(k.consensus_list(TENANT, "approved"), consensus_id) == created
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()
    assert await members(store, "all") == {consensus_id}
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == resolved + RETENTION_MS
    assert await redis_client.pexpiretime(k.votes(TENANT, consensus_id)) == resolved + RETENTION_MS


async def test_vote_rejects_once_rejections_reach_a_majority_of_the_eligible(store, redis_client):
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, f"peer{i}") for i in range(3)]
    consensus_id = await opened(store, requester)

    # eligible 3 -> needed 2
    assert cons(await vote(store, consensus_id, peers[0], "reject")).tally == (0, 1, 3, 2)
    assert cons(await vote(store, consensus_id, peers[1], "approve")).status == "pending"
    reply = cons(await vote(store, consensus_id, peers[2], "reject"))

    assert (reply.status, reply.tally) == ("rejected", (1, 2, 3, 2))
    assert "resolvedAt" in reply.fields
    assert await members(store, "rejected") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


async def test_a_decision_is_final_when_eligibility_changes_afterwards(store, redis_client):
    requester = await new_agent(store, "sdr")
    a, b = await new_agent(store, "peer-a"), await new_agent(store, "peer-b")
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "approve")
    decided = cons(await vote(store, consensus_id, b, "approve"))
    assert (decided.status, decided.tally) == ("approved", (2, 0, 2, 2))

    # Many more agents become active, and the voters lapse: the decision stands.
    late = [await new_agent(store, f"late{i}") for i in range(5)]
    await lapse(store, a)
    await lapse(store, b)
    reply = cons(await read(store, consensus_id))
    assert reply.status == "approved"
    assert reply.fields["resolvedAt"] == decided.fields["resolvedAt"]
    assert reply.tally == (2, 0, 2, 2)  # eligible and needed frozen at the decision

    assert await vote(store, consensus_id, late[0], "reject") == [Reply.CONSENSUS_CLOSED, "approved"]
    assert await members(store, "approved") == {consensus_id}


async def test_with_no_eligible_peer_a_request_stays_pending(store, redis_client):
    requester = await new_agent(store, "sdr")
    await lapse(store, await new_agent(store, "sleeper"))
    consensus_id = await opened(store, requester)

    reply = cons(await read(store, consensus_id))

    assert (reply.status, reply.tally) == ("pending", (0, 0, 0, 1))
    assert "resolvedAt" not in reply.fields
    assert await members(store, "pending") == {consensus_id}


async def test_a_vote_whose_voter_lapsed_still_counts(store, redis_client):
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, a, "approve")).tally == (1, 0, 3, 2)

    await lapse(store, a)
    # b and c are active, a is not, but a voted: eligible is still 3.
    assert cons(await read(store, consensus_id)).tally == (1, 0, 3, 2)

    reply = cons(await vote(store, consensus_id, b, "approve"))
    assert (reply.status, reply.tally) == ("approved", (2, 0, 3, 2))


async def test_vote_on_an_unknown_request_is_consensus_not_found(store, redis_client, prefix):
    voter = await new_agent(store, "support")
    before = await dump(redis_client, prefix)

    assert await vote(store, new_id("cons"), voter, "approve") == [Reply.CONSENSUS_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_an_unregistered_agent_is_bad_credential(store, redis_client, prefix):
    """An unknown agent has no credential, so whatever digest claims it is refused first."""
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, agent_id_for(TENANT, "nobody"), "approve") == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_the_requester_is_refused(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, requester, "approve") == [Reply.REQUESTER_CANNOT_VOTE]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    await lapse(store, voter)
    # The sweep that takes the lapsed voter out of active-since is the clock's doing,
    # done by whichever consensus script runs first: here a read.
    assert (await read(store, consensus_id))[0] == Reply.OK
    assert await redis_client.zscore(store.keys.active_since(TENANT), voter) is None
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, voter, "approve") == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_a_different_second_vote_is_already_voted(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, voter, "approve")
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, voter, "reject") == [Reply.ALREADY_VOTED, "approve"]

    assert await dump(redis_client, prefix) == before


async def test_a_different_vote_after_the_decision_is_still_already_voted(store, redis_client):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, voter, "approve")).status == "approved"

    assert await vote(store, consensus_id, voter, "reject") == [Reply.ALREADY_VOTED, "approve"]


async def test_repeating_the_deciding_vote_after_the_decision_succeeds(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    decided = cons(await vote(store, consensus_id, voter, "approve"))
    assert decided.status == "approved"
    before = await dump(redis_client, prefix)

    again = cons(await vote(store, consensus_id, voter, "approve"))

    assert (again.code, again.decided, decided.decided) == (Reply.OK, 0, 1)
    assert (again.fields, again.votes, again.tally) == (decided.fields, decided.votes, decided.tally)
    assert await dump(redis_client, prefix) == before


async def test_vote_on_a_decided_request_is_consensus_closed(store, redis_client, prefix):
    requester, a, b = [await new_agent(store, name) for name in ("sdr", "peer-a", "peer-b")]
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "reject")
    assert cons(await vote(store, consensus_id, b, "reject")).status == "rejected"
    late = await new_agent(store, "late")
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, late, "approve") == [Reply.CONSENSUS_CLOSED, "rejected"]

    assert await dump(redis_client, prefix) == before


async def test_vote_on_a_request_past_its_deadline_expires_it_and_is_consensus_closed(store, redis_client):
    k = store.keys
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(k.consensus(TENANT, consensus_id), "expiresAt", str(past))

    assert await vote(store, consensus_id, voter, "approve") == [Reply.CONSENSUS_CLOSED, "expired"]

    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert (stored["status"], stored["resolvedAt"]) == ("expired", str(past))
    assert not await redis_client.exists(k.votes(TENANT, consensus_id))
    assert await members(store, "expired") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


# --- consensus_read ----------------------------------------------------------


async def test_read_returns_the_request_and_writes_nothing_while_undecided(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    voted = cons(await vote(store, consensus_id, voter, "reject", "no"))
    before = await dump(redis_client, prefix)

    reply = cons(await read(store, consensus_id))

    assert reply.code == Reply.OK
    assert (reply.fields, reply.votes, reply.tally) == (voted.fields, voted.votes, (0, 1, 2, 2))
    assert await dump(redis_client, prefix) == before


async def test_read_decides_a_request_whose_eligibility_shrank(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, a, "approve")).tally == (1, 0, 3, 2)

    await lapse(store, b)
    await lapse(store, c)
    reply = cons(await read(store, consensus_id))

    # Only a is eligible now (active), and a approved: 1 >= floor(1/2)+1.
    assert (reply.status, reply.tally) == ("approved", (1, 0, 1, 1))
    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert stored == reply.fields
    assert (stored["eligible"], stored["needed"]) == ("1", "1")
    assert await members(store, "approved") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


async def test_read_expires_a_request_at_its_deadline(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    consensus_id = await opened(store, requester, timeout_ms=50)

    async def expired() -> Cons | None:
        reply = cons(await read(store, consensus_id))
        return reply if reply.status == "expired" else None

    reply = await eventually(expired, what=f"{consensus_id} to expire")

    assert reply.code == Reply.OK
    assert reply.fields["resolvedAt"] == reply.fields["expiresAt"]
    assert int(reply.fields["expiresAt"]) == int(reply.fields["createdAt"]) + 50
    assert await redis_client.hgetall(k.consensus(TENANT, consensus_id)) == reply.fields
    assert await members(store, "expired") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == (
        int(reply.fields["expiresAt"]) + RETENTION_MS
    )


async def test_read_expires_rather_than_decides_a_request_past_its_deadline(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "approve")
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(k.consensus(TENANT, consensus_id), "expiresAt", str(past))
    # Eligibility shrank too, so the approval would now be enough; the deadline came first.
    await lapse(store, b)
    await lapse(store, c)

    reply = cons(await read(store, consensus_id))

    assert reply.status == "expired"
    assert reply.fields["resolvedAt"] == str(past)
    assert await members(store, "expired") == {consensus_id}


async def test_read_of_an_unknown_request_is_consensus_not_found_and_drops_its_list_entries(store, redis_client):
    k = store.keys
    gone = new_id("cons")
    kept = await opened(store, await new_agent(store, "sdr"))
    for status in ("all", "pending", "approved", "rejected", "expired"):
        await redis_client.zadd(k.consensus_list(TENANT, status), {gone: 1})
    await redis_client.zadd(k.consensus_due(TENANT), {gone: 1})

    assert await read(store, gone) == [Reply.CONSENSUS_NOT_FOUND]

    assert await members(store, "all") == {kept}
    assert await members(store, "pending") == {kept}
    assert await members(store, "due") == {kept}
    for status in ("approved", "rejected", "expired"):
        assert await members(store, status) == set()
    assert not await redis_client.exists(k.consensus(TENANT, gone), k.votes(TENANT, gone))


# --- safe to run twice -------------------------------------------------------
# The same call run twice (a retry after a lost reply) leaves the state of one run;
# only the times a run stamps may move.


async def test_consensus_request_twice_is_one_request(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = new_id("cons")
    first = await request(store, requester, consensus_id)
    once = await dump(redis_client, prefix)

    second = await request(store, requester, consensus_id)

    assert (first[0], second[0]) == (Reply.CREATED, Reply.OK)
    assert second[1:] == first[1:]
    assert await dump(redis_client, prefix) == once


async def test_vote_twice_is_one_vote(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    first = cons(await vote(store, consensus_id, voter, "approve", "fine"))
    once = await dump(redis_client, prefix)

    second = cons(await vote(store, consensus_id, voter, "approve", "fine"))

    assert (first.code, second.code) == (Reply.CREATED, Reply.OK)
    assert (second.fields, second.votes, second.tally) == (first.fields, first.votes, first.tally)
    assert second.tally == (1, 0, 2, 2)
    assert list(second.votes) == [voter]
    assert await dump(redis_client, prefix) == once
