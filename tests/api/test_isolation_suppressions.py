"""Tenant isolation, hand-written cells of suppressions: B suppressing, reading,
listing and lifting the domain A suppressed sees and changes B's own suppressions
only, and A's stands (run_cell checks A's view). What every cell checks:
isolation_support.py.
"""

from __future__ import annotations

import pytest

from tests.api.isolation_support import A_SUPPRESSED, CellTable, cell_params, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import OTHER_TENANT, TENANT, C, ok, problem

ENTRY = f"{C}/suppressions/{A_SUPPRESSED}"

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    async def put(bc, w):
        """B suppresses the domain A suppressed: new in B (201), B's own, A's note unseen."""
        response = await bc.put(ENTRY, json={"reason": "manual"})
        got = ok(response, 201)
        assert (got["tenantId"], got["reason"], got.get("note")) == (OTHER_TENANT, "manual", None)
        no_leak(w, response, {A_SUPPRESSED})
        w.cells += 1

    async def put_tenant(bc, w):
        await mismatch(w, await bc.put(ENTRY, json={"tenantId": TENANT, "reason": "manual"}))

    async def load(bc, w):
        response = await bc.post(
            f"{C}/suppressions", json={"suppressions": [{"entry": A_SUPPRESSED, "reason": "manual"}]}
        )
        assert ok(response) == {"received": 1, "written": 1}  # new in B, whatever A holds
        no_leak(w, response, {A_SUPPRESSED})
        w.cells += 1

    async def load_tenant(bc, w):
        body = {"tenantId": TENANT, "suppressions": [{"entry": A_SUPPRESSED, "reason": "manual"}]}
        await mismatch(w, await bc.post(f"{C}/suppressions", json=body))

    def absent(method):
        async def cell(bc, w):
            """Reading or lifting A's entry from B: not suppressed in B."""
            response = await bc.request(method, ENTRY)
            problem(response, 404, "suppression_not_found")
            no_leak(w, response, {A_SUPPRESSED})
            w.cells += 1

        return cell

    def absent_tenant(method):
        async def cell(bc, w):
            await mismatch(w, await bc.request(method, ENTRY, params={"tenantId": TENANT}))

        return cell

    async def listed(bc, w):
        response = await bc.get(f"{C}/suppressions")
        assert ok(response) == {"suppressions": [], "nextCursor": None}
        no_leak(w, response)
        w.cells += 1

    async def listed_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/suppressions", params={"tenantId": TENANT}))

    return {
        ("PUT", f"{C}/suppressions/{{entry}}"): {"A-entry": put, "tenantId-A": put_tenant},
        ("POST", f"{C}/suppressions"): {"A-entry": load, "tenantId-A": load_tenant},
        ("GET", f"{C}/suppressions/{{entry}}"): {"A-entry": absent("GET"), "tenantId-A": absent_tenant("GET")},
        ("DELETE", f"{C}/suppressions/{{entry}}"): {
            "A-entry": absent("DELETE"),
            "tenantId-A": absent_tenant("DELETE"),
        },
        ("GET", f"{C}/suppressions"): {"all": listed, "tenantId-A": listed_tenant},
    }


CELLS = _cells()
CELL_PARAMS = cell_params(CELLS)


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))
