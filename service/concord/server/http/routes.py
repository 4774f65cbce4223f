"""The endpoints: authenticate, decode, one store call, encode. Nothing else.

Each endpoint is declared once, with ``@endpoint(METHOD, PATH, ...)``: its body and
query structs, its answers and its error codes. That declaration is what runs
(``Endpoint.run``: the API key gives the tenant, at most 64 KiB of JSON is read,
body and query are decoded by prebuilt msgspec decoders, path ids are checked,
rate limits apply, and the handler's Redis work runs under the configured
deadline so a stalled Redis answers 503 rather than hanging), what app.py
routes, and what openapi.py describes, so the three cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from redis.exceptions import RedisError
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from concord.protocol import schemas as s
from concord.server.errors import ConcordError, agent_not_found, consensus_not_found, invalid, lease_not_found, problem
from concord.server.store import Store
from concord.server.store.feed import EVENT_TYPES, FAMILIES, STREAM_ID, EventFilter, Listener, event, id_key

log = logging.getLogger("concord")
T = TypeVar("T")

MAX_BODY_BYTES = 64 * 1024
_encode = msgspec.json.Encoder().encode
# An id of the wrong shape cannot exist: it gets the same 404 as an unknown one.
PATH_IDS = {
    "agentId": (re.compile(f"agent_{s.UUID}"), agent_not_found),
    "leaseId": (re.compile(f"lease_{s.UUID}"), lease_not_found),
    "consensusId": (re.compile(f"cons_{s.UUID}"), consensus_not_found),
}
# Error codes by what an endpoint does; each endpoint adds its own.
AUTH_ERRORS = ("unauthorized", "tenant_mismatch", "validation_error", "rate_limited")
BODY_ERRORS = ("malformed_json", "payload_too_large", "unsupported_media_type")
STORE_ERRORS = ("store_error", "store_unavailable", "internal_error")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# The request headers an endpoint reads (Call.headers holds these, lower-cased).
READ_HEADERS = frozenset({b"authorization", b"content-type", b"content-length", b"idempotency-key", b"last-event-id"})
_NO_QUERY = s.TenantQuery()


@dataclass(frozen=True, slots=True)
class Call:
    """One decoded request, as a handler receives it."""

    store: Store
    tenant: str
    body: Any
    query: Any
    ids: dict[str, str]
    headers: dict[str, str]  # the READ_HEADERS present, by lower-cased name
    deadline: float  # seconds the Redis work may take


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(eq=False)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Callable[[Call], Awaitable[Answer | Response]]
    answers: dict[int, Any]  # success status -> response type
    body: type[s.Input] | None = None
    query: type[s.Input] | None = s.TenantQuery
    own_errors: tuple[str, ...] = ()
    authenticated: bool = True
    request_headers: dict[str, str] = field(default_factory=dict)  # name -> what it does
    answer_headers: dict[str, str] = field(default_factory=dict)  # on success answers
    event_stream: bool = False  # also answers 200 as text/event-stream
    decoder: msgspec.json.Decoder | None = field(init=False)
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.decoder = msgspec.json.Decoder(self.body) if self.body is not None else None
        self.ids = tuple(re.findall(r"{(\w+)}", self.path))

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def errors(self) -> tuple[str, ...]:
        """Every problem code this endpoint can answer with."""
        if not self.authenticated:
            return self.own_errors
        path_errors = tuple(PATH_IDS[name][1]("x").code for name in self.ids)
        return AUTH_ERRORS + (BODY_ERRORS if self.body else ()) + path_errors + self.own_errors + STORE_ERRORS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The endpoint as a bare ASGI app under Starlette's router and exception
        handlers: no Request or Response object on the way, for the hot path.

        The Redis work runs under the deadline (CONCORD_REDIS_TIMEOUT_SECONDS), so a
        stalled Redis answers 503 in time; reading the body does not count."""
        state = scope["state"]
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in READ_HEADERS
        }
        store, deadlines = state["store"], state["deadlines"]
        if not self.authenticated:
            call = Call(store, "", None, None, {}, headers, deadlines.seconds)
        else:
            auth, authorization = state["auth"], headers.get("authorization")
            tenant = auth.known(authorization)
            if tenant is None:  # a key stored in Redis, not looked up in the last second
                tenant = await deadlines.run(auth.tenant(authorization))
            scope["concord.tenant"] = tenant  # for the access line (observe.py)
            query = _query(scope, self.query, tenant) if self.query else None
            body = None
            if self.decoder is not None:
                body = _check_tenant(_decode(self.decoder, await _read_body(headers, receive)), tenant)
            ids = {name: _path_id(scope, name) for name in self.ids}
            call = Call(store, tenant, body, query, ids, headers, deadlines.seconds)
            scope["concord.agent"] = _acting_agent(body) or getattr(query, "agent_id", None) or ids.get("agentId")
        answer = await deadlines.run(self._work(call, state["settings"].rate_limits))
        if isinstance(answer, Response):  # a problem, the OpenAPI document, or a wait (LongPoll, EventStream)
            await answer(scope, receive, send)
            return
        await _send(send, answer)

    async def _work(self, call: Call, limits: Any) -> Answer | Response:
        """The request's Redis work: its rate limits, then its handler."""
        if limits and call.tenant:
            await call.store.take_token(call.tenant, _acting_agent(call.body), limits)
        return await self.handler(call)


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str, path: str, summary: str, *, answers: dict[int, Any], **options: Any
) -> Callable[[Callable[[Call], Awaitable[Answer | Response]]], Endpoint]:
    """Declare the decorated handler as the endpoint ``method path``."""

    def declare(handler: Callable[[Call], Awaitable[Answer | Response]]) -> Endpoint:
        declared = Endpoint(method, path, summary, handler, answers, **options)
        ENDPOINTS.append(declared)
        return declared

    return declare


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    extra = tuple((name.lower().encode(), text.encode()) for name, text in (headers or {}).items())
    return Answer(status, _encode(value), extra)


