"""One contact, however its address is written: case, a +tag sub-address, and at
Gmail the dots of the local part and googlemail.com all reach one mailbox, so they
are one contact. Leases, send-checks and the lists act on that canonical contact;
answers name both the address asked about and the contact.

Every test runs on fakeredis, a real Redis and the cluster (the client fixture).
"""

from __future__ import annotations

import pytest

from concord.protocol import canonical_contact
from tests.api.lease_support import lease_post, send_check, tenant_keys
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
from tests.support.api import TENANT, C, ok, problem

GMAIL = "alice@gmail.com"
# Other ways of writing GMAIL that reach the same mailbox.
SPELLINGS = ["A.L.I.C.E@gmail.com", "alice+promo@googlemail.com", " Alice.+x@GMAIL.com ", "al.ice+a+b@gmail.com"]


@pytest.mark.parametrize(
    ("address", "contact"),
    [
        ("alice@example.com", "alice@example.com"),
        ("alice+promo@example.com", "alice@example.com"),
        ("a.lice@example.com", "a.lice@example.com"),  # dots matter at most domains
        ("a.l.i.c.e+x+y@gmail.com", "alice@gmail.com"),
        ("alice.smith@googlemail.com", "alicesmith@gmail.com"),
        ("+news@example.com", "+news@example.com"),  # nothing but a sub-address: kept
        ("alice@sub.gmail.com", "alice@sub.gmail.com"),  # only gmail.com itself ignores dots
    ],
)
def test_the_default_rules_name_one_contact_per_mailbox(address: str, contact: str):
    assert canonical_contact(address) == contact


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_every_spelling_of_a_leased_contact_meets_its_holder(
    client, redis_client, keys, sdr, retention, spelling
):
    held = ok(await lease_post(client, agentId=sdr["id"], contactEmail=GMAIL), 201)
    assert (held["contactEmail"], held["contact"]) == (GMAIL, GMAIL)
    before = await tenant_keys(redis_client, keys)

    body = problem(await lease_post(client, agentId=retention["id"], contactEmail=spelling), 409, "lease_conflict")
    asked = spelling.strip().lower()
    assert (body["contactEmail"], body["contact"]) == (asked, GMAIL)
    assert body["leaseHolder"]["agentId"] == sdr["id"]
    assert asked in body["detail"] and f"the contact {GMAIL}" in body["detail"]
    assert await tenant_keys(redis_client, keys) == before  # refused: nothing written

    check = ok(await client.post(f"{C}/send-check", json={"agentId": retention["id"], "contactEmail": spelling}))
    assert check["allowed"] is False and check["reason"] == "lease_conflict"
    assert (check["contactEmail"], check["contact"]) == (asked, GMAIL)
    assert check["leaseHolder"]["agentId"] == sdr["id"]


async def test_the_holder_asking_by_another_spelling_extends_its_own_lease(client, redis_client, keys, sdr):
    first = ok(await lease_post(client, agentId=sdr["id"], contactEmail="alice+one@gmail.com"), 201)
    again = ok(await lease_post(client, agentId=sdr["id"], contactEmail="A.lice+two@googlemail.com"), 200)
    assert (again["id"], again["fencingToken"]) == (first["id"], first["fencingToken"])
    assert (again["contactEmail"], again["contact"]) == ("a.lice+two@googlemail.com", GMAIL)
    leases = [key for key in await tenant_keys(redis_client, keys) if ":lease:" in key]
    assert leases == [keys.lease(TENANT, GMAIL)]  # one key, named by the contact
    assert await send_check(client, sdr["id"], "alice@gmail.com", fencingToken=first["fencingToken"]) == {
        "allowed": True
    }


async def test_addresses_of_other_mailboxes_stay_other_contacts(client, sdr, retention):
    ok(await lease_post(client, agentId=sdr["id"], contactEmail="alice@example.com"), 201)
    problem(
        await lease_post(client, agentId=retention["id"], contactEmail="alice+x@example.com"), 409, "lease_conflict"
    )
    dotted = ok(await lease_post(client, agentId=retention["id"], contactEmail="a.lice@example.com"), 201)
    assert dotted["contact"] == "a.lice@example.com"


async def test_a_lease_is_listed_read_and_its_events_found_by_any_spelling(client, sdr):
    held = ok(await lease_post(client, agentId=sdr["id"], contactEmail="alice+promo@googlemail.com"), 201)
    for spelling in [GMAIL, *SPELLINGS]:
        listed = ok(await client.get(f"{C}/leases", params={"contactEmail": spelling}))["leases"]
        assert [(lease["id"], lease["contactEmail"], lease["contact"]) for lease in listed] == [
            (held["id"], GMAIL, GMAIL)  # read back without an address asked: the contact
        ]
        events = ok(await client.get(f"{C}/events", params={"contactEmail": spelling, "after": "0", "limit": 10}))
        assert [(e["type"], e["contactEmail"]) for e in events["events"]] == [("lease.acquired", GMAIL)]
    read = ok(await client.get(f"{C}/lease/{held['id']}"))
    assert (read["contactEmail"], read["contact"]) == (GMAIL, GMAIL)
