"""The endpoint machinery: what every request goes through before and after its
handler.

Each endpoint is declared once, in routes.py, with ``@endpoint(METHOD, PATH,
...)``: its body and query Structs, its answers and its error codes. That
declaration is what runs (``Endpoint.__call__``: the credential gives the
principal and its tenant, and its role must be one the endpoint admits; at most
64 KiB of JSON is read, body and query are decoded by prebuilt msgspec decoders,
path ids are checked, an agent credential acts only as its own agent, rate
limits apply (the principal's in process as soon as it is known, http/throttle.py;
the shared ones in Redis with the handler's work), and the handler's Redis work
runs under the configured deadline so a stalled Redis answers 503 rather than
hanging), what the router routes, and what openapi.py describes, so the three
cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from concord import protocol as p
from concord.server.errors import ConcordError, agent_mismatch
from concord.server.http.decoding import PATH_IDS, decode_body, decode_query, path_id, read_body
from concord.server.http.dispatch import ANSWERING
from concord.server.principals import AGENT, HUMAN, MAY, MEMBERS, KeyGrant, Principal

if TYPE_CHECKING:
    from concord.server.store import Store

_encode = msgspec.json.Encoder().encode
# Error codes by what an endpoint does; each endpoint adds its own.
AUTH_ERRORS = ("unauthorized", "insufficient_scope", "tenant_mismatch", "validation_error", "rate_limited")
ACTING_ERRORS = ("agent_mismatch",)  # an endpoint that acts as an agent
BODY_ERRORS = ("malformed_json", "payload_too_large", "unsupported_media_type")
STORE_ERRORS = ("store_error", "store_unavailable", "internal_error")
# A body or query field naming an agent: an id of another shape answers its 404.
AGENT_FIELDS = frozenset({"agentId", "requestingAgentId"})
NOT_FOUND_CODES = {"agent": "agent_not_found", "lease": "lease_not_found", "consensus": "consensus_not_found"}
# The request headers an endpoint reads (Call.headers holds these, lower-cased).
READ_HEADERS = frozenset({b"authorization", b"content-type", b"content-length", b"idempotency-key", b"last-event-id"})


@dataclass(frozen=True, slots=True)
class Call:
    """One decoded request, as a handler receives it."""

    store: Store
    tenant: str
    principal: Principal | None  # None on the endpoints that take no credential
    body: Any
    query: Any
    ids: dict[str, str]
    headers: dict[str, str]  # the READ_HEADERS present, by lower-cased name
    deadline: float  # seconds the Redis work may take

    @property
    def credential(self) -> str:
        """What the handler's script is passed as the caller's credential: the digest
        of an agent credential, or '' for an API key (its role is checked already)."""
        return self.principal.credential if self.principal is not None else ""

    @property
    def key(self) -> KeyGrant:
        """The caller's API key, on an endpoint that admits no agent credential."""
        assert isinstance(self.principal, KeyGrant), "this endpoint admits API keys only"
        return self.principal


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[[Call], Awaitable[Answer | Response]]