V1 = "/v1/agent"
C = f"{V1}/coordination"

# --- operations (no API key) -------------------------------------------------


@endpoint("GET", "/healthz", "The process is alive", answers={200: s.Status}, query=None, authenticated=False)
async def healthz(c: Call) -> Answer | Response:
    return respond(s.Status(status="ok"))


@endpoint(
    "GET",
    "/readyz",
    "Redis answers",
    answers={200: s.Status},
    query=None,
    authenticated=False,
    own_errors=("store_unavailable",),
)
async def readyz(c: Call) -> Answer | Response:
    try:
        async with asyncio.timeout(c.deadline):
            await c.store.ping()
    except Exception as exc:  # any failure to answer means not ready
        return problem("store_unavailable", f"Redis does not answer: {type(exc).__name__}")
    return respond(s.Status(status="ready"))


@endpoint(
    "GET",
    "/openapi.json",
    "This API as OpenAPI 3.1",
    answers={200: dict[str, Any]},
    query=None,
    authenticated=False,
)
async def openapi(c: Call) -> Answer | Response:
    from concord.server.http.openapi import document  # it describes ENDPOINTS, so it is built after them

    return Response(document(), media_type="application/json")


# --- agents ------------------------------------------------------------------


@endpoint(
    "POST",
    f"{V1}/register",
    "Register an agent, or update the agent of that name",
    answers={201: s.Agent, 200: s.Agent},
    body=s.RegisterBody,
)
async def register(c: Call) -> Answer | Response:
    body: s.RegisterBody = c.body
    name = _one_of(body.agent_name, body.name, "agentName", "name")
    if name is None:
        raise invalid("Object missing required field `agentName` (or its alias `name`)", "$.agentName")
    role = _one_of(body.agent_role, body.role, "agentRole", "role")
    agent, created = await c.store.register(c.tenant, name, role, s.metadata_json(body.metadata))
    return respond(agent, 201 if created else 200)


