"""The endpoints of the API, one declaration each: authenticate, decode, one
store call, encode. Nothing else.

Each handler receives a Call whose body and query are already decoded and
normalized (protocol.requests), makes one call of a store part (store/agents.py,
leases.py, consensus.py, events.py) and answers its value. ``routes`` is the
router's table, made from these declarations.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from concord import protocol as p
from concord.protocol import routes as paths
from concord.server.errors import invalid, quota_exceeded
from concord.server.http.endpoint import ENDPOINTS, Answer, Call, endpoint, respond
from concord.server.http.openapi import document
from concord.server.http.problems import problem
from concord.server.http.streaming import EventStream, LongPoll
from concord.server.principals import AGENT, HUMAN
from concord.server.settings import Quotas
from concord.server.store.events import EventFilter

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
AS_AGENT = frozenset({AGENT})  # only an agent's own credential acts as the agent
AS_MEMBER = frozenset({AGENT, HUMAN})  # an agent's or a human's own credential (votes)

# --- operations (no API key) -------------------------------------------------


@endpoint("GET", paths.HEALTHZ, "The process is alive", answers={200: p.Status}, query=None, authenticated=False)
async def healthz(c: Call) -> Answer | Response:
    return respond(p.Status(status="ok"))


@endpoint(
    "GET",
    paths.READYZ,
    "Redis answers",
    answers={200: p.Status},
    query=None,
    authenticated=False,
    own_errors=("store_unavailable",),
)
async def readyz(c: Call) -> Answer | Response:
    try:
        async with asyncio.timeout(c.deadline):
            await c.store.ping()
    except Exception as exc:  # any failure to answer means not ready
        return problem("store_unavailable", f"Redis does not answer ({type(exc).__name__}); see the service log")
    return respond(p.Status(status="ready"))


@endpoint(
    "GET",
    paths.OPENAPI,
    "This API as OpenAPI 3.1",
    answers={200: dict[str, Any]},
    query=None,
    authenticated=False,
)
async def openapi(c: Call) -> Answer | Response:
    return Response(document(tuple(ENDPOINTS)), media_type="application/json")


# --- agents ------------------------------------------------------------------


@endpoint(
    "POST",
    paths.REGISTER,
    "Register an agent, or update the agent of that name; answers its new credential",
    answers={201: p.RegisteredAgent, 200: p.RegisteredAgent},
    body=p.RegisterBody,
    roles=frozenset({"admin", "enroll"}),
    own_errors=("quota_exceeded", "kind_mismatch"),
)
async def register(c: Call) -> Answer | Response:
    body: p.RegisterBody = c.body
    agent, created = await c.store.agents.register(
        c.tenant, body.agent_name, body.agent_role, body.metadata, c.key, body.kind
    )
    return respond(agent, 201 if created else 200)


@endpoint(
    "POST",
    paths.AGENT_CREDENTIALS,
    "Rotate an agent's credential: a new one, and the current one refused from now on",
    answers={200: p.AgentCredential},
    query=p.TenantQuery,
    roles=frozenset({"admin", "enroll"}),
)
async def rotate_credential(c: Call) -> Answer | Response:
    return respond(await c.store.agents.rotate(c.tenant, c.ids["agentId"], c.key))


@endpoint("GET", paths.AGENTS, "List agents, newest first", answers={200: p.AgentList}, query=p.AgentListQuery)
async def list_agents(c: Call) -> Answer | Response:
    q: p.AgentListQuery = c.query
    return respond(await c.store.agents.page(c.tenant, q.status, q.limit, q.cursor))


@endpoint("GET", paths.AGENT, "Read an agent", answers={200: p.Agent})
async def get_agent(c: Call) -> Answer | Response:
    return respond(await c.store.agents.get(c.tenant, c.ids["agentId"]))


@endpoint(
    "DELETE",
    paths.AGENT,
    "Deregister an agent, revoke its credential and release its leases",
    answers={200: p.AgentRemoved},
)
async def remove_agent(c: Call) -> Answer | Response:
    return respond(await c.store.agents.remove(c.tenant, c.ids["agentId"], c.key))


@endpoint(
    "POST",
    paths.HEARTBEAT,
    "Record that an agent is alive",
    answers={200: p.Heartbeat},
    body=p.HeartbeatBody,
    roles=AS_AGENT,
    acts_as="agent_id",
)
async def heartbeat(c: Call) -> Answer | Response:
    return respond(await c.store.agents.heartbeat(c.tenant, c.body.agent_id, c.credential))


# --- leases ------------------------------------------------------------------


@endpoint(
    "POST",
    paths.LEASE,
    "Lease a contact: granted, extended for its holder, or refused",
    answers={201: p.Lease, 200: p.Lease},
    body=p.LeaseBody,
    own_errors=("agent_inactive", "lease_conflict", "quota_exceeded", "suppressed"),
    roles=AS_AGENT,
    acts_as="agent_id",
)
async def acquire_lease(c: Call) -> Answer | Response:
    body: p.LeaseBody = c.body
    lease, created = await c.store.leases.acquire(
        c.tenant, body.agent_id, body.contact_email, body.intent, body.duration_ms, c.credential
    )
    return respond(lease, 201 if created else 200)


@endpoint(
    "POST",
    paths.LEASE_RENEW,
    "Move a lease's expiry; the fencing token stays",
    answers={200: p.Lease},
    body=p.RenewBody,
    own_errors=("not_lease_holder", "agent_inactive"),
    roles=AS_AGENT,
    acts_as="agent_id",
)
async def renew_lease(c: Call) -> Answer | Response:
    body: p.RenewBody = c.body
    lease = await c.store.leases.renew(c.tenant, c.ids["leaseId"], body.agent_id, body.duration_ms, c.credential)
    return respond(lease)


@endpoint(
    "DELETE",
    paths.LEASE_BY_ID,
    "Release a lease before it expires: its holder, or an admin key (a forced release)",
    answers={200: p.Released},
    query=p.ReleaseQuery,
    own_errors=("not_lease_holder",),
    roles=frozenset({"admin", AGENT}),
    acts_as="agent_id",
)
async def release_lease(c: Call) -> Answer | Response:
    return respond(await c.store.leases.release(c.tenant, c.ids["leaseId"], c.query.agent_id, c.principal))


@endpoint("GET", paths.LEASE_BY_ID, "Read a lease", answers={200: p.Lease})
async def get_lease(c: Call) -> Answer | Response:
    return respond(await c.store.leases.get(c.tenant, c.ids["leaseId"]))


@endpoint(
    "GET",
    paths.LEASES,
    "List the leases of an agent and/or a contact, newest first",
    answers={200: p.LeaseList},
    query=p.LeaseListQuery,
)
async def list_leases(c: Call) -> Answer | Response:
    q: p.LeaseListQuery = c.query
    return respond(await c.store.leases.page(c.tenant, q.agent_id, q.contact_email, q.limit, q.cursor))


@endpoint(
    "POST",
    paths.SEND_CHECK,
    "May this agent email this contact now?",
    answers={200: p.SendCheck},
    body=p.SendCheckBody,
    roles=frozenset({"admin", "gate", AGENT}),
    acts_as="agent_id",
)
async def send_check(c: Call) -> Answer | Response:
    body: p.SendCheckBody = c.body
    if body.agent_id is None:  # a key names the agent; a credential is its agent
        raise invalid("agentId", "required with an API key: the agent about to send", "$.agentId")
    answer = await c.store.leases.send_check(
        c.tenant, body.agent_id, body.contact_email, body.fencing_token, c.credential
    )
    return respond(answer)


# --- consensus ---------------------------------------------------------------


@endpoint(
    "POST",
    paths.CONSENSUS,
    "Ask the active peers to approve an action",
    answers={201: p.Consensus},
    body=p.ConsensusBody,
    own_errors=("agent_inactive", "idempotency_key_reused", "quota_exceeded"),
    roles=AS_AGENT,
    acts_as="requesting_agent_id",
    request_headers={
        "Idempotency-Key": "1-255 printable ASCII characters. The same key with the same request within 24 hours "
        "answers the first answer again; with another request it is 422 idempotency_key_reused."
    },
    answer_headers={"Idempotent-Replayed": "`true` when this answer replays the first one for its Idempotency-Key"},
)
async def request_consensus(c: Call) -> Answer | Response:
    body: p.ConsensusBody = c.body
    idempotency_key = c.headers.get("idempotency-key")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise invalid("header Idempotency-Key", "1–255 printable ASCII characters", "header Idempotency-Key")
    consensus, replayed = await c.store.consensus.request(
        c.tenant,
        body.requesting_agent_id,
        body.action,
        body.contact_email,
        body.reason,
        body.timeout_ms,
        c.credential,
        idempotency_key,
    )
    return respond(consensus, 201, {"Idempotent-Replayed": "true"} if replayed else None)


@endpoint(
    "POST",
    paths.VOTE,
    "Vote on a consensus request",
    answers={200: p.Consensus},
    body=p.VoteBody,
    own_errors=("requester_cannot_vote", "not_eligible", "already_voted", "consensus_closed", "agent_inactive"),
    roles=AS_MEMBER,
    acts_as="agent_id",
)
async def vote(c: Call) -> Answer | Response:
    body: p.VoteBody = c.body
    consensus = await c.store.consensus.vote(
        c.tenant, c.ids["consensusId"], body.agent_id, body.vote, body.reason, c.credential
    )
    return respond(consensus)


@endpoint(
    "GET",
    paths.CONSENSUS_BY_ID,
    "Read a consensus request; with waitSeconds, wait for its decision",
    answers={200: p.Consensus},
    query=p.ConsensusReadQuery,
    own_errors=("quota_exceeded",),
    proves=True,
)
async def get_consensus(c: Call) -> Answer | Response:
    reader = c.principal.id if c.credential else ""  # a member's read: its script proves the credential
    consensus = await c.store.consensus.get(c.tenant, c.ids["consensusId"], reader, c.credential)
    if consensus.status != "pending" or not c.query.wait_seconds:
        return respond(consensus)
    await within_streams_quota(c)
    return LongPoll(c, consensus.id, c.query.wait_seconds)


@endpoint(
    "GET",
    paths.CONSENSUS,
    "List consensus requests, newest first",
    answers={200: p.ConsensusList},
    query=p.ConsensusListQuery,
)
async def list_consensus(c: Call) -> Answer | Response:
    q: p.ConsensusListQuery = c.query
    return respond(await c.store.consensus.page(c.tenant, q.status, q.limit, q.cursor))


# --- events ------------------------------------------------------------------


@endpoint(
    "GET",
    paths.EVENTS,
    "The tenant's events: a live Server-Sent Event stream, or with after/limit a JSON page",
    answers={200: p.EventPage},
    query=p.EventsQuery,
    event_stream=True,
    own_errors=("quota_exceeded",),
    request_headers={
        "Last-Event-ID": "The stream resumes after this event id (`0`: from the oldest event kept). Without it, "
        "the stream starts with the next event. Ignored by a JSON page."
    },
)
async def events(c: Call) -> Answer | Response:
    q: p.EventsQuery = c.query
    match = EventFilter(q.types, q.agent_id, q.contact_email)
    if q.after is not None or q.limit is not None:
        return respond(await c.store.events.page(c.tenant, q.after or "0", q.limit or 100, match))
    start = c.headers.get("last-event-id")
    if start is not None:
        try:
            start = p.stream_id(start.strip(), "header Last-Event-ID")
        except p.FieldError as exc:
            raise invalid("header Last-Event-ID", exc.rule, exc.field) from None
    await within_streams_quota(c)
    return EventStream(c, start if start is not None else await c.store.events.last_id(c.tenant), match)


async def within_streams_quota(c: Call) -> None:
    """A stream or long poll may open while the tenant has fewer open on this instance
    than its quota (checked as it opens: a burst of opens may pass it by a few)."""
    limit = (await c.store.quotas.get(c.tenant)).streams
    if c.store.feed.listening(c.tenant) >= limit:
        raise quota_exceeded("streams", limit)


# --- consensus policies ------------------------------------------------------


@endpoint(
    "GET",
    paths.CONSENSUS_POLICIES,
    "List the tenant's own consensus policies, by action",
    answers={200: p.ConsensusPolicyList},
)
async def list_policies(c: Call) -> Answer | Response:
    return respond(await c.store.policies.all(c.tenant))


@endpoint(
    "GET",
    paths.CONSENSUS_POLICY,
    "The consensus policy in force for an action: the tenant's own, or the default",
    answers={200: p.ConsensusPolicy},
)
async def get_policy(c: Call) -> Answer | Response:
    return respond(await c.store.policies.get(c.tenant, c.ids["action"]))


@endpoint(
    "PUT",
    paths.CONSENSUS_POLICY,
    "Set the consensus policy of an action, for requests made from now on",
    answers={200: p.ConsensusPolicy},
    body=p.ConsensusPolicyBody,
)
async def set_policy(c: Call) -> Answer | Response:
    return respond(await c.store.policies.set(c.tenant, c.ids["action"], c.body, c.key))


@endpoint(
    "DELETE",
    paths.CONSENSUS_POLICY,
    "Delete an action's consensus policy: requests made from now on get the default",
    answers={200: p.ConsensusPolicy},
)
async def delete_policy(c: Call) -> Answer | Response:
    return respond(await c.store.policies.delete(c.tenant, c.ids["action"], c.key))


# --- suppressions ------------------------------------------------------------

# Who may add a suppression: an agent (it read "unsubscribe me"), a gate key (the
# pipeline saw a bounce), an admin; only an admin replaces or lifts one.
SUPPRESSORS = frozenset({"admin", "gate", AGENT})


@endpoint(
    "PUT",
    paths.SUPPRESSION,
    "Suppress a contact, or a whole domain (@bigcorp.com): no agent may lease or email it",
    answers={201: p.Suppression, 200: p.Suppression},
    body=p.SuppressionBody,
    roles=SUPPRESSORS,
)
async def put_suppression(c: Call) -> Answer | Response:
    body: p.SuppressionBody = c.body
    found, created = await c.store.suppressions.put(c.tenant, c.ids["entry"], body.reason, body.note, c.principal)
    return respond(found, 201 if created else 200)


@endpoint(
    "POST",
    paths.SUPPRESSIONS,
    "Suppress many contacts or domains at once: a batch of a bulk import",
    answers={200: p.SuppressionImport},
    body=p.SuppressionImportBody,
    roles=SUPPRESSORS,
)
async def import_suppressions(c: Call) -> Answer | Response:
    return respond(await c.store.suppressions.load(c.tenant, c.body.suppressions, c.principal))


@endpoint(
    "GET",
    paths.SUPPRESSION,
    "Read the suppression of a contact or a domain",
    answers={200: p.Suppression},
    own_errors=("suppression_not_found",),
    roles=frozenset({"admin", "read", "gate", AGENT}),
)
async def get_suppression(c: Call) -> Answer | Response:
    return respond(await c.store.suppressions.get(c.tenant, c.ids["entry"]))


@endpoint(
    "GET",
    paths.SUPPRESSIONS,
    "List the tenant's suppressions, in the order of their entries",
    answers={200: p.SuppressionList},
    query=p.SuppressionListQuery,
    roles=frozenset({"admin", "read", "gate", AGENT}),
)
async def list_suppressions(c: Call) -> Answer | Response:
    q: p.SuppressionListQuery = c.query
    return respond(await c.store.suppressions.page(c.tenant, q.limit, q.cursor))


@endpoint(
    "DELETE",
    paths.SUPPRESSION,
    "Lift the suppression of a contact or a domain (an admin key only)",
    answers={200: p.Suppression},
    own_errors=("suppression_not_found",),
)
async def delete_suppression(c: Call) -> Answer | Response:
    return respond(await c.store.suppressions.remove(c.tenant, c.ids["entry"], c.key.id))


# --- quotas ------------------------------------------------------------------


def quotas_answer(tenant: str, quotas: Quotas) -> Answer:
    return respond(
        p.Quotas(
            tenant_id=tenant,
            agents=quotas.agents,
            leases_per_agent=quotas.leases_per_agent,
            pending_consensus=quotas.pending_consensus,
            streams=quotas.streams,
        )
    )


@endpoint("GET", paths.QUOTAS, "The tenant's quotas in force", answers={200: p.Quotas}, query=p.TenantQuery)
async def get_quotas(c: Call) -> Answer | Response:
    return quotas_answer(c.tenant, await c.store.quotas.get(c.tenant))


@endpoint(
    "PUT",
    paths.QUOTAS,
    "Set some of the tenant's quotas; those left out stay as they are",
    answers={200: p.Quotas},
    body=p.QuotasBody,
)
async def set_quotas(c: Call) -> Answer | Response:
    body: p.QuotasBody = c.body
    changes = {name: getattr(body, attr) for name, attr in Quotas.NAMES.items() if getattr(body, attr) is not None}
    return quotas_answer(c.tenant, await c.store.quotas.set(c.tenant, changes))


@endpoint(
    "DELETE",
    paths.QUOTAS,
    "Forget the tenant's own quotas: the deployment's defaults apply again",
    answers={200: p.Quotas},
    query=p.TenantQuery,
)
async def reset_quotas(c: Call) -> Answer | Response:
    return quotas_answer(c.tenant, await c.store.quotas.reset(c.tenant))


# The router's table. Starlette tries routes in order, so the calls agents make on
# every send and every beat come first (no two routes match the same request, so
# order changes nothing else).
HOT = ("heartbeat", "send_check", "acquire_lease", "vote", "get_consensus", "renew_lease", "register")
routes = [
    Route(e.path, e, methods=[e.method], name=e.name)
    for e in sorted(ENDPOINTS, key=lambda e: HOT.index(e.name) if e.name in HOT else len(HOT))
]