@dataclass(eq=False)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    answers: dict[int, Any]  # success status -> response type
    body: type[p.Input] | None = None
    query: type[p.Input] | None = p.TenantQuery
    own_errors: tuple[str, ...] = ()
    authenticated: bool = True
    request_headers: dict[str, str] = field(default_factory=dict)  # name -> what it does
    answer_headers: dict[str, str] = field(default_factory=dict)  # on success answers
    event_stream: bool = False  # also answers 200 as text/event-stream
    # The roles that may call it (principals.py: the key roles, "agent" for an
    # agent credential and "human" for a human member's); by default a GET is
    # admin's, read's and the members', and everything else admin's alone.
    roles: frozenset[str] = frozenset()
    # The body or query field naming the agent the call acts as ("agent_id",
    # "requesting_agent_id"). With an agent credential it is filled in when left
    # out and must be the credential's own agent, and the handler's script checks
    # the credential. An endpoint without it checks an agent credential itself
    # (Authenticator.prove) before its handler runs, unless it ``proves`` it in its
    # own script (a read that passes the member and its credential's digest).
    acts_as: str | None = None
    proves: bool = False
    decoder: msgspec.json.Decoder | None = field(init=False)
    ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.decoder = msgspec.json.Decoder(self.body) if self.body is not None else None
        self.ids = tuple(re.findall(r"{(\w+)}", self.path))
        if not self.roles:
            self.roles = frozenset({"admin", "read", AGENT, HUMAN} if self.method == "GET" else {"admin"})

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def errors(self) -> tuple[str, ...]:
        """Every problem code this endpoint can answer with."""
        if not self.authenticated:
            return self.own_errors
        found = [NOT_FOUND_CODES[PATH_IDS[name]] for name in self.ids if name in PATH_IDS]
        for kind in (self.body, self.query):
            names = {f.encode_name for f in msgspec.structs.fields(kind)} if kind is not None else set()
            if names & AGENT_FIELDS:
                found.append("agent_not_found")
        if self.acts_as is not None:
            found.append("agent_mismatch")
        own = tuple(dict.fromkeys(c for c in (*found, *self.own_errors)))
        return AUTH_ERRORS + (BODY_ERRORS if self.body else ()) + own + STORE_ERRORS

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
            call = Call(store, "", None, None, None, {}, headers, deadlines.seconds)
            answer = await deadlines.run(self._work(call, {}))
        else:
            auth, client = state["auth"], scope.get("client")
            address = client[0] if client else ""
            try:
                call = await self._authenticated(scope, receive, headers, auth, address)
                answer = await deadlines.run(self._work(call, state["throttle"].shared))
            except ConcordError as error:
                if error.code == "unauthorized":  # a credential refused: the address's budget (auth.py)
                    auth.refused(address)
                raise
            if auth.failing and call.credential:
                auth.accepted(address, call.principal)
        scope[ANSWERING] = True  # an exception from now on cannot be answered (dispatch.py)
        if isinstance(answer, Response):  # a problem, the OpenAPI document, or a wait (LongPoll, EventStream)
            await answer(scope, receive, send)
            return
        await send_answer(send, answer)

    async def _authenticated(
        self, scope: Scope, receive: Receive, headers: dict[str, str], auth: Any, address: str
    ) -> Call:
        """The call of an authenticated request: its principal, which must be of a role
        the endpoint admits, its decoded body, query and ids, and, with an agent
        credential, the agent it acts as (its own). A credential that would cost Redis
        work is first admitted by the address's failure budget (auth.py); the principal
        then takes a token from its bucket in this process (throttle.py), before the
        body is read or any Redis work of the request is done."""
        state = scope["state"]
        deadlines, authorization = state["deadlines"], headers.get("authorization")
        principal = auth.known(authorization)
        member = principal is not None and principal.role in MEMBERS
        if principal is None:  # a key stored in Redis, not looked up in the last second
            auth.admit(address, None, authorization)
            principal = await deadlines.run(auth.grant(authorization))
        elif member and auth.failing:
            auth.admit(address, principal)
        tenant = principal.tenant
        scope["concord.tenant"], scope["concord.principal"] = tenant, principal  # for the access line
        state["throttle"].take(principal)
        if principal.role not in self.roles:
            raise insufficient_scope(principal, self.method, self.path)
        query = decode_query(scope, self.query, tenant) if self.query else None
        body = None
        if self.decoder is not None:
            body = decode_body(self.decoder, await read_body(headers, receive), tenant)
        ids = {name: path_id(scope, name, tenant) for name in self.ids} if self.ids else {}
        if member and self.acts_as is not None:
            # The agent the request acts as, for the access line: set before act_as,
            # so a refused impersonation is logged with the agent it tried to act as.
            request = body if self.body is not None else query
            scope["concord.agent"] = getattr(request, self.acts_as) or principal.id
            act_as(principal, request, self.acts_as)
        else:
            scope["concord.agent"] = acting_agent(body) or getattr(query, "agent_id", None) or ids.get("agentId")
            if member and not self.proves:
                await deadlines.run(auth.prove(principal))
        return Call(state["store"], tenant, principal, body, query, ids, headers, deadlines.seconds)

    async def _work(self, call: Call, limits: Any) -> Answer | Response:
        """The request's Redis work: its shared rate limits (CONCORD_RATE_LIMITS tenant
        and agent; none, no call), then its handler."""
        if limits and call.principal is not None:
            await call.store.limits.take_token(call.principal, limits)
        return await self.handler(call)


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str, path: str, summary: str, *, answers: dict[int, Any], **options: Any
) -> Callable[[Handler], Endpoint]:
    """Declare the decorated handler as the endpoint ``method path``."""

    def declare(handler: Handler) -> Endpoint:
        declared = Endpoint(method, path, summary, handler, answers, **options)
        ENDPOINTS.append(declared)
        return declared

    return declare


def respond(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    extra = tuple((name.lower().encode(), text.encode()) for name, text in (headers or {}).items())
    return Answer(status, _encode(value), extra)


async def send_answer(send: Send, answer: Answer) -> None:
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


def acting_agent(body: Any) -> str | None:
    """The agent a request acts for, for its rate limit: agentId, or requestingAgentId."""
    return getattr(body, "agent_id", None) or getattr(body, "requesting_agent_id", None)


def act_as(principal: Principal, request: Any, name: str) -> None:
    """An agent credential acts as its own agent: the request's agent field is
    filled in when left out, and refused (agent_mismatch) when it names another."""
    claimed = getattr(request, name)
    if claimed is None:
        setattr(request, name, principal.id)
    elif claimed != principal.id:
        raise agent_mismatch(claimed, principal.id)


def insufficient_scope(principal: Principal, method: str, path: str) -> ConcordError:
    return ConcordError(
        "insufficient_scope",
        f"{principal.describe()[0].upper()}{principal.describe()[1:]} may not call {method} {path}: "
        f"{MAY[principal.role]}. Use a credential of a role that may (docs/api.md, Roles)",
        keyRole=principal.role,
    )