@endpoint("GET", f"{V1}/agents", "List agents, newest first", answers={200: s.AgentList}, query=s.AgentListQuery)
async def list_agents(c: Call) -> Answer | Response:
    q: s.AgentListQuery = c.query
    return respond(await c.store.list_agents(c.tenant, q.status, q.limit, q.cursor))


@endpoint("GET", f"{V1}/agents/{{agentId}}", "Read an agent", answers={200: s.Agent})
async def get_agent(c: Call) -> Answer | Response:
    return respond(await c.store.get_agent(c.tenant, c.ids["agentId"]))


@endpoint(
    "DELETE", f"{V1}/agents/{{agentId}}", "Deregister an agent and release its leases", answers={200: s.AgentRemoved}
)
async def remove_agent(c: Call) -> Answer | Response:
    return respond(await c.store.remove_agent(c.tenant, c.ids["agentId"]))


@endpoint(
    "POST",
    f"{C}/heartbeat",
    "Record that an agent is alive",
    answers={200: s.Heartbeat},
    body=s.HeartbeatBody,
    own_errors=("agent_not_found",),
)
async def heartbeat(c: Call) -> Answer | Response:
    return respond(await c.store.heartbeat(c.tenant, c.body.agent_id))


# --- leases ------------------------------------------------------------------


@endpoint(
    "POST",
    f"{C}/lease",
    "Lease a contact: granted, extended for its holder, or refused",
    answers={201: s.Lease, 200: s.Lease},
    body=s.LeaseBody,
    own_errors=("agent_not_found", "agent_inactive", "lease_conflict"),
)
async def acquire_lease(c: Call) -> Answer | Response:
    body: s.LeaseBody = c.body
    contact = s.normalize_email(body.contact_email)
    lease, created = await c.store.acquire(c.tenant, body.agent_id, contact, body.intent, _lease_duration(body))
    return respond(lease, 201 if created else 200)


@endpoint(
    "POST",
    f"{C}/lease/{{leaseId}}/renew",
    "Move a lease's expiry; the fencing token stays",
    answers={200: s.Lease},
    body=s.RenewBody,
    own_errors=("not_lease_holder", "agent_inactive"),
)
async def renew_lease(c: Call) -> Answer | Response:
    return respond(await c.store.renew(c.tenant, c.ids["leaseId"], c.body.agent_id, _lease_duration(c.body)))


@endpoint(
    "DELETE",
    f"{C}/lease/{{leaseId}}",
    "Release a lease before it expires",
    answers={200: s.Released},
    query=s.ReleaseQuery,
    own_errors=("not_lease_holder",),
)
async def release_lease(c: Call) -> Answer | Response:
    return respond(await c.store.release(c.tenant, c.ids["leaseId"], c.query.agent_id))


@endpoint("GET", f"{C}/lease/{{leaseId}}", "Read a lease", answers={200: s.Lease})
async def get_lease(c: Call) -> Answer | Response:
    return respond(await c.store.get_lease(c.tenant, c.ids["leaseId"]))


@endpoint(
    "GET",
    f"{C}/leases",
    "List the leases of an agent and/or a contact, newest first",
    answers={200: s.LeaseList},
    query=s.LeaseListQuery,
)
async def list_leases(c: Call) -> Answer | Response:
    q: s.LeaseListQuery = c.query
    if q.agent_id is None and q.contact_email is None:
        raise invalid("Give `agentId` or `contactEmail` (or both)", "$.agentId")
    contact = s.normalize_email(q.contact_email) if q.contact_email is not None else None
    return respond(await c.store.list_leases(c.tenant, q.agent_id, contact, q.limit, q.cursor))


@endpoint(
    "POST",
    f"{C}/send-check",
    "May this agent email this contact now?",
    answers={200: s.SendCheck},
    body=s.SendCheckBody,
)
async def send_check(c: Call) -> Answer | Response:
    body: s.SendCheckBody = c.body
    contact = s.normalize_email(body.contact_email)
    return respond(await c.store.send_check(c.tenant, body.agent_id, contact, body.fencing_token))


