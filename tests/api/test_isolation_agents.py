"""Tenant isolation, hand-written cells of the agent routes: register, list, read
and remove agents, heartbeat, and the tenant's quotas. What every cell checks: isolation_support.py.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.api.isolation_support import CellTable, cell_params, hidden, mismatch, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.support.api import OTHER_TENANT, TENANT, V1, C, bearer, credential_of, ok

# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> CellTable:
    async def register_a_name(bc, w):
        body = ok(await bc.post(f"{V1}/register", json={"agentName": "acme-sdr"}), 201)  # new in B: 201, not 200
        assert body["id"] != w.a["agent"]["id"] and body["tenantId"] == OTHER_TENANT
        assert body["metadata"] == {} and body["agentRole"] == "general"
        no_leak(w, await bc.get(f"{V1}/agents/{body['id']}"), {"acme-sdr"})
        w.cells += 1

    async def register_tenant(bc, w):
        await mismatch(w, await bc.post(f"{V1}/register", json={"tenantId": TENANT, "agentName": "x"}))

    def list_agents(status):
        async def cell(bc, w):
            params = {"status": status} if status else {}
            body = ok(await bc.get(f"{V1}/agents", params=params))
            mine = {w.b["agent"]["id"], w.b["peer"]["id"]} if status != "inactive" else set()
            assert {x["id"] for x in body["agents"]} == mine
            no_leak(w, await bc.get(f"{V1}/agents", params=params))
            w.cells += 1

        return cell

    async def list_agents_tenant(bc, w):
        await mismatch(w, await bc.get(f"{V1}/agents", params={"tenantId": TENANT}))

    def get_agent(which):
        async def cell(bc, w):
            await hidden(w, lambda i: bc.get(f"{V1}/agents/{i}"), w.a[which]["id"], 404, "agent_not_found")

        return cell

    async def get_agent_tenant(bc, w):
        await mismatch(w, await bc.get(f"{V1}/agents/{w.a['agent']['id']}", params={"tenantId": TENANT}))

    async def delete_agent(bc, w):
        await hidden(w, lambda i: bc.delete(f"{V1}/agents/{i}"), w.a["agent"]["id"], 404, "agent_not_found")

    async def delete_agent_tenant(bc, w):
        await mismatch(w, await bc.delete(f"{V1}/agents/{w.a['agent']['id']}", params={"tenantId": TENANT}))

    async def rotate(bc, w):
        """B's admin key rotating A's agent's credential: A's agent is not in B."""
        await hidden(w, lambda i: bc.post(f"{V1}/agents/{i}/credentials"), w.a["agent"]["id"], 404, "agent_not_found")

    async def rotate_tenant(bc, w):
        await mismatch(w, await bc.post(f"{V1}/agents/{w.a['agent']['id']}/credentials", params={"tenantId": TENANT}))

    async def heartbeat(bc, w):
        """B's own agent, with its credential, naming A's agent: it acts only as itself."""
        mine = bearer(credential_of(bc, w.b["agent"]["id"]))
        await hidden(
            w,
            lambda i: bc.post(f"{C}/heartbeat", json={"agentId": i}, headers=mine),
            w.a["agent"]["id"],
            403,
            "agent_mismatch",
        )

    async def heartbeat_forged(bc, w):
        """A credential of the right shape claiming A's agent, with a secret Concord never made."""
        await hidden(
            w,
            lambda i: bc.post(f"{C}/heartbeat", json={"agentId": i}, headers=bearer(forged(TENANT, i))),
            w.a["agent"]["id"],
            401,
            "unauthorized",
        )

    async def heartbeat_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/heartbeat", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"]}))

    def quotas(method):
        async def cell(bc, w):
            """B's own quotas: its tenant's, and A's quotas key untouched (run_cell checks A)."""
            body = ok(await bc.request(method, f"{V1}/quotas", json={"agents": 7} if method == "PUT" else None))
            assert body["tenantId"] == OTHER_TENANT and body["agents"] == (7 if method == "PUT" else 10_000)
            w.cells += 1

        return cell

    def quotas_tenant(method):
        async def cell(bc, w):
            body = {"tenantId": TENANT, "agents": 7} if method == "PUT" else None
            params = None if method == "PUT" else {"tenantId": TENANT}
            await mismatch(w, await bc.request(method, f"{V1}/quotas", json=body, params=params))

        return cell

    return {
        **{(m, f"{V1}/quotas"): {"own": quotas(m), "tenantId-A": quotas_tenant(m)} for m in ("GET", "PUT", "DELETE")},
        ("POST", f"{V1}/register"): {
            "same-name-as-A": register_a_name,
            "tenantId-A": register_tenant,
        },
        ("GET", f"{V1}/agents"): {
            "all": list_agents(None),
            "active": list_agents("active"),
            "inactive": list_agents("inactive"),
            "tenantId-A": list_agents_tenant,
        },
        ("GET", f"{V1}/agents/{{agentId}}"): {
            "A-requester": get_agent("agent"),
            "A-voter": get_agent("peer"),
            "tenantId-A": get_agent_tenant,
        },
        ("DELETE", f"{V1}/agents/{{agentId}}"): {"A-agent": delete_agent, "tenantId-A": delete_agent_tenant},
        ("POST", f"{V1}/agents/{{agentId}}/credentials"): {"A-agent": rotate, "tenantId-A": rotate_tenant},
        ("POST", f"{C}/heartbeat"): {
            "A-agent": heartbeat,
            "A-agent-forged": heartbeat_forged,
            "tenantId-A": heartbeat_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = cell_params(CELLS)


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))
