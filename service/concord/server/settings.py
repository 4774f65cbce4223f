"""Settings, read once from the environment (every variable is CONCORD_*).

docs/configuration.md documents each of them; keep the two in step.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from concord.server.principals import KEY_ROLES, KeyGrant

TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The prefix starts every key; braces would break the Cluster hash tag that follows it.
PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
ACCESS_LOG_FORMATS = ("json", "text", "off")


class ConfigError(ValueError):
    """A CONCORD_* variable is malformed; the message names it and what was expected."""


def key_digest(api_key: str) -> str:
    """SHA-256 hex of an API key: the only form in which keys are kept."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``per_second`` tokens flow in, at most ``burst`` are kept."""

    per_second: float
    burst: int


# In process, on each instance, at no Redis round trip (http/throttle.py): "principal"
# is a bucket per agent credential (by its digest), "key" one per API key (by its id).
LOCAL_SCOPES = ("principal", "key")
# In Redis, shared by every instance, at one round trip (store/limits.py).
SHARED_SCOPES = ("tenant", "agent")
RATE_SCOPES = LOCAL_SCOPES + SHARED_SCOPES
# What CONCORD_RATE_LIMITS unset gives, and keeps for the in-process scopes it leaves
# out: well above what an honest agent or pipeline does (docs/configuration.md, Rate limits).
DEFAULT_RATE_LIMITS = {"principal": RateLimit(100.0, 200), "key": RateLimit(2000.0, 4000)}
# Bounds COUNT and BURST, so a bucket's refill time (BURST / rate) stays a sane TTL.
RATE_MAX = 1_000_000
QUOTA_MAX = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Quotas:
    """What one tenant may hold at once (docs/configuration.md, Quotas): the
    deployment's defaults (CONCORD_QUOTAS), which an admin may change per tenant."""

    agents: int = 10_000  # registered agents
    leases_per_agent: int = 1_000  # live leases of one agent
    pending_consensus: int = 1_000  # consensus requests pending and not yet past their deadline
    streams: int = 100  # event streams and long polls open at once, on each instance

    # The API's name of each quota -> its attribute.
    NAMES = {
        "agents": "agents",
        "leasesPerAgent": "leases_per_agent",
        "pendingConsensus": "pending_consensus",
        "streams": "streams",
    }


_RATE = re.compile(r"(?P<scope>\w+)=(?:(?P<off>off)|(?P<count>\d+)/(?P<unit>[smh])(?::(?P<burst>\d+))?)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    # CONCORD_REDIS_URL names one node of a Redis Cluster (redis-py's cluster client).
    redis_cluster: bool = False
    # SHA-256 of each configured API key -> what it grants (principals.py).
    api_keys: Mapping[str, KeyGrant] = field(default_factory=dict)
    key_prefix: str = "concord"
    heartbeat_window_seconds: int = 300
    # Deadline for one request's Redis work; past it the request answers 503.
    redis_timeout_seconds: float = 2.0
    # Connections to Redis per worker process; requests beyond wait for one.
    redis_max_connections: int = 100
    log_level: str = "info"
    # scope (RATE_SCOPES) -> its limit; no entry, no limit.
    rate_limits: Mapping[str, RateLimit] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    # One line per request on stdout: "json", "text" or "off" (docs/observability.md).
    access_log: str = "json"
    # Where each worker leaves its metrics snapshot for /metrics to sum; None: this
    # process reports its own counters only. `concord serve` makes one per run.
    metrics_dir: str | None = None
    # Each tenant's event stream is trimmed to about this many entries; 0 writes none.
    events_max_length: int = 10_000
    # A state change is answered only once this many replicas hold it (WAIT); 0: at once.
    min_replicas: int = 0
    # Each tenant's quotas unless an admin set its own.
    quotas: Quotas = Quotas()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        prefix = env.get("CONCORD_KEY_PREFIX", "concord")
        if not PREFIX_RE.fullmatch(prefix):
            raise ConfigError(f"CONCORD_KEY_PREFIX={prefix!r}: expected 1-64 of A-Z a-z 0-9 _ . : - (no braces)")
        log_level = env.get("CONCORD_LOG_LEVEL", "info").lower()
        if log_level not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"CONCORD_LOG_LEVEL={log_level!r}: expected debug, info, warning or error")
        redis_url = env.get("CONCORD_REDIS_URL") or None
        if redis_url is not None and not redis_url.startswith(REDIS_SCHEMES):
            raise ConfigError(
                f"CONCORD_REDIS_URL={redis_url!r}: expected redis://host:port[/db], rediss://... or unix://..."
            )
        # Unset, the access log follows the log level, as uvicorn's did: lines at
        # info, none at warning and above.
        raw_access_log = env.get("CONCORD_ACCESS_LOG") or ("json" if log_level in {"debug", "info"} else "off")
        access_log = raw_access_log.lower()
        if access_log not in ACCESS_LOG_FORMATS:
            raise ConfigError(f"CONCORD_ACCESS_LOG={raw_access_log!r}: expected json, text or off")
        metrics_dir = env.get("CONCORD_METRICS_DIR") or None
        if metrics_dir is not None and not os.path.isdir(metrics_dir):
            raise ConfigError(f"CONCORD_METRICS_DIR={metrics_dir!r}: expected an existing directory")
        cluster = env.get("CONCORD_REDIS_CLUSTER", "false").lower()
        if cluster not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"CONCORD_REDIS_CLUSTER={cluster!r}: expected true or false")
        redis_cluster = cluster in ("true", "1", "yes")
        if redis_cluster and (redis_url is None or redis_url.startswith("unix://")):
            raise ConfigError("CONCORD_REDIS_CLUSTER=true needs CONCORD_REDIS_URL=redis://host:port of a cluster node")
        min_replicas = _number(env, "CONCORD_MIN_REPLICAS", 0, int, 0, 100)
        if min_replicas and redis_url is None:
            raise ConfigError("CONCORD_MIN_REPLICAS needs CONCORD_REDIS_URL: the embedded store has no replicas")
        return cls(
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            api_keys=parse_api_keys(env.get("CONCORD_API_KEYS", "")),
            key_prefix=prefix,
            heartbeat_window_seconds=_number(env, "CONCORD_HEARTBEAT_WINDOW_SECONDS", 300, int, 1, 86_400),
            redis_timeout_seconds=_number(env, "CONCORD_REDIS_TIMEOUT_SECONDS", 2.0, float, 0.05, 60.0),
            redis_max_connections=_number(env, "CONCORD_REDIS_MAX_CONNECTIONS", 100, int, 1, 10_000),
            log_level=log_level,
            rate_limits=parse_rate_limits(env.get("CONCORD_RATE_LIMITS", "")),
            access_log=access_log,
            metrics_dir=metrics_dir,
            events_max_length=_number(env, "CONCORD_EVENTS_MAX_LENGTH", 10_000, int, 0, 10_000_000),
            min_replicas=min_replicas,
            quotas=parse_quotas(env.get("CONCORD_QUOTAS", "")),
        )


