"""`concord agents|lease|consensus ...`: the HTTP API from a shell, and `concord
inspect`: what Redis holds for a tenant, a contact, an agent or a consensus request.

The contract scripts rely on (docs/cli.md documents it):

- stdout carries exactly one JSON document on success: the API's answer as the
  API sends it (or, for `inspect`, the keys read). Compact on one line when stdout
  is a pipe or a file, indented when it is a terminal.
- stderr carries exactly one problem JSON document on failure: the API's own
  problem, or one made here (code ``unreachable``, ``not_configured``,
  ``invalid_argument``, ``redis_error``) in the same shape.
- Exit status: 0 done; 1 the API (or Redis) answered an error, or did not answer;
  2 a usage error (argparse's own, or a missing/malformed setting); 3 `lease check`
  answered "not allowed" (its JSON is still on stdout).

The API commands go through the sync SDK client (service.client.Concord), which
reads CONCORD_URL and CONCORD_API_KEY; `inspect` reads Redis directly with the
service's own settings (CONCORD_REDIS_URL, CONCORD_KEY_PREFIX) and builds every
key name with service.keys.Keys. Heavy imports happen inside the commands, so
`concord serve` pays nothing for them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
# How many of the newest entries `inspect` shows of the tenant's event stream.
STREAM_TAIL = 5
CONSENSUS_STATUSES = ("pending", "approved", "rejected", "expired")

TOP_EXAMPLES = """
  export CONCORD_URL=http://127.0.0.1:8080 CONCORD_API_KEY=ck_...
  concord agents register sdr-agent --role sdr
  concord lease acquire --agent agent_46cd... --contact alice@example.com --duration 600
  concord lease check --agent agent_46cd... --contact alice@example.com && send-the-email
  concord consensus request --agent agent_46cd... --action send_pricing_override
  CONCORD_REDIS_URL=redis://localhost:6379 concord inspect --tenant acme --contact alice@example.com

Every command prints one JSON document on stdout; errors are problem JSON on stderr.
Exit status: 0 done, 1 error answer or service unreachable, 2 usage, 3 `lease check` refused.
"""


# --- output ----------------------------------------------------------------------


def _emit(document: Any) -> None:
    """Write one JSON document (a msgspec Struct or plain data) and a newline to stdout."""
    import msgspec

    data = msgspec.json.encode(document)
    if sys.stdout.isatty():
        data = msgspec.json.format(data, indent=2)
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def _fail(problem: dict[str, Any], status: int = EXIT_ERROR) -> int:
    """Write one problem JSON document to stderr; return the exit status."""
    sys.stderr.write(json.dumps(problem, ensure_ascii=False, separators=(",", ":")) + "\n")
    return status


def _problem(code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem made by the command itself, in the API's shape (RFC 9457). It has no
    ``status``: no HTTP answer stands behind it."""
    return {"type": f"urn:concord:problem:{code}", "title": title, "detail": detail, "code": code, **extra}


def _unreachable(what: str, url: str, error: object) -> int:
    return _fail(_problem("unreachable", f"{what} is unreachable", f"No answer from {what} at {url}: {error}", url=url))


