"""The paths of the API, shared by the server's route declarations and the SDK.

A path parameter is written ``{name}``: the server routes on the template, the
SDK fills it with ``path.format(name=quote(value, safe=""))``.
"""

from __future__ import annotations

V1 = "/v1/agent"
COORDINATION = f"{V1}/coordination"

HEALTHZ = "/healthz"
READYZ = "/readyz"
OPENAPI = "/openapi.json"
METRICS = "/metrics"

REGISTER = f"{V1}/register"
AGENTS = f"{V1}/agents"
AGENT = f"{V1}/agents/{{agentId}}"
AGENT_CREDENTIALS = f"{V1}/agents/{{agentId}}/credentials"
QUOTAS = f"{V1}/quotas"
HEARTBEAT = f"{COORDINATION}/heartbeat"

LEASE = f"{COORDINATION}/lease"
LEASE_BY_ID = f"{COORDINATION}/lease/{{leaseId}}"
LEASE_RENEW = f"{COORDINATION}/lease/{{leaseId}}/renew"
LEASES = f"{COORDINATION}/leases"
SEND_CHECK = f"{COORDINATION}/send-check"

CONSENSUS = f"{COORDINATION}/consensus"
CONSENSUS_BY_ID = f"{COORDINATION}/consensus/{{consensusId}}"
VOTE = f"{COORDINATION}/consensus/{{consensusId}}/vote"
CONSENSUS_POLICIES = f"{COORDINATION}/consensus-policies"
CONSENSUS_POLICY = f"{COORDINATION}/consensus-policies/{{action}}"

SUPPRESSIONS = f"{COORDINATION}/suppressions"
SUPPRESSION = f"{COORDINATION}/suppressions/{{entry}}"

EVENTS = f"{COORDINATION}/events"
