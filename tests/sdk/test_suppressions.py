"""Suppressions in the SDK (client/calls.py, the clients, errors.py): an agent
suppresses a contact with its own credential, a gate or admin key with the client's
key; a suppressed contact is then refused at lease (Suppressed, carrying the
suppression) and at send-check; only an admin key lifts one. Against the real
service on a real Redis, and with scripted answers for what is sent and retried.

Every entry is unique to its test (tests share the tenant): never @example.com,
which the other tests' contacts are at."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import pytest
import redis

from concord import (
    AsyncConcord,
    Concord,
    InsufficientScope,
    NotConfigured,
    StoreUnavailable,
    Suppressed,
    SuppressionNotFound,
    Unreachable,
    ValidationError,
)
from concord import protocol as s
from tests.sdk.live import API_KEY, GATE_KEY, TENANT, unique
from tests.sdk.scripted import AGENT_ID, AT, CREDENTIAL, UNAVAILABLE, bearers, problem, scripted
from tests.support.helpers import Stack


def domain() -> str:
    return f"{unique('d')}.test"


def stored(r: redis.Redis, stack: Stack, entry: str) -> str | None:
    """What the tenant's suppressions hash holds for ``entry``: "reason|setAt|setByRole|setBy|note"."""
    return r.hget(stack.keys.suppressions(TENANT), entry)


# --- against the service --------------------------------------------------------------


def test_an_agent_suppresses_a_contact_and_no_agent_may_lease_or_email_it(
    client: Concord, stack: Stack, r: redis.Redis
):
    sdr, rival = client.register(unique("sdr")), client.register(unique("rival"))
    at = domain()
    made = sdr.suppress(f"Alice+Promo@{at.upper()}", "unsubscribed", note="replied: stop")
    assert isinstance(made, s.Suppression)
    assert (made.entry, made.tenant_id, made.reason, made.note) == (
        f"alice@{at}",
        TENANT,
        "unsubscribed",
        "replied: stop",
    )
    assert (made.created_by, made.created_by_role) == (sdr.id, "agent")
    held = stored(r, stack, f"alice@{at}")
    assert held is not None and held.startswith("unsubscribed|") and held.endswith(f"|agent|{sdr.id}|replied: stop")
    assert client.get_suppression(f"ALICE+other@{at}") == made  # any spelling finds it

    with pytest.raises(Suppressed) as caught:
        with rival.lease(f"alice@{at}"):
            pytest.fail("the block must not run without the lease")
    refused = caught.value
    assert (refused.status, refused.code, refused.contact, refused.suppression) == (
        403,
        "suppressed",
        f"alice@{at}",
        made,
    )
    assert "unsubscribed" in refused.detail and "admin" in refused.detail
    with pytest.raises(Suppressed):
        client.acquire_lease(sdr.id, f"alice+x@{at}")  # its own suppression binds it too
    check = rival.send_check(f"alice@{at}")
    assert (check.allowed, check.reason, check.suppression) == (False, "suppressed", made)
    assert client.list_leases(contact=f"alice@{at}").leases == []  # refusals write nothing

    # An agent asking again, milder, finds it as it stands.
    assert sdr.suppress(f"alice@{at}", "manual") == made
    assert stored(r, stack, f"alice@{at}") == held


def test_only_an_admin_key_rewrites_or_lifts_a_suppression(client: Concord, stack: Stack, r: redis.Redis):
    agent = client.register(unique("sdr"))
    entry = f"@{domain()}"
    with Concord(stack.service.url, GATE_KEY) as gate:
        made = gate.suppress(entry.upper(), "complained", note="legal")
        assert (made.entry, made.created_by_role, made.note) == (entry, "gate", "legal")
        assert gate.suppress(entry, "manual") == made  # a gate key cannot weaken it
        with pytest.raises(Suppressed) as caught:
            client.acquire_lease(agent.id, f"ceo{entry}")
        assert caught.value.suppression == made and caught.value.contact == f"ceo{entry}"
        with pytest.raises(InsufficientScope) as scope:
            gate.lift_suppression(entry)
        assert (scope.value.status, scope.value.key_role) == (403, "gate")

    # An agent's process holds no API key: the SDK sends nothing. Sent anyway, the
    # agent's credential is refused by the service.
    with Concord(stack.service.url, agent_credential=agent.credential) as alone:
        with pytest.raises(NotConfigured, match="No API key"):
            alone.lift_suppression(entry)
    with Concord(stack.service.url, agent.credential) as as_key:
        with pytest.raises(InsufficientScope) as scope:
            as_key.lift_suppression(entry)
        assert scope.value.key_role == "agent"
    assert stored(r, stack, entry) is not None

    replaced = client.suppress(entry, "manual", note="asked by phone")
    assert (replaced.reason, replaced.note, replaced.created_by_role) == ("manual", "asked by phone", "admin")
    assert client.lift_suppression(entry) == replaced
    assert stored(r, stack, entry) is None
    assert r.zscore(stack.keys.suppression_index(TENANT), entry) is None
    assert client.acquire_lease(agent.id, f"ceo{entry}").agent_id == agent.id
    with pytest.raises(SuppressionNotFound) as gone:
        client.get_suppression(entry)
    assert (gone.value.status, gone.value.code) == (404, "suppression_not_found") and entry in gone.value.detail
    with pytest.raises(SuppressionNotFound):
        client.lift_suppression(entry)