def _redact(url: str) -> str:
    """``url`` without its password, so a problem can name the URL safely."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))


# --- argument types (a bad value is argparse's usage error, exit 2) ----------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object such as \'{{"team": "emea"}}\', got {text!r}')
    return value


def _contact(text: str) -> str:
    """The contact as keys carry it (trimmed, lower-cased: protocol.normalize_email)."""
    from concord.protocol import FieldError, normalize_email

    try:
        return normalize_email(text)
    except FieldError:
        raise argparse.ArgumentTypeError(f"expected an email address (local@domain.tld, ASCII), got {text!r}") from None


def _agent_id(text: str) -> str:
    if not re.fullmatch(r"agent_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"expected an agent id (agent_<uuid>), got {text!r}")
    return text


# --- the parsers -------------------------------------------------------------------


def add_commands(root: argparse.ArgumentParser, commands: argparse._SubParsersAction) -> None:
    """Add `agents`, `lease`, `consensus` and `inspect` to the `concord` parser. Each
    leaf sets ``run`` (inspect) or ``call`` (an SDK call) for run_command."""
    root.epilog = (root.epilog or "") + TOP_EXAMPLES

    def group(name: str, help: str, examples: str) -> argparse._SubParsersAction:
        parser = commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=_examples(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def leaf(
        parent: argparse._SubParsersAction,
        name: str,
        help: str,
        examples: str,
        call: Callable[..., Any],
        exit_status: Callable[[Any], int] | None = None,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=_examples(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(call=call, exit_status=exit_status or (lambda _: EXIT_OK))
        return parser

    # agents
    agents = group(
        "agents",
        "register agents, send heartbeats, list, show and remove agents",
        """
        concord agents register sdr-agent --role sdr --metadata '{"team": "emea"}'
        concord agents heartbeat agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord agents list --status active
        concord agents show agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
    )
    p = leaf(
        agents,
        "register",
        "register an agent (again: update it); prints the agent",
        """
        concord agents register sdr-agent --role sdr
        AGENT=$(concord agents register sdr-agent | jq -r .id)""",
        lambda c, a: c.register(a.name, role=a.role, metadata=a.metadata).info,
    )
    p.add_argument("name", metavar="NAME", help="agent name: 1-128 of A-Z a-z 0-9 . _ - (the name is its identity)")
    p.add_argument("--role", help='agent role (a new agent gets "general"; omitted keeps the current one)')
    p.add_argument("--metadata", type=_json_object, metavar="JSON", help="a JSON object of at most 4 KiB")
    p = leaf(
        agents,
        "heartbeat",
        "record a heartbeat: the agent stays active for the heartbeat window",
        """
        concord agents heartbeat agent_46cd8872-c53e-5977-9394-138a578fb9ee
        while sleep 60; do concord agents heartbeat "$AGENT" >/dev/null; done""",
        lambda c, a: c.heartbeat(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    p = leaf(
        agents,
        "list",
        "list agents, newest registration first",
        """
        concord agents list --status inactive --limit 20
        concord agents list --cursor "$(concord agents list --limit 20 | jq -r .nextCursor)\"""",
        lambda c, a: c.list_agents(status=a.status, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--status", choices=("active", "inactive"))
    _page_options(p)
    p = leaf(
        agents,
        "show",
        "show one agent",
        """
        concord agents show agent_46cd8872-c53e-5977-9394-138a578fb9ee | jq -r .status""",
        lambda c, a: c.get_agent(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")
    p = leaf(
        agents,
        "remove",
        "deregister an agent and release its leases",
        """
        concord agents remove agent_46cd8872-c53e-5977-9394-138a578fb9ee""",
        lambda c, a: c.remove_agent(a.agent_id),
    )
    p.add_argument("agent_id", metavar="AGENT_ID")

    # leases
    lease = group(
        "lease",
        "acquire, renew, release, list and check contact leases",
        """
        LEASE=$(concord lease acquire --agent "$AGENT" --contact alice@example.com | jq -r .id)
        concord lease check --agent "$AGENT" --contact alice@example.com && send-the-email
        concord lease renew "$LEASE" --agent "$AGENT" --duration 600
        concord lease release "$LEASE" --agent "$AGENT\"""",
    )
    p = leaf(
        lease,
        "acquire",
        "take the exclusive lease on a contact (the holder asking again extends it)",
        """
        concord lease acquire --agent "$AGENT" --contact alice@example.com --duration 600 --intent outbound_sales""",
        lambda c, a: c.acquire_lease(a.agent, a.contact, duration=a.duration, intent=a.intent),
    )
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the agent that takes the lease")
    p.add_argument("--contact", required=True, metavar="EMAIL", help="the contact (trimmed, lower-cased)")
    p.add_argument("--duration", type=_positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p.add_argument("--intent", metavar="TEXT", help="why, 1-64 characters (shown to agents that conflict)")
    p = leaf(
        lease,
        "renew",
        "move a lease's expiry to now + duration; its fencing token stays",
        """
        concord lease renew "$LEASE" --agent "$AGENT" --duration 600""",
        lambda c, a: c.renew_lease(a.lease_id, a.agent, duration=a.duration),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the holder")
    p.add_argument("--duration", type=_positive, metavar="SECONDS", help="1-86400 (default 1800)")
    p = leaf(
        lease,
        "release",
        "release a lease: the contact is free again",
        """
        concord lease release "$LEASE" --agent "$AGENT"     # only if $AGENT holds it
        concord lease release "$LEASE"                      # whoever holds it""",
        lambda c, a: c.release_lease(a.lease_id, agent_id=a.agent),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p.add_argument("--agent", metavar="AGENT_ID", help="release only if this agent holds the lease")
    p = leaf(
        lease,
        "show",
        "show one live lease",
        """
        concord lease show "$LEASE" | jq .expiresAt""",
        lambda c, a: c.get_lease(a.lease_id),
    )
    p.add_argument("lease_id", metavar="LEASE_ID")
    p = leaf(
        lease,
        "list",
        "list live leases of an agent and/or a contact, newest grant first",
        """
        concord lease list --agent "$AGENT"
        concord lease list --contact alice@example.com""",
        lambda c, a: c.list_leases(agent_id=a.agent, contact=a.contact, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--agent", metavar="AGENT_ID")
    p.add_argument("--contact", metavar="EMAIL")
    _page_options(p)
    p = leaf(
        lease,
        "check",
        "send-check: may this agent email this contact now? exit 0 yes, 3 no",
        """
        concord lease check --agent "$AGENT" --contact alice@example.com --fencing-token "$TOKEN" && send-the-email
        concord lease check --agent "$AGENT" --contact alice@example.com || echo "refused: exit $?\"""",
        lambda c, a: c.send_check(a.agent, a.contact, fencing_token=a.fencing_token),
        exit_status=lambda answer: EXIT_OK if answer.allowed else EXIT_REFUSED,
    )
    p.add_argument("--agent", required=True, metavar="AGENT_ID")
    p.add_argument("--contact", required=True, metavar="EMAIL")
    p.add_argument("--fencing-token", type=_positive, metavar="N", help="also refuse unless N is the current token")

    # consensus
    consensus = group(
        "consensus",
        "ask peers to vote on an action: request, vote, show, list, wait",
        """
        CONS=$(concord consensus request --agent "$SDR" --action send_pricing_override | jq -r .id)
        concord consensus vote "$CONS" --agent "$RET" approve --reason Qualified
        concord consensus wait "$CONS" --timeout 300 | jq -e '.status == "approved"' && send-the-offer""",
    )
    p = leaf(
        consensus,
        "request",
        "ask the tenant's active agents to vote on an action",
        """
        concord consensus request --agent "$SDR" --action send_pricing_override \\
            --contact cto@bigcorp.com --reason "Custom pricing asked" --timeout 3600 --idempotency-key job-42""",
        lambda c, a: (
            c.request_consensus(
                a.agent,
                a.action,
                contact=a.contact,
                reason=a.reason,
                timeout=a.timeout,
                idempotency_key=a.idempotency_key,
            ).info
        ),
    )
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the requesting agent")
    p.add_argument("--action", required=True, help="what is to be decided, 1-128 characters")
    p.add_argument("--contact", metavar="EMAIL")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--timeout", type=_positive, metavar="SECONDS", help="voting time, up to 7 days (default 3600)")
    p.add_argument("--idempotency-key", metavar="K", help="the same key again answers the first request")
    p = leaf(
        consensus,
        "vote",
        "cast an agent's vote (the same vote again changes nothing)",
        """
        concord consensus vote "$CONS" --agent "$RET" approve
        concord consensus vote "$CONS" --agent "$SUP" reject --reason "Too early\"""",
        lambda c, a: c.vote(a.consensus_id, a.agent, a.vote, reason=a.reason),
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p.add_argument("vote", choices=("approve", "reject"))
    p.add_argument("--agent", required=True, metavar="AGENT_ID", help="the voter")
    p.add_argument("--reason", metavar="TEXT")
    p = leaf(
        consensus,
        "show",
        "show a consensus request with its tally and votes",
        """
        concord consensus show "$CONS" | jq .tally""",
        lambda c, a: c.get_consensus(a.consensus_id),
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p = leaf(
        consensus,
        "list",
        "list consensus requests, newest first",
        """
        concord consensus list --status pending""",
        lambda c, a: c.list_consensus(status=a.status, limit=a.limit, cursor=a.cursor),
    )
    p.add_argument("--status", choices=CONSENSUS_STATUSES)
    _page_options(p)
    p = leaf(
        consensus,
        "wait",
        "wait until a request is decided (or the timeout passes); prints it",
        """
        concord consensus wait "$CONS" --timeout 300 | jq -r .status     # pending if undecided by then""",
        lambda c, a: c.wait_consensus(a.consensus_id, a.timeout),
    )
    p.add_argument("consensus_id", metavar="CONSENSUS_ID")
    p.add_argument("--timeout", type=_positive, default=60, metavar="SECONDS", help="default 60")

    # inspect
    p = commands.add_parser(
        "inspect",
        help="show what Redis holds for a tenant, a contact, an agent or a consensus request",
        description="Read the keys of one tenant straight from Redis (CONCORD_REDIS_URL, CONCORD_KEY_PREFIX)\n"
        "and print each key's name, type, TTL in ms (null: none) and contents.\n"
        "It only reads, and never scans: every key name comes from the key schema (service/keys.py).",
        epilog=_examples("""
        export CONCORD_REDIS_URL=redis://localhost:6379/0
        concord inspect --tenant acme                              # overview: sizes, fence, event stream
        concord inspect --tenant acme --contact alice@example.com  # the lease and its holder
        concord inspect --tenant acme --agent agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord inspect --tenant acme --consensus cons_0f3e...     # the request, its votes, its lists"""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=_inspect)
    p.add_argument("--tenant", required=True, help="tenant id")
    selector = p.add_mutually_exclusive_group()
    selector.add_argument("--contact", type=_contact, metavar="EMAIL", help="the contact's lease and its holder")
    selector.add_argument("--agent", type=_agent_id, metavar="AGENT_ID", help="the agent, its heartbeat and leases")
    selector.add_argument("--consensus", metavar="CONSENSUS_ID", help="the request, its votes and lists")


def _examples(text: str) -> str:
    lines = [line.strip() for line in text.strip("\n").splitlines()]
    return "examples:\n" + "\n".join(f"  {line}" if not line.startswith("--") else f"      {line}" for line in lines)


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_positive, metavar="N", help="page size, 1-1000 (default 100)")
    parser.add_argument("--cursor", metavar="C", help="the nextCursor of the previous page")


# --- running a command ---------------------------------------------------------------


def is_ours(args: argparse.Namespace) -> bool:
    return hasattr(args, "call") or hasattr(args, "run")


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command of this module; return its exit status."""
    if hasattr(args, "run"):
        return args.run(args)
    url = os.environ.get("CONCORD_URL") or DEFAULT_URL
    if not _is_http_url(url):
        return _fail(
            _problem(
                "not_configured",
                "CONCORD_URL is malformed",
                f"CONCORD_URL={url!r}: expected http://host[:port] or https://host[:port]",
            ),
            EXIT_USAGE,
        )
    if not os.environ.get("CONCORD_API_KEY"):
        return _fail(
            _problem(
                "not_configured",
                "No API key",
                "Set CONCORD_API_KEY to an API key of the tenant "
                f"(the service at {url} answers every /v1 request with 401 without one)",
            ),
            EXIT_USAGE,
        )
    from concord.client import sync as sdk

    try:
        with sdk.Concord(url=url, api_key=os.environ["CONCORD_API_KEY"]) as concord:
            answer = args.call(concord, args)
    except sdk.Unreachable as exc:  # after the SDK's retries
        return _unreachable("Concord", _redact(url), exc.__cause__ or exc)
    except sdk.ConcordError as exc:
        return _fail(exc.problem)
    except KeyboardInterrupt:  # Ctrl-C, typically during `consensus wait`: no traceback
        return 130
    _emit(answer)
    return args.exit_status(answer)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a malformed one
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# --- inspect ---------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    import redis

    from concord.server.settings import TENANT_RE, ConfigError, Settings
    from concord.server.store.keys import Keys

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _fail(_problem("not_configured", "A setting is malformed", str(exc)), EXIT_USAGE)
    if settings.redis_url is None:
        return _fail(
            _problem(
                "not_configured",
                "No Redis to inspect",
                "`concord inspect` reads Redis directly: set CONCORD_REDIS_URL (and CONCORD_KEY_PREFIX "
                "if the service uses one) as the service has them",
            ),
            EXIT_USAGE,
        )
    if not TENANT_RE.fullmatch(args.tenant):
        return _fail(
            _problem(
                "invalid_argument", "Invalid tenant", f"--tenant {args.tenant!r}: expected 1-64 of A-Z a-z 0-9 _ -"
            ),
            EXIT_USAGE,
        )
    url = _redact(settings.redis_url)
    try:
        client = redis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
    except ValueError as exc:  # a URL that passed the scheme check but not redis-py's parser
        return _fail(
            _problem("not_configured", "CONCORD_REDIS_URL is malformed", f"CONCORD_REDIS_URL={url!r}: {exc}"),
            EXIT_USAGE,
        )
    try:
        view = Inspector(client, Keys(settings.key_prefix), args.tenant, settings.heartbeat_window_seconds * 1000)
        if args.contact is not None:
            report = view.contact(args.contact)
        elif args.agent is not None:
            report = view.agent(args.agent)
        elif args.consensus is not None:
            report = view.consensus(args.consensus)
        else:
            report = view.overview()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return _unreachable("Redis", url, exc)
    except redis.RedisError as exc:
        return _fail(_problem("redis_error", "Redis refused a read", f"Redis at {url}: {exc}", url=url))
    finally:
        client.close()
    _emit(report)
    return EXIT_OK


class Inspector:
    """Read-only views of one tenant's keys, named by Keys as the service names them.

    Each view answers ``{tenant, prefix, redisTimeMs, keys: [entry...]}``; an entry is
    ``{key, type, ttlMs}`` (type as Redis's TYPE says, "none" for a missing key;
    ttlMs null when the key has no expiry or does not exist) plus what was read:
    ``value`` (a whole hash, string or stream), ``member``/``score`` (one member of a
    zset, score null when absent) or ``size`` (a zset's cardinality). Only TYPE,
    PTTL, TIME and reads of the type found are sent, so a key of an unexpected type
    is reported as such rather than failing the whole view."""

    def __init__(self, redis: Any, keys: Any, tenant: str, window_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.tenant = tenant
        self.window_ms = window_ms
        seconds, micros = redis.time()
        self.now_ms = seconds * 1000 + micros // 1000

    def _report(self, view: str, entries: list[dict[str, Any]], **selector: str) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "prefix": self.keys.prefix,
            "view": view,
            **selector,
            "redisTimeMs": self.now_ms,
            "keys": entries,
        }

    def _head(self, key: str) -> dict[str, Any]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.type(key)
        pipe.pttl(key)
        kind, ttl = pipe.execute()
        return {"key": key, "type": kind, "ttlMs": ttl if ttl >= 0 else None}

    def value(self, key: str) -> dict[str, Any]:
        """The whole key: a hash's fields, a string, a stream's length and newest entries."""
        entry = self._head(key)
        kind = entry["type"]
        if kind == "hash":
            entry["value"] = self.redis.hgetall(key)
        elif kind == "string":
            entry["value"] = self.redis.get(key)
        elif kind == "stream":
            newest = self.redis.xrevrange(key, count=STREAM_TAIL)
            entry["value"] = {
                "length": self.redis.xlen(key),
                "newest": [{"id": entry_id, "fields": fields} for entry_id, fields in newest],
            }
        else:
            entry["value"] = None
        return entry

    def member(self, key: str, member: str) -> dict[str, Any]:
        """One member's score in a zset (null when it is not there)."""
        entry = self._head(key)
        score = self.redis.zscore(key, member) if entry["type"] == "zset" else None
        return {**entry, "member": member, "score": _number(score)}

    def size(self, key: str) -> dict[str, Any]:
        entry = self._head(key)
        return {**entry, "size": self.redis.zcard(key) if entry["type"] == "zset" else 0}

    def heartbeat(self, agent_id: str) -> dict[str, Any]:
        """The agent's heartbeat score, and whether it is within the window (as lib.lua's is_active)."""
        entry = self.member(self.keys.heartbeats(self.tenant), agent_id)
        entry["active"] = entry["score"] is not None and entry["score"] > self.now_ms - self.window_ms
        return entry

    # --- views ---

    def contact(self, contact: str) -> dict[str, Any]:
        """The contact's lease key and, if leased, its holder's agent hash, heartbeat and lease registry."""
        from concord.server.store.keys import agent_tag

        lease = self.value(self.keys.lease(self.tenant, contact))
        entries = [lease]
        if lease["type"] == "string" and lease["value"]:
            holder = "agent_" + lease["value"].split("|", 1)[0]
            entries += [
                self.value(self.keys.agent(self.tenant, holder)),
                self.heartbeat(holder),
                self.value(self.keys.lease_registry(self.tenant, agent_tag(holder))),
            ]
        return self._report("contact", entries, contact=contact)

    def agent(self, agent_id: str) -> dict[str, Any]:
        """The agent hash, its heartbeat and registration scores, its lease registry and
        the lease key of every contact the registry names (newest token first)."""
        from concord.server.store.keys import agent_tag

        registry = self.value(self.keys.lease_registry(self.tenant, agent_tag(agent_id)))
        entries = [
            self.value(self.keys.agent(self.tenant, agent_id)),
            self.heartbeat(agent_id),
            self.member(self.keys.agents(self.tenant), agent_id),
            registry,
        ]
        if registry["type"] == "hash":
            by_token = sorted(registry["value"].items(), key=lambda item: int(item[0]), reverse=True)
            contacts = dict.fromkeys(entry.partition(":")[2] for _, entry in by_token)
            entries += [self.value(self.keys.lease(self.tenant, contact)) for contact in contacts]
        entries.append(self.value(self.keys.rate_bucket(self.tenant, agent_id)))
        return self._report("agent", entries, agent=agent_id)

    def consensus(self, consensus_id: str) -> dict[str, Any]:
        """The request hash, its votes hash, and its score in every consensus list and the due set."""
        entries = [
            self.value(self.keys.consensus(self.tenant, consensus_id)),
            self.value(self.keys.votes(self.tenant, consensus_id)),
            *(
                self.member(self.keys.consensus_list(self.tenant, status), consensus_id)
                for status in ("all", *CONSENSUS_STATUSES)
            ),
            self.member(self.keys.consensus_due(self.tenant), consensus_id),
        ]
        return self._report("consensus", entries, consensus=consensus_id)

    def overview(self) -> dict[str, Any]:
        """Sizes of the tenant's zsets (with how many heartbeats are within the window),
        the fence, the tenant's rate bucket and, where the schema has it, the event stream."""
        heartbeats = self.size(self.keys.heartbeats(self.tenant))
        if heartbeats["type"] == "zset":
            # Active: last > now - window, as lib.lua's is_active counts them.
            heartbeats["active"] = self.redis.zcount(heartbeats["key"], f"({self.now_ms - self.window_ms}", "+inf")
        else:
            heartbeats["active"] = 0
        entries = [
            heartbeats,
            self.size(self.keys.agents(self.tenant)),
            self.value(self.keys.fence(self.tenant)),
            *(self.size(self.keys.consensus_list(self.tenant, status)) for status in ("all", *CONSENSUS_STATUSES)),
            self.size(self.keys.consensus_due(self.tenant)),
            self.value(self.keys.rate_bucket(self.tenant)),
        ]
        events = getattr(self.keys, "events", None)  # the event stream, once the key schema has one
        if events is not None:
            entries.append(self.value(events(self.tenant)))
        return self._report("overview", entries)


def _number(score: float | None) -> int | float | None:
    """A zset score as an int when it is whole (they are ms or µs here)."""
    return int(score) if score is not None and score.is_integer() else score
