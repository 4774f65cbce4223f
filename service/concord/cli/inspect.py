"""`concord inspect`: what Redis holds for a tenant, a contact, an agent or a
consensus request.

It reads Redis directly with the service's own settings (CONCORD_REDIS_URL,
CONCORD_KEY_PREFIX) and builds every key name with the service's key schema
(concord.server.store.keys.Keys). It imports the server only when it runs, so
`concord --help` and the client commands never pay for redis-py.
"""

from __future__ import annotations

import argparse
from typing import Any

from concord.cli.common import (
    CONSENSUS_STATUSES,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    agent_id,
    contact,
    emit,
    examples,
    fail,
    problem,
    redact,
    redis_settings,
    unreachable,
)

# How many of the newest entries `inspect` shows of the tenant's event stream.
STREAM_TAIL = 5


def add_parser(commands: Commands) -> None:
    p = commands.add_parser(
        "inspect",
        help="show what Redis holds for a tenant, a contact, an agent or a consensus request",
        description="Read the keys of one tenant straight from Redis (CONCORD_REDIS_URL, CONCORD_KEY_PREFIX)\n"
        "and print each key's name, type, TTL in ms (null: none) and contents.\n"
        "It only reads, and never scans: every key name comes from the key schema (concord/server/store/keys.py).\n"
        "Needs the server: pip install 'concord[server]'.",
        epilog=examples("""
        export CONCORD_REDIS_URL=redis://localhost:6379/0
        concord inspect --tenant acme                              # overview: sizes, fence, event stream
        concord inspect --tenant acme --contact alice@example.com  # the lease and its holder
        concord inspect --tenant acme --agent agent_46cd8872-c53e-5977-9394-138a578fb9ee
        concord inspect --tenant acme --consensus cons_0f3e...     # the request, its votes, its lists"""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)
    p.add_argument("--tenant", required=True, help="tenant id")
    selector = p.add_mutually_exclusive_group()
    selector.add_argument("--contact", type=contact, metavar="EMAIL", help="the contact's lease and its holder")
    selector.add_argument("--agent", type=agent_id, metavar="AGENT_ID", help="the agent, its heartbeat and leases")
    selector.add_argument("--consensus", metavar="CONSENSUS_ID", help="the request, its votes and lists")


def run(args: argparse.Namespace) -> int:
    settings = redis_settings(
        "inspect",
        "`concord inspect` reads Redis directly: set CONCORD_REDIS_URL (and CONCORD_KEY_PREFIX "
        "if the service uses one) as the service has them",
        args.tenant,
    )
    if isinstance(settings, int):
        return settings
    import redis

    from concord.server.store.keys import Keys

    url = redact(settings.redis_url)
    try:
        client = redis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
    except ValueError as exc:  # a URL that passed the scheme check but not redis-py's parser
        return fail(
            problem("not_configured", "CONCORD_REDIS_URL is malformed", f"CONCORD_REDIS_URL={url!r}: {exc}"),
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
        return unreachable("Redis", url, exc)
    except redis.RedisError as exc:
        return fail(problem("redis_error", "Redis refused a read", f"Redis at {url}: {exc}", url=url))
    finally:
        client.close()
    emit(report)
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