def test_a_bulk_import_writes_in_one_call_and_lists_in_entry_order(client: Concord, stack: Stack, r: redis.Redis):
    agent = client.register(unique("importer"))
    at = domain()
    items: list[Any] = [{"entry": f"u{i:03d}@{at}", "reason": "bounced"} for i in range(s.MAX_SUPPRESSIONS_PER_CALL)]
    items[7] = s.SuppressionItem(entry=f"@{at}", reason="manual", note="a | pipe")
    items[8] = {"entry": f"U008+tag@{at.upper()}", "reason": "complained", "note": "shouts"}
    answer = agent.import_suppressions(items)
    assert answer == s.SuppressionImport(received=s.MAX_SUPPRESSIONS_PER_CALL, written=s.MAX_SUPPRESSIONS_PER_CALL)
    again = client.import_suppressions(items[:10])  # an admin key: the same values, nothing to write
    assert (again.received, again.written) == (10, 0)
    assert stored(r, stack, f"@{at}").endswith(f"|agent|{agent.id}|a | pipe")
    assert stored(r, stack, f"u008@{at}").startswith("complained|")

    before = r.hlen(stack.keys.suppressions(TENANT))
    with pytest.raises(ValidationError) as invalid:
        client.import_suppressions([{"entry": f"ok@{at}", "reason": "manual"}, {"entry": "nope", "reason": "manual"}])
    assert (invalid.value.status, invalid.value.field) == (422, "$.suppressions[1].entry")
    with pytest.raises(ValueError, match="1 to 500"):
        client.import_suppressions([{"entry": f"x{i}@{at}", "reason": "manual"} for i in range(501)])
    with pytest.raises(ValueError, match="got 0"):
        client.import_suppressions([])
    assert r.hlen(stack.keys.suppressions(TENANT)) == before  # nothing of a refused batch is written

    listed, cursor = [], None
    while True:
        page = client.list_suppressions(limit=97, cursor=cursor)
        listed += page.suppressions
        if (cursor := page.next_cursor) is None:
            break
    entries = [found.entry for found in listed]
    assert entries == sorted(entries) and len(entries) == len(set(entries)) == before
    mine = [entry for entry in entries if entry.endswith(at)]
    assert mine == [f"@{at}", *(f"u{i:03d}@{at}" for i in range(s.MAX_SUPPRESSIONS_PER_CALL) if i != 7)]


async def test_async_client_suppresses_imports_reads_and_lifts(aclient: AsyncConcord, stack: Stack, r: redis.Redis):
    agent = await aclient.register(unique("async"))
    at = domain()
    made = await agent.suppress(f"bob@{at}", "bounced")
    assert (made.entry, made.created_by) == (f"bob@{at}", agent.id)
    imported = await agent.import_suppressions([s.SuppressionItem(entry=f"carol@{at}", reason="manual")])
    assert (imported.received, imported.written) == (1, 1)
    assert (await aclient.get_suppression(f"carol@{at}")).created_by_role == "agent"
    with pytest.raises(Suppressed) as caught:
        async with agent.lease(f"bob@{at}"):
            pytest.fail("the block must not run without the lease")
    assert caught.value.suppression == made
    page = await aclient.list_suppressions(limit=1000)
    assert {f"bob@{at}", f"carol@{at}"} <= {found.entry for found in page.suppressions}
    admin_made = await aclient.suppress(f"@{at}", "manual")
    assert admin_made.created_by_role == "admin"
    assert (await aclient.lift_suppression(f"bob@{at}")) == made
    assert stored(r, stack, f"bob@{at}") is None
    with pytest.raises(SuppressionNotFound):
        await aclient.get_suppression(f"bob@{at}")


# --- what is sent, and retried (scripted answers) ---------------------------------------

SUPPRESSION = {
    "entry": "a@bigcorp.com",
    "tenantId": TENANT,
    "reason": "unsubscribed",
    "createdAt": AT,
    "createdBy": AGENT_ID,
    "createdByRole": "agent",
}