# --- consensus ---------------------------------------------------------------


@endpoint(
    "POST",
    f"{C}/consensus",
    "Ask the active peers to approve an action",
    answers={201: s.Consensus},
    body=s.ConsensusBody,
    own_errors=("agent_not_found", "agent_inactive", "idempotency_key_reused"),
    request_headers={
        "Idempotency-Key": "1-255 printable ASCII characters. The same key with the same request within 24 hours "
        "answers the first answer again; with another request it is 422 idempotency_key_reused."
    },
    answer_headers={"Idempotent-Replayed": "`true` when this answer replays the first one for its Idempotency-Key"},
)
async def request_consensus(c: Call) -> Answer | Response:
    body: s.ConsensusBody = c.body
    idempotency_key = c.headers.get("idempotency-key")
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise invalid("Expected an Idempotency-Key of 1-255 printable ASCII characters", "header Idempotency-Key")
    contact = s.normalize_email(body.contact_email) if body.contact_email is not None else None
    timeout = s.duration_ms(
        body.timeout_minutes, body.timeout_seconds, s.DEFAULT_CONSENSUS_TIMEOUT_MS, ("timeoutMinutes", "timeoutSeconds")
    )
    consensus, replayed = await c.store.request_consensus(
        c.tenant, body.requesting_agent_id, body.action, contact, body.reason, timeout, idempotency_key
    )
    return respond(consensus, 201, {"Idempotent-Replayed": "true"} if replayed else None)


@endpoint(
    "POST",
    f"{C}/consensus/{{consensusId}}/vote",
    "Vote on a consensus request",
    answers={200: s.Consensus},
    body=s.VoteBody,
    own_errors=("agent_not_found", "requester_cannot_vote", "already_voted", "consensus_closed", "agent_inactive"),
)
async def vote(c: Call) -> Answer | Response:
    body: s.VoteBody = c.body
    return respond(await c.store.vote(c.tenant, c.ids["consensusId"], body.agent_id, body.vote, body.reason))


@endpoint(
    "GET",
    f"{C}/consensus/{{consensusId}}",
    "Read a consensus request; with waitSeconds, wait for its decision",
    answers={200: s.Consensus},
    query=s.ConsensusReadQuery,
)
async def get_consensus(c: Call) -> Answer | Response:
    consensus = await c.store.get_consensus(c.tenant, c.ids["consensusId"])
    if consensus.status != "pending" or not c.query.wait_seconds:
        return respond(consensus)
    return LongPoll(c, consensus.id, c.query.wait_seconds)


@endpoint(
    "GET",
    f"{C}/consensus",
    "List consensus requests, newest first",
    answers={200: s.ConsensusList},
    query=s.ConsensusListQuery,
)
async def list_consensus(c: Call) -> Answer | Response:
    q: s.ConsensusListQuery = c.query
    return respond(await c.store.list_consensus(c.tenant, q.status, q.limit, q.cursor))


# --- events ------------------------------------------------------------------


@endpoint(
    "GET",
    f"{C}/events",
    "The tenant's events: a live Server-Sent Event stream, or with after/limit a JSON page",
    answers={200: s.EventPage},
    query=s.EventsQuery,
    event_stream=True,
    request_headers={
        "Last-Event-ID": "The stream resumes after this event id (`0`: from the oldest event kept). Without it, "
        "the stream starts with the next event. Ignored by a JSON page."
    },
)
async def events(c: Call) -> Answer | Response:
    q: s.EventsQuery = c.query
    match = EventFilter(
        _event_types(q.type),
        q.agent_id,
        s.normalize_email(q.contact_email, "$.contactEmail") if q.contact_email is not None else None,
    )
    start = c.headers.get("last-event-id")
    if start is not None:
        start = _stream_id(start.strip(), "header Last-Event-ID")
    if q.after is not None or q.limit is not None:
        after = _stream_id(q.after or "0", "$.after")
        return respond(await c.store.events(c.tenant, after, q.limit or 100, match))
    return EventStream(c, start if start is not None else await c.store.last_event_id(c.tenant), match)


