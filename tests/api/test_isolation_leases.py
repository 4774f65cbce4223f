"""Tenant isolation, hand-written cells of the lease routes: acquire, read, release,
renew, list leases, send-check. What every cell checks: isolation_support.py.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.api.isolation_support import CONTACT, CellTable, cell_params, hidden, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import TENANT, C, bearer, credential_of, ok, verdict

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    a, b = "a", "b"  # readability in the lambdas below

    async def lease_as_a(bc, w):
        """B's own agent, with its credential, naming A's agent: it acts only as itself."""
        mine = bearer(credential_of(bc, w.b["agent"]["id"]))
        await hidden(
            w,
            lambda i: bc.post(f"{C}/lease", json={"agentId": i, "contactEmail": CONTACT}, headers=mine),
            w.a["agent"]["id"],
            403,
            "agent_mismatch",
            sent={CONTACT},
        )

    async def lease_as_a_forged(bc, w):
        await hidden(
            w,
            lambda i: bc.post(
                f"{C}/lease", json={"agentId": i, "contactEmail": CONTACT}, headers=bearer(forged(TENANT, i))
            ),
            w.a["agent"]["id"],
            401,
            "unauthorized",
            sent={CONTACT},
        )

    async def lease_a_contact(bc, w):
        """A's lease does not exist in B: B's own agent gets the contact, with a lease of B's."""
        response = await bc.post(f"{C}/lease", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT})
        body = ok(response, 201)
        assert body["conflict"] is False and body["agentId"] == w.b["agent"]["id"]
        assert body["id"] != w.a["lease"]["id"] and body["intent"] is None
        no_leak(w, response, {CONTACT})
        w.cells += 1

    async def lease_tenant(bc, w):
        mine = bearer(credential_of(bc, w.b["agent"]["id"]))
        await mismatch(
            w,
            await bc.post(
                f"{C}/lease",
                json={"tenantId": TENANT, "agentId": w.a["agent"]["id"], "contactEmail": CONTACT},
                headers=mine,
            ),
        )

    async def get_lease(bc, w):
        await hidden(w, lambda i: bc.get(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def get_lease_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    async def release(bc, w):
        await hidden(w, lambda i: bc.delete(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def release_as_holder(bc, w):
        holder = w.a["agent"]["id"]
        await hidden(
            w,
            lambda i: bc.delete(f"{C}/lease/{i}", params={"agentId": holder}),
            w.a["lease"]["id"],
            404,
            "lease_not_found",
            sent={holder},
        )

    async def release_forged_holder(bc, w):
        """A forged credential claiming A's holder: refused (401) before the lease is
        looked up, so it cannot tell A's lease from one that never existed.

        Before its fix this failed: Leases.renew/release (server/store/leases.py) look the lease id up
        (_find) before the script checks the credential, so a lease that does not exist
        is 404 lease_not_found to any credential, and one that does 401: with no valid
        secret, anyone learns which lease ids exist (they are guessable: the holder's
        name-derived id and a fencing token)."""
        holder = w.a["agent"]["id"]
        await hidden(
            w,
            lambda i: bc.delete(f"{C}/lease/{i}", params={"agentId": holder}, headers=bearer(forged(TENANT, holder))),
            w.a["lease"]["id"],
            401,
            "unauthorized",
            sent={holder},
        )

    async def release_tenant(bc, w):
        await mismatch(w, await bc.delete(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    def renew(as_whom):
        async def cell(bc, w):
            # As A's holder: B's own agent's credential naming A's holder (403
            # agent_mismatch); as B: B's agent (404, A's lease is not in B).
            agent_id = w.a["agent"]["id"] if as_whom == a else w.b["agent"]["id"]
            mine = bearer(credential_of(bc, w.b["agent"]["id"]))
            await hidden(
                w,
                lambda i: bc.post(f"{C}/lease/{i}/renew", json={"agentId": agent_id}, headers=mine),
                w.a["lease"]["id"],
                403 if as_whom == a else 404,
                "agent_mismatch" if as_whom == a else "lease_not_found",
                sent={agent_id},
            )

        return cell

    async def renew_forged_holder(bc, w):
        """A forged credential claiming A's holder: refused (401) before the lease is
        looked up, so it cannot tell A's lease from one that never existed.

        Before its fix this failed: Leases.renew/release (server/store/leases.py) look the lease id up
        (_find) before the script checks the credential, so a lease that does not exist
        is 404 lease_not_found to any credential, and one that does 401: with no valid
        secret, anyone learns which lease ids exist (they are guessable: the holder's
        name-derived id and a fencing token)."""
        holder = w.a["agent"]["id"]
        await hidden(
            w,
            lambda i: bc.post(f"{C}/lease/{i}/renew", json={"agentId": holder}, headers=bearer(forged(TENANT, holder))),
            w.a["lease"]["id"],
            401,
            "unauthorized",
            sent={holder},
        )

    async def renew_tenant(bc, w):
        mine = bearer(credential_of(bc, w.b["agent"]["id"]))
        await mismatch(
            w,
            await bc.post(
                f"{C}/lease/{w.a['lease']['id']}/renew",
                json={"tenantId": TENANT, "agentId": w.a["agent"]["id"]},
                headers=mine,
            ),
        )

    async def leases_of_a_agent(bc, w):
        response = await hidden(w, lambda i: bc.get(f"{C}/leases", params={"agentId": i}), w.a["agent"]["id"], 200)
        assert response.json() == {"leases": [], "nextCursor": None}

    async def leases_of_a_contact(bc, w):
        response = await bc.get(f"{C}/leases", params={"contactEmail": CONTACT})
        assert ok(response) == {"leases": [], "nextCursor": None}
        no_leak(w, response, {CONTACT})
        both = await bc.get(f"{C}/leases", params={"contactEmail": CONTACT, "agentId": w.a["agent"]["id"]})
        assert ok(both) == {"leases": [], "nextCursor": None}
        w.cells += 1

    async def leases_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/leases", params={"tenantId": TENANT, "agentId": w.a["agent"]["id"]}))

    async def send_check_as_a(bc, w):
        response = await hidden(
            w,
            lambda i: bc.post(f"{C}/send-check", json={"agentId": i, "contactEmail": CONTACT}),
            w.a["agent"]["id"],
            200,
            sent={CONTACT},
        )
        assert verdict(response.json(), CONTACT) == {"allowed": False, "reason": "agent_not_found"}

    async def send_check_a_contact(bc, w):
        """A's lease does not hold the contact in B: B's agent may send, and no holder is named."""
        response = await bc.post(f"{C}/send-check", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT})
        assert verdict(ok(response), CONTACT) == {"allowed": True}
        no_leak(w, response, {CONTACT})
        w.cells += 1

    async def send_check_a_token(bc, w):
        token = w.a["lease"]["fencingToken"]
        response = await bc.post(
            f"{C}/send-check", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT, "fencingToken": token}
        )
        assert verdict(ok(response), CONTACT) == {"allowed": False, "reason": "stale_fencing_token"}
        no_leak(w, response, {CONTACT, str(token)})
        w.cells += 1

    async def send_check_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/send-check", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"], "contactEmail": CONTACT}
            ),
        )

    return {
        ("POST", f"{C}/lease"): {
            "A-agent": lease_as_a,
            "A-agent-forged": lease_as_a_forged,
            "A-contact-by-B": lease_a_contact,
            "tenantId-A": lease_tenant,
        },
        ("GET", f"{C}/lease/{{leaseId}}"): {"A-lease": get_lease, "tenantId-A": get_lease_tenant},
        ("DELETE", f"{C}/lease/{{leaseId}}"): {
            "A-lease": release,
            "A-lease-as-A-holder": release_as_holder,
            "A-lease-forged-A-holder": release_forged_holder,
            "tenantId-A": release_tenant,
        },
        ("POST", f"{C}/lease/{{leaseId}}/renew"): {
            "A-lease-as-A-holder": renew(a),
            "A-lease-forged-A-holder": renew_forged_holder,
            "A-lease-as-B": renew(b),
            "tenantId-A": renew_tenant,
        },
        ("GET", f"{C}/leases"): {
            "A-agent": leases_of_a_agent,
            "A-contact": leases_of_a_contact,
            "tenantId-A": leases_tenant,
        },
        ("POST", f"{C}/send-check"): {
            "A-agent": send_check_as_a,
            "A-contact-by-B": send_check_a_contact,
            "A-token-by-B": send_check_a_token,
            "tenantId-A": send_check_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = cell_params(CELLS)


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))