def test_entries_are_one_percent_encoded_path_segment_and_each_call_has_its_credential():
    ok = httpx.Response(200, json=SUPPRESSION)
    concord, script = scripted(ok)
    concord.suppress("a+promo@bigcorp.com", "unsubscribed")  # the client's key
    concord.me().suppress("@bigcorp.com", "bounced", note="hard bounce")  # the agent's own credential
    concord.agent(AGENT_ID).suppress("a@bigcorp.com/../../agents", "manual")
    concord.get_suppression("a@bigcorp.com")
    concord.lift_suppression("@bigcorp.com")
    sent = [(request.method, request.url.raw_path.decode()) for request in script.requests]
    base = "/v1/agent/coordination/suppressions"
    assert sent == [
        ("PUT", f"{base}/a%2Bpromo%40bigcorp.com"),
        ("PUT", f"{base}/%40bigcorp.com"),
        ("PUT", f"{base}/a%40bigcorp.com%2F..%2F..%2Fagents"),
        ("GET", f"{base}/a%40bigcorp.com"),
        ("DELETE", f"{base}/%40bigcorp.com"),
    ]
    assert script.bodies()[:2] == [{"reason": "unsubscribed"}, {"reason": "bounced", "note": "hard bounce"}]
    # The key, the agent's own credential (twice), then the key again: a read, and a lift (an admin's).
    assert bearers(script) == [API_KEY, CREDENTIAL, CREDENTIAL, API_KEY, API_KEY]

    concord, script = scripted(httpx.Response(200, json={"received": 2, "written": 1}))
    items = [s.SuppressionItem(entry="a@bigcorp.com", reason="manual"), {"entry": "@x.test", "reason": "bounced"}]
    assert concord.import_suppressions(items) == s.SuppressionImport(received=2, written=1)
    assert concord.me().import_suppressions(items).written == 1
    assert (
        script.bodies()
        == [
            {
                "suppressions": [
                    {"entry": "a@bigcorp.com", "reason": "manual"},
                    {"entry": "@x.test", "reason": "bounced"},
                ]
            }
        ]
        * 2
    )
    assert bearers(script) == [API_KEY, CREDENTIAL]


def test_adding_is_retried_and_lifting_only_when_nothing_can_have_happened():
    concord, script = scripted(UNAVAILABLE, httpx.Response(201, json=SUPPRESSION))
    assert concord.me().suppress("a@bigcorp.com", "unsubscribed").entry == "a@bigcorp.com"
    assert len(script.requests) == 2 and bearers(script) == [CREDENTIAL, CREDENTIAL]

    concord, script = scripted(httpx.ReadError("dropped"), httpx.Response(200, json={"received": 1, "written": 0}))
    assert concord.import_suppressions([{"entry": "a@bigcorp.com", "reason": "manual"}]).written == 0
    assert len(script.requests) == 2 and script.bodies()[0] == script.bodies()[1]

    concord, script = scripted(UNAVAILABLE, httpx.Response(200, json=SUPPRESSION))
    with pytest.raises(StoreUnavailable):
        concord.lift_suppression("a@bigcorp.com")
    assert len(script.requests) == 1
    concord, script = scripted(httpx.ReadError("dropped"), httpx.Response(200, json=SUPPRESSION))
    with pytest.raises(Unreachable) as caught:
        concord.lift_suppression("a@bigcorp.com")
    assert caught.value.sent and len(script.requests) == 1
    concord, script = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=SUPPRESSION))
    assert concord.lift_suppression("a@bigcorp.com").entry == "a@bigcorp.com"  # it never left
    assert len(script.requests) == 2


def test_a_suppressed_refusal_carries_its_suppression():
    concord, _ = scripted(
        problem("suppressed", contactEmail="A+x@bigcorp.com", contact="a@bigcorp.com", suppression=SUPPRESSION)
    )
    with pytest.raises(Suppressed) as caught:
        concord.acquire_lease(AGENT_ID, "A+x@bigcorp.com")
    assert caught.value.contact == "a@bigcorp.com"
    assert caught.value.suppression == msgspec.convert(SUPPRESSION, s.Suppression)
    assert caught.value.suppression.created_by == AGENT_ID


def test_an_unknown_agent_handle_without_a_credential_sends_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CONCORD_AGENT_CREDENTIAL", raising=False)
    concord, script = scripted(httpx.Response(200, json=SUPPRESSION), agent_credential="")
    with pytest.raises(NotConfigured, match="No agent credential"):
        concord.agent(f"agent_{uuid.uuid4()}").suppress("a@bigcorp.com", "manual")
    assert script.requests == []
