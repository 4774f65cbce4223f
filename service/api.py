"""The endpoints: authenticate, decode, one store call, encode. Nothing else.

``@endpoint(Body)`` does the shared part of every /v1 route: the API key gives
the tenant, the body is read (at most 64 KiB, JSON only) and decoded by one
prebuilt msgspec Decoder, and the Redis work runs under the configured deadline
so a stalled Redis answers 503 rather than hanging.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from . import schemas as s
from .errors import ConcordError, agent_not_found, consensus_not_found, invalid, lease_not_found, problem
from .store import Store

MAX_BODY_BYTES = 64 * 1024
_encode = msgspec.json.Encoder().encode
# An id of the wrong shape cannot exist: it gets the same 404 as an unknown one.
_PATH_IDS = {
    "agentId": (re.compile(f"agent_{s.UUID}"), agent_not_found),
    "leaseId": (re.compile(f"lease_{s.UUID}"), lease_not_found),
    "consensusId": (re.compile(f"cons_{s.UUID}"), consensus_not_found),
}
B = TypeVar("B", bound=s.Input)


def respond(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status_code=status, media_type="application/json")


def endpoint(body: type[s.Input] | None = None) -> Callable[[Callable[..., Awaitable[Response]]], Callable]:
    """Wrap a handler ``(request, store, tenant[, body]) -> Response``."""
    decoder = msgspec.json.Decoder(body) if body is not None else None

    def wrap(handler: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            state = request.state
            deadline = state.settings.redis_timeout_seconds
            async with asyncio.timeout(deadline):
                tenant = await state.auth.tenant(request.headers.get("authorization"))
            args: list[Any] = [request, state.store, tenant]
            if decoder is not None:
                _query(request, s.TenantQuery, tenant)  # a POST may carry tenantId, and nothing else, there
                args.append(_check_tenant(_decode(decoder, await _read_body(request)), tenant))
            async with asyncio.timeout(deadline):
                return await handler(*args)

        return run

    return wrap


# --- agents ------------------------------------------------------------------


@endpoint(s.RegisterBody)
async def register(request: Request, store: Store, tenant: str, body: s.RegisterBody) -> Response:
    name = _one_of(body.agent_name, body.name, "agentName", "name")
    if name is None:
        raise invalid("Object missing required field `agentName` (or its alias `name`)", "$.agentName")
    role = _one_of(body.agent_role, body.role, "agentRole", "role")
    agent, created = await store.register(tenant, name, role, s.metadata_json(body.metadata))
    return respond(agent, 201 if created else 200)


@endpoint()
async def list_agents(request: Request, store: Store, tenant: str) -> Response:
    q = _query(request, s.AgentListQuery, tenant)
    return respond(await store.list_agents(tenant, q.status, q.limit, q.cursor))


@endpoint()
async def get_agent(request: Request, store: Store, tenant: str) -> Response:
    _query(request, s.TenantQuery, tenant)
    return respond(await store.get_agent(tenant, _path_id(request, "agentId")))


@endpoint()
async def remove_agent(request: Request, store: Store, tenant: str) -> Response:
    _query(request, s.TenantQuery, tenant)
    return respond(await store.remove_agent(tenant, _path_id(request, "agentId")))


@endpoint(s.HeartbeatBody)
async def heartbeat(request: Request, store: Store, tenant: str, body: s.HeartbeatBody) -> Response:
    return respond(await store.heartbeat(tenant, body.agent_id))


# --- leases ------------------------------------------------------------------


@endpoint(s.LeaseBody)
async def acquire_lease(request: Request, store: Store, tenant: str, body: s.LeaseBody) -> Response:
    contact = s.normalize_email(body.contact_email)
    duration = _lease_duration(body)
    lease, created = await store.acquire(tenant, body.agent_id, contact, body.intent, duration)
    return respond(lease, 201 if created else 200)


@endpoint(s.RenewBody)
async def renew_lease(request: Request, store: Store, tenant: str, body: s.RenewBody) -> Response:
    lease_id = _path_id(request, "leaseId")
    return respond(await store.renew(tenant, lease_id, body.agent_id, _lease_duration(body)))


@endpoint()
async def release_lease(request: Request, store: Store, tenant: str) -> Response:
    q = _query(request, s.ReleaseQuery, tenant)
    return respond(await store.release(tenant, _path_id(request, "leaseId"), q.agent_id))


@endpoint()
async def get_lease(request: Request, store: Store, tenant: str) -> Response:
    _query(request, s.TenantQuery, tenant)
    return respond(await store.get_lease(tenant, _path_id(request, "leaseId")))


@endpoint()
async def list_leases(request: Request, store: Store, tenant: str) -> Response:
    q = _query(request, s.LeaseListQuery, tenant)
    if q.agent_id is None and q.contact_email is None:
        raise invalid("Give `agentId` or `contactEmail` (or both)", "$.agentId")
    contact = s.normalize_email(q.contact_email) if q.contact_email is not None else None
    return respond(await store.list_leases(tenant, q.agent_id, contact, q.limit, q.cursor))


@endpoint(s.SendCheckBody)
async def send_check(request: Request, store: Store, tenant: str, body: s.SendCheckBody) -> Response:
    contact = s.normalize_email(body.contact_email)
    return respond(await store.send_check(tenant, body.agent_id, contact, body.fencing_token))


# --- consensus ---------------------------------------------------------------


@endpoint(s.ConsensusBody)
async def request_consensus(request: Request, store: Store, tenant: str, body: s.ConsensusBody) -> Response:
    contact = s.normalize_email(body.contact_email) if body.contact_email is not None else None
    timeout = s.duration_ms(
        body.timeout_minutes, body.timeout_seconds, s.DEFAULT_CONSENSUS_TIMEOUT_MS, ("timeoutMinutes", "timeoutSeconds")
    )
    consensus = await store.request_consensus(
        tenant, body.requesting_agent_id, body.action, contact, body.reason, timeout
    )
    return respond(consensus, 201)


@endpoint(s.VoteBody)
async def vote(request: Request, store: Store, tenant: str, body: s.VoteBody) -> Response:
    consensus_id = _path_id(request, "consensusId")
    return respond(await store.vote(tenant, consensus_id, body.agent_id, body.vote, body.reason))


@endpoint()
async def get_consensus(request: Request, store: Store, tenant: str) -> Response:
    _query(request, s.TenantQuery, tenant)
    return respond(await store.get_consensus(tenant, _path_id(request, "consensusId")))


@endpoint()
async def list_consensus(request: Request, store: Store, tenant: str) -> Response:
    q = _query(request, s.ConsensusListQuery, tenant)
    return respond(await store.list_consensus(tenant, q.status, q.limit, q.cursor))


# --- operations (no API key) -------------------------------------------------


async def healthz(request: Request) -> Response:
    return respond({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.state
    try:
        async with asyncio.timeout(state.settings.redis_timeout_seconds):
            await state.store.ping()
    except Exception as exc:  # any failure to answer means not ready
        return problem("store_unavailable", f"Redis does not answer: {type(exc).__name__}")
    return respond({"status": "ready"})


# --- helpers -----------------------------------------------------------------


async def _read_body(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ConcordError(
            "unsupported_media_type", f"Expected Content-Type: application/json, got {media_type or 'none'!r}"
        )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
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


def _query(request: Request, kind: type[B], tenant: str) -> B:
    """Decode the query string: strings convert to the declared types, unknown names are 422."""
    try:
        q = msgspec.convert(dict(request.query_params), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise _validation(exc) from None
    return _check_tenant(q, tenant)


def _check_tenant(value: B, tenant: str) -> B:
    if value.tenant_id is not None and value.tenant_id != tenant:
        raise ConcordError("tenant_mismatch", f"tenantId {value.tenant_id!r} is not the tenant of this API key")
    return value


_AT = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `([^`]*)`")


def _validation(exc: msgspec.ValidationError) -> ConcordError:
    """Keep msgspec's message, which names the path (``- at `$.durationMinutes```),
    and give the path as ``field`` too; for an unknown or missing field, the path
    ends with that field's name."""
    message = str(exc)
    at = _AT.search(message)
    field = at.group(1) if at else "$"
    named = _NAMED_FIELD.search(message)
    if named:
        field = f"{field}.{named.group(1)}"
    return invalid(message[: at.start()] if at else message, field)


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


def _path_id(request: Request, name: str) -> str:
    value = request.path_params[name]
    pattern, not_found = _PATH_IDS[name]
    if not pattern.fullmatch(value):
        raise not_found(value[:80])
    return value
