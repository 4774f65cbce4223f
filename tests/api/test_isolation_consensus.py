"""Tenant isolation, hand-written cells of the consensus routes: request, list, read,
vote, and the consensus policies. What every cell checks: isolation_support.py.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.api.isolation_support import CellTable, cell_params, hidden, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import OTHER_TENANT, TENANT, C, bearer, credential_of, ok

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    a, b = "a", "b"  # readability in the lambdas below

    async def consensus_as_a(bc, w):
        """B's own agent, with its credential, naming A's agent: it acts only as itself."""
        mine = bearer(credential_of(bc, w.b["agent"]["id"]))
        await hidden(
            w,
            lambda i: bc.post(f"{C}/consensus", json={"requestingAgentId": i, "action": "x"}, headers=mine),
            w.a["agent"]["id"],
            403,
            "agent_mismatch",
        )

    async def consensus_as_a_forged(bc, w):
        await hidden(
            w,
            lambda i: bc.post(
                f"{C}/consensus", json={"requestingAgentId": i, "action": "x"}, headers=bearer(forged(TENANT, i))
            ),
            w.a["agent"]["id"],
            401,
            "unauthorized",
        )

    async def consensus_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/consensus", json={"tenantId": TENANT, "requestingAgentId": w.b["agent"]["id"], "action": "x"}
            ),
        )

    def list_consensus(status):
        async def cell(bc, w):
            params = {"status": status} if status else {}
            response = await bc.get(f"{C}/consensus", params=params)
            body = ok(response)
            mine = {w.b["cons"]["id"]} if status in (None, "pending") else set()
            assert {x["id"] for x in body["consensus"]} == mine
            no_leak(w, response)
            w.cells += 1

        return cell

    async def list_consensus_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/consensus", params={"tenantId": TENANT}))

    def get_consensus(which):
        async def cell(bc, w):
            await hidden(w, lambda i: bc.get(f"{C}/consensus/{i}"), w.a[which]["id"], 404, "consensus_not_found")

        return cell

    async def get_consensus_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/consensus/{w.a['pending']['id']}", params={"tenantId": TENANT}))

    def vote(which, as_whom):
        async def cell(bc, w):
            # By A's agent: B's peer's credential naming A's voter (403 agent_mismatch);
            # by B: B's peer (404, A's request is not in B).
            voter = w.a["third"]["id"] if as_whom == a else w.b["peer"]["id"]
            mine = bearer(credential_of(bc, w.b["peer"]["id"]))
            await hidden(
                w,
                lambda i: bc.post(f"{C}/consensus/{i}/vote", json={"agentId": voter, "vote": "approve"}, headers=mine),
                w.a[which]["id"],
                403 if as_whom == a else 404,
                "agent_mismatch" if as_whom == a else "consensus_not_found",
                sent={voter},
            )

        return cell

    async def vote_forged(bc, w):
        """A forged credential claiming A's voter: refused (401) before the request is
        looked up, so it cannot tell A's request from one that never existed."""
        voter = w.a["third"]["id"]
        await hidden(
            w,
            lambda i: bc.post(
                f"{C}/consensus/{i}/vote",
                json={"agentId": voter, "vote": "approve"},
                headers=bearer(forged(TENANT, voter)),
            ),
            w.a["pending"]["id"],
            401,
            "unauthorized",
            sent={voter},
        )

    async def vote_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/consensus/{w.a['pending']['id']}/vote",
                json={"tenantId": TENANT, "agentId": w.b["peer"]["id"], "vote": "approve"},
            ),
        )

    def policy(method):
        async def cell(bc, w):
            """B's own policy of the action A has one for: B's default, then B's own;
            A's untouched (run_cell checks A's view)."""
            body = {"rule": "unanimous"} if method == "PUT" else None
            response = await bc.request(method, f"{C}/consensus-policies/acme-action", json=body)
            got = ok(response)
            assert got["tenantId"] == OTHER_TENANT and got["voterRoles"] == [] and got["minVotes"] == 0
            assert got["default"] is (method != "PUT")
            no_leak(w, response, {"acme-action"})
            w.cells += 1

        return cell

    def policy_tenant(method):
        async def cell(bc, w):
            body = {"tenantId": TENANT, "rule": "unanimous"} if method == "PUT" else None
            params = None if method == "PUT" else {"tenantId": TENANT}
            await mismatch(w, await bc.request(method, f"{C}/consensus-policies/acme-action", json=body, params=params))

        return cell

    async def policies(bc, w):
        response = await bc.get(f"{C}/consensus-policies")
        assert ok(response) == {"policies": []}
        no_leak(w, response)
        w.cells += 1

    async def policies_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/consensus-policies", params={"tenantId": TENANT}))

    return {
        ("GET", f"{C}/consensus-policies"): {"own": policies, "tenantId-A": policies_tenant},
        **{
            (m, f"{C}/consensus-policies/{{action}}"): {"own": policy(m), "tenantId-A": policy_tenant(m)}
            for m in ("GET", "PUT", "DELETE")
        },
        ("POST", f"{C}/consensus"): {
            "A-requester": consensus_as_a,
            "A-requester-forged": consensus_as_a_forged,
            "tenantId-A": consensus_tenant,
        },
        ("GET", f"{C}/consensus"): {
            **{f"status-{s}": list_consensus(s) for s in (None, "pending", "approved", "rejected", "expired")},
            "tenantId-A": list_consensus_tenant,
        },
        ("GET", f"{C}/consensus/{{consensusId}}"): {
            "A-pending": get_consensus("pending"),
            "A-decided": get_consensus("decided"),
            "tenantId-A": get_consensus_tenant,
        },
        ("POST", f"{C}/consensus/{{consensusId}}/vote"): {
            "A-pending-by-A-agent": vote("pending", a),
            "A-pending-forged-A-agent": vote_forged,
            "A-pending-by-B": vote("pending", b),
            "A-decided-by-B": vote("decided", b),
            "tenantId-A": vote_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = cell_params(CELLS)


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))