# A stream sends a comment this often when there is no event, so proxies and
# clients can tell a quiet stream from a dead one.
KEEPALIVE_SECONDS = 15.0
# A waiting consensus read reads again this often even without an event: agents
# lapsing (no event) can decide a request too.
REREAD_SECONDS = 5.0


class LongPoll(Response):
    """GET consensus?waitSeconds=N on a pending request: the answer waits until the
    request's status leaves pending (woken by its events, read again every
    REREAD_SECONDS) or N seconds pass. Each Redis read keeps the request deadline;
    the wait itself does not count against it."""

    def __init__(self, call: Call, consensus_id: str, wait: int) -> None:
        self.call, self.consensus_id, self.wait = call, consensus_id, wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        consensus = await _until_disconnected(receive, self._decided())
        if consensus is not None:
            await _send(send, respond(consensus))

    async def _decided(self) -> s.Consensus:
        c, loop = self.call, asyncio.get_running_loop()
        end = loop.time() + self.wait

        async def read() -> s.Consensus:
            async with asyncio.timeout(c.deadline):
                return await c.store.get_consensus(c.tenant, self.consensus_id)

        async with c.store.feed.listen(c.tenant, c.deadline) as listener:
            consensus = await read()  # after listening: a decision from now on wakes us
            while consensus.status == "pending" and (left := end - loop.time()) > 0:
                entry = await listener.get(min(left, REREAD_SECONDS))
                if listener.lost:
                    listener.resume()
                elif entry is not None and self.consensus_id not in entry[1]:
                    continue  # another request's event, or another kind of event
                consensus = await read()
        return consensus


class EventStream(Response):
    """Server-Sent Events: the stream's entries after ``start`` that ``match`` keeps,
    then each new one as it is written. Every event carries its stream id as
    ``id:``, so a client that reconnects with Last-Event-ID misses nothing the
    stream (capped at CONCORD_EVENTS_MAX_LENGTH) still holds."""

    def __init__(self, call: Call, start: str, match: EventFilter) -> None:
        self.call, self.start, self.match = call, start, match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        c = self.call
        async with c.store.feed.listen(c.tenant, c.deadline) as listener:  # Redis down: 503 before any byte
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
            try:
                await _until_disconnected(receive, self._stream(listener, send))
            except (RedisError, OSError, TimeoutError) as exc:  # the client reconnects with Last-Event-ID
                log.warning("Event stream of tenant %s ended: %r", c.tenant, exc)
            except asyncio.CancelledError:
                # The server is shutting down: uvicorn cancels what outlives its graceful
                # shutdown. A stream never ends by itself, so this is its normal end: the
                # client reconnects (to another instance) with Last-Event-ID.
                pass
            await send({"type": "http.response.body", "body": b""})

    async def _stream(self, listener: Listener, send: Send) -> None:
        c, last = self.call, self.start
        while True:
            while True:  # the stream itself, from where this reader is, until it is caught up
                async with asyncio.timeout(c.deadline):
                    batch = await c.store.events_after(c.tenant, last, 500)
                for e in batch:
                    await self._send(send, e)
                if batch:
                    last = batch[-1].id
                if len(batch) < 500:
                    break
            while not listener.lost:
                if listener.closed:
                    return  # the feed stopped: the client reconnects to a new one
                entry = await listener.get(KEEPALIVE_SECONDS)
                if entry is None:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
                elif id_key(entry[0]) > id_key(last):
                    await self._send(send, event(c.tenant, *entry))
                    last = entry[0]
            listener.resume()

    async def _send(self, send: Send, e: s.Event) -> None:
        if self.match(e):
            frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (e.id.encode(), e.type.encode(), _encode(e))
            await send({"type": "http.response.body", "body": frame, "more_body": True})


# --- helpers -----------------------------------------------------------------


async def _send(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer.body)).encode()),
                *answer.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


async def _until_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None if the client disconnects first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result() if not task.cancelled() else None


