"""Reading and decoding a request, and saying in words what was wrong with it.

Bodies and query strings are decoded by msgspec with the Structs of
protocol.requests, which normalize themselves as they are decoded. What msgspec
refuses is answered with the rule of the field in words (its type's
description, its bounds, its allowed values): a user never sees a regex, and
never a library's message. An id that cannot name anything is answered as the
404 of an unknown id.
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from concord import protocol as p
from concord.server.errors import NOT_FOUND, ConcordError, invalid, shown

MAX_BODY_BYTES = 64 * 1024
_NO_QUERY = p.TenantQuery()
_check_json = msgspec.json.Decoder(msgspec.Raw).decode
# An id in the path, by parameter name: its kind (protocol.normalize.ID_PATTERNS).
PATH_IDS = {"agentId": "agent", "leaseId": "lease", "consensusId": "consensus"}
# Path parameters that are names, not ids: a value off its type's rule is 422.
PATH_NAMES = {"action": p.Action, "entry": p.SuppressionEntry}
# Path names normalized once their type is checked (FieldError: 422 naming the parameter).
PATH_NORMALIZE = {"entry": p.suppression_entry}
# How a value of the wrong type is named in a refusal ("got a string").
_GOT = {
    "str": "a string",
    "int": "a number",
    "float": "a decimal number",
    "bool": "true or false",
    "null": "null",
    "array": "an array",
    "object": "an object",
}


async def read_body(headers: dict[str, str], receive: Receive) -> bytes:
    """The body, at most MAX_BODY_BYTES of JSON."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ConcordError(
            "unsupported_media_type",
            f"Send the body as JSON with Content-Type: application/json (got {media_type or 'no Content-Type'})",
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


def decode_body(decoder: msgspec.json.Decoder, raw: bytes, tenant: str) -> Any:
    """The body as its Struct, normalized, of the key's tenant."""
    try:
        return check_tenant(decoder.decode(raw), tenant)
    except msgspec.ValidationError as exc:
        _malformed(raw)  # msgspec validates as it parses: a body cut short may fail on a field first
        raise _refusal(exc, decoder.type, "") from None
    except msgspec.DecodeError as exc:
        raise _malformed_json(str(exc)) from None
    except (p.FieldError, p.UnknownId) as exc:
        _malformed(raw)  # a Struct is checked once whole, perhaps before trailing garbage is seen
        raise _answer(exc, tenant, "") from None
    except UnicodeDecodeError:
        raise _malformed_json("it is not valid UTF-8") from None
    except RecursionError:
        raise _malformed_json("it is nested too deeply") from None


def decode_query(scope: Scope, kind: type[p.Input], tenant: str) -> Any:
    """The query string as its Struct: strings convert to the declared types,
    unknown names are refused, and a POST's query may carry tenantId and nothing else."""
    if not scope["query_string"] and kind is p.TenantQuery:
        return _NO_QUERY  # the common case of a POST: nothing to decode
    try:
        return check_tenant(msgspec.convert(dict(QueryParams(scope["query_string"])), kind, strict=False), tenant)
    except msgspec.ValidationError as exc:
        raise _refusal(exc, kind, "query parameter ") from None
    except (p.FieldError, p.UnknownId) as exc:
        raise _answer(exc, tenant, "query parameter ") from None


def check_tenant(value: Any, tenant: str) -> Any:
    if value.tenant_id is not None and value.tenant_id != tenant:
        raise ConcordError(
            "tenant_mismatch",
            f"tenantId {value.tenant_id!r} is not the tenant of this API key, which is {tenant!r}: "
            f"leave tenantId out, or use an API key of tenant {value.tenant_id!r}",
        )
    return value


def path_id(scope: Scope, name: str, tenant: str) -> str:
    """The path parameter ``name``, an id of its kind; one of another shape names
    nothing, so it gets the same 404 as an unknown one."""
    value = scope["path_params"][name]
    if name in PATH_NAMES:
        kind_of_name = PATH_NAMES[name]
        try:
            value = msgspec.convert(value, kind_of_name)
            normalize = PATH_NORMALIZE.get(name)
            return normalize(value, f"path {name}") if normalize else value
        except (msgspec.ValidationError, p.FieldError):
            rule = get_args(kind_of_name)[1].description
            raise invalid(f"path parameter {name}", rule, f"path {name}") from None
    kind = PATH_IDS[name]
    try:
        return p.check_id(kind, value)
    except p.UnknownId:
        raise NOT_FOUND[kind](shown(value), tenant) from None


