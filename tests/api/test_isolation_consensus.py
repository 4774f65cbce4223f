"""Tenant isolation, hand-written cells of the consensus routes: request, list, read,
vote. What every cell checks: isolation_support.py.
"""

from __future__ import annotations

import pytest

from tests.api.isolation_support import CellTable, cell_params, hidden, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import TENANT, C, ok

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    a, b = "a", "b"  # readability in the lambdas below

    async def consensus_as_a(bc, w):
        await hidden(
            w,
            lambda i: bc.post(f"{C}/consensus", json={"requestingAgentId": i, "action": "x"}),
            w.a["agent"]["id"],
            404,
            "agent_not_found",
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
            voter = w.a["third"]["id"] if as_whom == a else w.b["peer"]["id"]
            await hidden(
                w,
                lambda i: bc.post(f"{C}/consensus/{i}/vote", json={"agentId": voter, "vote": "approve"}),
                w.a[which]["id"],
                404,
                "consensus_not_found",
                sent={voter},
            )

        return cell

    async def vote_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/consensus/{w.a['pending']['id']}/vote",
                json={"tenantId": TENANT, "agentId": w.b["peer"]["id"], "vote": "approve"},
            ),
        )

    return {
        ("POST", f"{C}/consensus"): {"A-requester": consensus_as_a, "tenantId-A": consensus_tenant},
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