def _event_types(raw: str | None) -> frozenset[str]:
    types = frozenset(filter(None, (part.strip() for part in (raw or "").split(","))))
    unknown = sorted(types - set(EVENT_TYPES) - FAMILIES)
    if unknown:
        raise invalid(
            f"Unknown event type {unknown[0]!r}; expected one of {', '.join(EVENT_TYPES)} or a family "
            f"({', '.join(sorted(FAMILIES))})",
            "$.type",
        )
    return types


def _stream_id(raw: str, where: str) -> str:
    if not STREAM_ID.fullmatch(raw) or any(int(part) >= 2**64 for part in raw.split("-")):
        raise invalid("Expected an event id such as 1764000000000-0 (or 0 for the start)", where)
    return raw


async def _read_body(headers: dict[str, str], receive: Receive) -> bytes:
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ConcordError(
            "unsupported_media_type", f"Expected Content-Type: application/json, got {media_type or 'none'!r}"
        )
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _decode(decoder: msgspec.json.Decoder, raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _validation(exc) from None
    except msgspec.DecodeError as exc:
        raise ConcordError("malformed_json", f"{exc}") from None
    except UnicodeDecodeError:
        raise ConcordError("malformed_json", "The body is not valid UTF-8") from None
    except RecursionError:
        raise ConcordError("malformed_json", "The body is nested too deeply") from None


def _query(scope: Scope, kind: type[s.Input], tenant: str) -> Any:
    """Decode the query string: strings convert to the declared types, unknown names
    are a 422, and a POST's query may carry tenantId and nothing else."""
    if not scope["query_string"] and kind is s.TenantQuery:
        return _NO_QUERY  # the common case of a POST: nothing to decode
    try:
        q = msgspec.convert(dict(QueryParams(scope["query_string"])), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise _validation(exc) from None
    return _check_tenant(q, tenant)


def _check_tenant(value: Any, tenant: str) -> Any:
    if value.tenant_id is not None and value.tenant_id != tenant:
        raise ConcordError("tenant_mismatch", f"tenantId {value.tenant_id!r} is not the tenant of this API key")
    return value


def _acting_agent(body: Any) -> str | None:
    """The agent a request acts for, for its rate limit: agentId, or requestingAgentId."""
    return getattr(body, "agent_id", None) or getattr(body, "requesting_agent_id", None)


_AT = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `([^`]*)`")
_QUOTED = re.compile(r"(`|')([^`']{80})[^`']+\1")


def _validation(exc: msgspec.ValidationError) -> ConcordError:
    """Keep msgspec's message, which names the path (``- at `$.durationMinutes```),
    and give the path as ``field`` too; for an unknown or missing field, the path
    ends with that field's name."""
    # msgspec quotes the offending name or value; a refusal must not echo 60 KB of it.
    message = _QUOTED.sub(lambda m: f"{m[1]}{m[2]}…{m[1]}", str(exc))
    at = _AT.search(message)
    field_path = at.group(1) if at else "$"
    named = _NAMED_FIELD.search(message)
    if named:
        field_path = f"{field_path}.{named.group(1)}"
    return invalid(message[: at.start()] if at else message, field_path)


def _too_large() -> ConcordError:
    return ConcordError("payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes")


def _one_of(value: str | None, alias: str | None, name: str, alias_name: str) -> str | None:
    if value is not None and alias is not None:
        raise invalid(f"Give `{name}` or its alias `{alias_name}`, not both", f"$.{alias_name}")
    return value if value is not None else alias


def _lease_duration(body: s.LeaseBody | s.RenewBody) -> int:
    return s.duration_ms(
        body.duration_minutes, body.duration_seconds, s.DEFAULT_LEASE_MS, ("durationMinutes", "durationSeconds")
    )


def _path_id(scope: Scope, name: str) -> str:
    value = scope["path_params"][name]
    pattern, not_found = PATH_IDS[name]
    if not pattern.fullmatch(value):
        raise not_found(value[:80])
    return value
