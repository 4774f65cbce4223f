"""Tenant isolation, hand-written cells of the event feed: B's page of events, however
it filters. What every cell checks: isolation_support.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.isolation_support import CONTACT, CellTable, World, cell_params, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import OTHER_TENANT, TENANT, C, ok

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    def events(filters: Callable[[World], dict[str, str]]):
        async def cell(bc, w):
            """B's page of events holds B's events only, however it filters."""
            params = filters(w)
            response = await bc.get(f"{C}/events", params={"after": "0", **params})
            body = ok(response)
            assert {e["tenantId"] for e in body["events"]} <= {OTHER_TENANT}
            if params:  # A's agent, A's contact: nothing of B's matches
                assert body["events"] == []
            else:
                assert {e.get("agentId") for e in body["events"]} == {w.b["agent"]["id"], w.b["peer"]["id"]}
            no_leak(w, response, set(params.values()))
            w.cells += 1

        return cell

    async def events_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/events", params={"tenantId": TENANT, "after": "0"}))

    return {
        ("GET", f"{C}/events"): {
            "all": events(lambda w: {}),
            "A-agent": events(lambda w: {"agentId": w.a["agent"]["id"]}),
            "A-contact": events(lambda w: {"contactEmail": CONTACT}),
            "tenantId-A": events_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = cell_params(CELLS)


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))
