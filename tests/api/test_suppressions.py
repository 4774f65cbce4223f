"""Suppressions: a contact (under any spelling), or a whole domain, that no agent
may lease or email. Agents and gate keys add them and cannot rewrite one; only an
admin key replaces or lifts one. A suppressed contact is refused at lease (403
suppressed) and at send-check (allowed false, reason suppressed), in the same
script that decides.

Every test runs on fakeredis, a real Redis and the cluster (the client fixture).
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from concord.protocol import MAX_SUPPRESSIONS_PER_CALL
from concord.server.store import Store
from tests.api.lease_support import lease_post, tenant_keys
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
from tests.support.api import ISO_Z, TENANT, C, bearer, credential_of, invalid, ok, problem

S = f"{C}/suppressions"


def at(entry: str) -> str:
    return f"{S}/{quote(entry, safe='')}"


@pytest.fixture
async def gate(redis_client, keys):
    """The headers of a gate key of the tenant (an email pipeline's)."""
    key, grant = await Store(redis_client, keys).apikeys.create(TENANT, "gate")
    return bearer(key), grant.id


async def events_of(client, type_: str) -> list[dict]:
    page = ok(await client.get(f"{C}/events", params={"type": type_, "after": "0", "limit": 100}))
    return page["events"]


async def test_an_agent_suppresses_a_contact_and_no_spelling_of_it_is_leased_or_emailed(
    client, redis_client, keys, sdr, retention
):
    as_sdr = bearer(credential_of(client, sdr["id"]))
    answer = await client.put(at("Alice+Promo@example.com"), json={"reason": "unsubscribed"}, headers=as_sdr)
    made = ok(answer, 201)
    assert made == {
        "entry": "alice@example.com",
        "tenantId": TENANT,
        "reason": "unsubscribed",
        "createdAt": made["createdAt"],
        "createdBy": sdr["id"],
        "createdByRole": "agent",
    }
    assert ISO_Z.fullmatch(made["createdAt"])
    stored = await redis_client.hget(keys.suppressions(TENANT), "alice@example.com")
    assert stored.startswith("unsubscribed|") and stored.endswith(f"|agent|{sdr['id']}|"), stored
    assert await redis_client.zrange(keys.suppression_index(TENANT), 0, -1) == ["alice@example.com"]

    before = await tenant_keys(redis_client, keys)
    for spelling in ("alice@example.com", "ALICE+x@Example.com"):
        body = problem(await lease_post(client, agentId=retention["id"], contactEmail=spelling), 403, "suppressed")
        assert body["suppression"] == made and body["contact"] == "alice@example.com", body
        assert "unsubscribed" in body["detail"] and "admin" in body["detail"], body
        check = ok(await client.post(f"{C}/send-check", json={"agentId": sdr["id"], "contactEmail": spelling}))
        assert check["allowed"] is False and check["reason"] == "suppressed", check
        assert check["suppression"] == made, check
    assert await tenant_keys(redis_client, keys) == before  # refusals write nothing

    [added] = await events_of(client, "suppression.added")
    assert (added["entry"], added["reason"], added["actor"], added["actorRole"]) == (
        "alice@example.com",
        "unsubscribed",
        sdr["id"],
        "agent",
    )


async def test_a_domain_suppression_keeps_agents_off_every_contact_at_it(client, sdr, gate):
    headers, key_id = gate
    made = ok(
        await client.put(at("@BigCorp.com"), json={"reason": "complained", "note": "legal"}, headers=headers), 201
    )
    assert (made["entry"], made["createdBy"], made["createdByRole"], made["note"]) == (
        "@bigcorp.com",
        key_id,
        "gate",
        "legal",
    )
    body = problem(await lease_post(client, agentId=sdr["id"], contactEmail="ceo@bigcorp.com"), 403, "suppressed")
    assert body["suppression"]["entry"] == "@bigcorp.com" and "the domain bigcorp.com" in body["detail"], body
    # Only that domain: a subdomain or another domain is another matter.
    ok(await lease_post(client, agentId=sdr["id"], contactEmail="ceo@eu.bigcorp.com"), 201)
    ok(await lease_post(client, agentId=sdr["id"], contactEmail="ceo@bigcorp.co"), 201)


async def test_a_contact_suppressed_while_leased_stops_its_own_holder(client, sdr):
    held = ok(await lease_post(client, agentId=sdr["id"], contactEmail="bob@example.com"), 201)
    ok(await client.put(at("bob@example.com"), json={"reason": "bounced"}), 201)
    problem(await lease_post(client, agentId=sdr["id"], contactEmail="bob@example.com"), 403, "suppressed")
    check = {"agentId": sdr["id"], "contactEmail": "bob@example.com", "fencingToken": held["fencingToken"]}
    answer = ok(await client.post(f"{C}/send-check", json=check))
    assert (answer["allowed"], answer["reason"]) == (False, "suppressed"), answer


async def test_only_an_admin_rewrites_or_lifts_a_suppression(client, redis_client, keys, sdr, gate):
    as_sdr = bearer(credential_of(client, sdr["id"]))
    first = ok(await client.put(at("carol@example.com"), json={"reason": "complained"}, headers=as_sdr), 201)
    stored = await redis_client.hget(keys.suppressions(TENANT), "carol@example.com")

    # An agent or a gate key asking again, with a milder reason, finds it as it stands.
    for headers in (as_sdr, gate[0]):
        again = ok(await client.put(at("carol@example.com"), json={"reason": "manual"}, headers=headers), 200)
        assert again == first
        for call in (client.delete(at("carol@example.com"), headers=headers),):
            problem(await call, 403, "insufficient_scope")
    assert await redis_client.hget(keys.suppressions(TENANT), "carol@example.com") == stored

    replaced = ok(await client.put(at("carol@example.com"), json={"reason": "manual", "note": "asked by phone"}), 200)
    assert (replaced["reason"], replaced["note"], replaced["createdByRole"]) == ("manual", "asked by phone", "admin")
    assert ok(await client.get(at("Carol+x@example.com"))) == replaced

    lifted = ok(await client.delete(at("carol@example.com")))
    assert lifted == replaced
    assert await redis_client.hget(keys.suppressions(TENANT), "carol@example.com") is None
    assert await redis_client.zrange(keys.suppression_index(TENANT), 0, -1) == []
    ok(await lease_post(client, agentId=sdr["id"], contactEmail="carol@example.com"), 201)
    [removed] = await events_of(client, "suppression.removed")
    assert (removed["entry"], removed["reason"], removed["actorRole"]) == ("carol@example.com", "manual", "admin")

    problem(await client.delete(at("carol@example.com")), 404, "suppression_not_found")
    problem(await client.get(at("carol@example.com")), 404, "suppression_not_found")


async def test_a_bulk_import_writes_the_new_entries_in_one_call_and_lists_them_in_order(
    client, redis_client, keys, gate
):
    rows = [{"entry": f"user{i:04d}@example.com", "reason": "bounced"} for i in range(MAX_SUPPRESSIONS_PER_CALL)]
    rows[7] = {"entry": "@Spam.example", "reason": "manual", "note": "a | pipe"}
    answer = ok(await client.post(S, json={"suppressions": rows}, headers=gate[0]))
    assert answer == {"received": MAX_SUPPRESSIONS_PER_CALL, "written": MAX_SUPPRESSIONS_PER_CALL}
    assert await redis_client.hlen(keys.suppressions(TENANT)) == MAX_SUPPRESSIONS_PER_CALL
    [imported] = await events_of(client, "suppression.imported")
    assert imported["count"] == MAX_SUPPRESSIONS_PER_CALL and not await events_of(client, "suppression.added")

    again = ok(await client.post(S, json={"suppressions": rows[:10]}, headers=gate[0]))
    assert again == {"received": 10, "written": 0}  # kept as they were: nothing written, no event
    assert len(await events_of(client, "suppression.imported")) == 1

    listed, cursor = [], None
    while True:
        page = ok(await client.get(S, params={"limit": 128, **({"cursor": cursor} if cursor else {})}))
        listed += page["suppressions"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    entries = [s["entry"] for s in listed]
    assert entries == sorted({r["entry"].lower() for r in rows}) and len(entries) == MAX_SUPPRESSIONS_PER_CALL
    assert next(s for s in listed if s["entry"] == "@spam.example")["note"] == "a | pipe"


async def test_bad_entries_and_bad_batches_are_refused_in_words(client, redis_client, keys):
    body = invalid(await client.put(at("not-an-address"), json={"reason": "manual"}), "path entry")
    assert "@ and a domain" in body["detail"], body
    invalid(await client.put(at("@not a domain"), json={"reason": "manual"}), "path entry")
    body = invalid(await client.put(at("a@example.com"), json={"reason": "because"}), "$.reason")
    assert "unsubscribed" in body["detail"], body
    rows = [{"entry": "a@example.com", "reason": "manual"}, {"entry": "nope", "reason": "manual"}]
    invalid(await client.post(S, json={"suppressions": rows}), "$.suppressions[1].entry")
    many = [{"entry": f"u{i}@example.com", "reason": "manual"} for i in range(MAX_SUPPRESSIONS_PER_CALL + 1)]
    invalid(await client.post(S, json={"suppressions": many}), "$.suppressions")
    invalid(await client.post(S, json={"suppressions": []}), "$.suppressions")
    assert await redis_client.exists(keys.suppressions(TENANT)) == 0


async def test_a_suppression_binds_its_own_tenant_only(client, other_client):
    ok(await client.put(at("dave@example.com"), json={"reason": "manual"}), 201)
    problem(await other_client.get(at("dave@example.com")), 404, "suppression_not_found")
    assert ok(await other_client.get(S))["suppressions"] == []