def _answer(exc: p.FieldError | p.UnknownId, tenant: str, where: str) -> ConcordError:
    if isinstance(exc, p.UnknownId):
        return NOT_FOUND[exc.kind](shown(exc.value), tenant)
    return invalid(where + exc.field.removeprefix("$."), exc.rule, exc.field)


def _refusal(exc: msgspec.ValidationError, kind: Any, where: str) -> ConcordError:
    """msgspec's refusal of a value of ``kind``, said with the field's rule in words.

    msgspec names the path (``- at `$.limit```) and, for an unknown or a missing
    field, the field (``unknown field `x```): that, and the kind's own field
    types, are all that is read from its message."""
    message = str(exc)
    path = message.rpartition(" - at `")[2].rstrip("`") if " - at `" in message else "$"
    fields = _fields(kind)
    if message.startswith("Object contains unknown field `"):
        name = message.split("`")[1]
        name = name if len(name) <= 80 else f"{name[:80]}…"  # a refusal never echoes kilobytes back
        field = f"$.{name}"
        listed = ", ".join(fields)
        if where:
            return invalid(f"{where}{name}", f"unknown parameter; this endpoint takes {listed}", field)
        return invalid(name, f"unknown field; the fields of this request are {listed}", field)
    if message.startswith("Object missing required field `"):
        name = message.split("`")[1]
        info = fields.get(name)
        return invalid(f"{where}{name}", "required: " + (_rule(info) if info else "see the API reference"), f"$.{name}")
    name = path.removeprefix("$.")
    base, item, _ = name.partition("[")
    info = fields.get(base)
    if item and isinstance(info, msgspec.inspect.ListType):  # one item of a list: the items' rule
        info = info.item_type
    if path == "$" or info is None:
        rule, name = f"a JSON object with the fields {', '.join(fields)}", "body"
    else:
        rule, name = _rule(info), where + name
    got = message.partition(", got `")[2].partition("`")[0]
    if got in _GOT:
        rule += f", got {_GOT[got]}"
    return invalid(name, rule, path)


@cache
def _fields(kind: Any) -> dict[str, Any]:
    """The wire name -> type info of each field of a Struct type."""
    return {f.encode_name: f.type for f in msgspec.inspect.type_info(kind).fields}


def _rule(info: Any) -> str:
    """A field's rule in words, from its type as msgspec.inspect describes it."""
    i = msgspec.inspect
    if isinstance(info, i.UnionType):
        types = [t for t in info.types if not isinstance(t, i.NoneType)]
        return " or ".join(_rule(t) for t in types) if types else "null"
    if isinstance(info, i.Metadata):
        description = (info.extra_json_schema or {}).get("description")
        return description or _rule(info.type)
    if isinstance(info, i.LiteralType):
        return "one of " + ", ".join(str(v) for v in info.values)
    if isinstance(info, i.IntType):
        low, high = info.ge, info.le
        if low is not None and high is not None:
            return f"a whole number from {low} to {high}"
        return "a whole number"
    if isinstance(info, i.StrType):
        return f"a string of at most {info.max_length} characters" if info.max_length else "a string"
    if isinstance(info, i.BoolType):
        return "true or false"
    if isinstance(info, i.DictType):
        return "a JSON object"
    return "a JSON value"


def _malformed(raw: bytes) -> None:
    """Raise malformed_json if ``raw`` is not JSON at all: that is the problem to
    report first, whatever field msgspec met on its way. (Decoded as Raw, the JSON
    is checked for its syntax only: no number is too large, no string is kept.)"""
    try:
        _check_json(raw)
    except msgspec.DecodeError as exc:
        raise _malformed_json(str(exc)) from None
    except UnicodeDecodeError:
        raise _malformed_json("it is not valid UTF-8") from None
    except RecursionError:
        pass  # too deep to check here: msgspec refused it at a field first, which is what to say


def _malformed_json(why: str) -> ConcordError:
    why = why[0].lower() + why[1:] if why else "it is not JSON"
    return ConcordError("malformed_json", f"The body is not valid JSON ({why}): send one JSON object")


def _too_large() -> ConcordError:
    return ConcordError("payload_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes; send at most that")