def parse_api_keys(raw: str) -> dict[str, KeyGrant]:
    """Parse ``tenantA:keyA,tenantB/gate:keyB`` into {sha256(key): its grant}.

    ``tenant:key`` is an admin key; ``tenant/role:key`` a key of that role (admin,
    enroll, gate or read). The n-th key's id is ``cfg-<n>``: stable while the list
    keeps its order, and telling nothing of the key."""
    keys: dict[str, KeyGrant] = {}
    for n, item in enumerate(filter(None, (part.strip() for part in raw.split(","))), start=1):
        owner, sep, key = item.partition(":")
        if not sep or not key:
            raise ConfigError(f"CONCORD_API_KEYS: {item[:16]!r}... is not of the form tenant[/role]:key")
        tenant, slash, role = owner.partition("/")
        if not TENANT_RE.fullmatch(tenant):
            raise ConfigError(f"CONCORD_API_KEYS: tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ -")
        role = role if slash else "admin"
        if role not in KEY_ROLES:
            raise ConfigError(
                f"CONCORD_API_KEYS: role {role!r} of a key of tenant {tenant!r} is not one of {', '.join(KEY_ROLES)}"
            )
        if any(ch.isspace() for ch in key):
            raise ConfigError(f"CONCORD_API_KEYS: the key of tenant {tenant!r} contains whitespace")
        digest = key_digest(key)
        if digest in keys:
            raise ConfigError(
                f"CONCORD_API_KEYS: one key is given twice ({keys[digest].tenant!r} and {tenant!r}); "
                "each key is one grant"
            )
        keys[digest] = KeyGrant(id=f"cfg-{n}", tenant=tenant, role=role)
    return keys


def parse_rate_limits(raw: str) -> dict[str, RateLimit]:
    """Parse ``principal=50/s:100,tenant=1000/s,agent=20/s:40``: COUNT per second,
    minute or hour, and an optional burst (default COUNT) after a colon; or
    ``SCOPE=off``. The in-process scopes left out keep DEFAULT_RATE_LIMITS, the Redis
    ones stay off; empty gives the defaults, and ``off`` alone no limit at all."""
    if raw.strip().lower() == "off":
        return {}
    given: dict[str, RateLimit | None] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        match = _RATE.fullmatch(item)
        if not match or match["scope"] not in RATE_SCOPES:
            raise ConfigError(
                f"CONCORD_RATE_LIMITS: {item!r} is not SCOPE=COUNT/UNIT[:BURST] or SCOPE=off with SCOPE "
                f"{', '.join(RATE_SCOPES)} and UNIT s, m or h (e.g. principal=50/s:100,tenant=1000/s), "
                "nor off alone"
            )
        if match["scope"] in given:
            raise ConfigError(f"CONCORD_RATE_LIMITS: {match['scope']} is limited twice")
        if match["off"]:
            given[match["scope"]] = None
            continue
        count, burst = int(match["count"]), int(match["burst"] or match["count"])
        if not (1 <= count <= RATE_MAX and 1 <= burst <= RATE_MAX):
            raise ConfigError(f"CONCORD_RATE_LIMITS: {item!r}: COUNT and BURST must be 1 to {RATE_MAX:,}")
        given[match["scope"]] = RateLimit(count / _UNIT_SECONDS[match["unit"]], burst)
    limits = {**DEFAULT_RATE_LIMITS, **given}
    return {scope: limit for scope, limit in limits.items() if limit is not None}


def parse_quotas(raw: str) -> Quotas:
    """Parse ``agents=20000,leasesPerAgent=50``: the quotas named, each 1 to QUOTA_MAX;
    the others keep their defaults."""
    given: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in Quotas.NAMES or not value.isdigit():
            raise ConfigError(
                f"CONCORD_QUOTAS: {item!r} is not NAME=COUNT with NAME one of {', '.join(Quotas.NAMES)} "
                "(e.g. agents=20000,leasesPerAgent=50)"
            )
        if not 1 <= int(value) <= QUOTA_MAX:
            raise ConfigError(f"CONCORD_QUOTAS: {item!r}: COUNT must be 1 to {QUOTA_MAX:,}")
        if Quotas.NAMES[name] in given:
            raise ConfigError(f"CONCORD_QUOTAS: {name} is given twice")
        given[Quotas.NAMES[name]] = int(value)
    return Quotas(**given)


def _number(env: Mapping[str, str], name: str, default, kind, low, high):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a {kind.__name__}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: expected between {low} and {high}")
    return value
