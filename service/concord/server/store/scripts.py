"""Loads lua/*.lua once and registers them with a Redis client.

Each script is sent to Redis as the head of ``lib.lua`` (its reply codes and
ACTOR), the helpers of lib.lua it uses (those it names, and those they name), and
then the script, so the shared helpers and reply codes exist once in the source
tree. Only the helpers used: Redis runs the whole text on every call, and each
``local function`` builds a closure there, so the whole of lib.lua before each
script cost every call about 1.3 µs (docs/performance.md). The KEYS/ARGV lines of a script's
header are parsed, and every call is checked against them: a header cannot drift
from what the store passes without the first call failing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from concord.server.redis.batcher import Batcher, Replication
from concord.server.redis.cluster import ClusterCaller, SlotMap

# "KEYS[3] lease_key ..." or "ARGV[2..] contacts ..." in a script's header.
_DECLARATION = re.compile(r"^\s+(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+)", re.MULTILINE)
LIB = "lib"
# Scripts whose writes are not worth waiting for replicas (CONCORD_MIN_REPLICAS):
# a send check reads only; a rate-limit bucket lost in a failover refills; and a
# consensus read writes only the expiry of an overdue request, which the next read
# of it (or any vote, which checks the deadline first) writes again, the same.
NOT_WAITED = frozenset({"lease_send_check", "rate_limit", "consensus_read"})
# The scripts ship as the package data concord.lua (pyproject.toml maps the
# top-level lua/ there), so a wheel and a checkout read them the same way.
LUA = files("concord.lua")


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    text: str
    keys: tuple[str, ...]  # declared names, in order
    args: tuple[str, ...]
    variadic_keys: bool  # the last KEYS entry is "KEYS[n..]"
    variadic_args: bool

    @property
    def header(self) -> str:
        return self.text.split("]]", 1)[0]


def _parse(name: str, text: str) -> Source:
    declared: dict[str, list[tuple[int, str, bool]]] = {"KEYS": [], "ARGV": []}
    header = text.split("]]", 1)[0]
    for kind, index, rest, var in _DECLARATION.findall(header):
        declared[kind].append((int(index), var, bool(rest)))
    for kind, items in declared.items():
        if [i for i, _, _ in items] != list(range(1, len(items) + 1)):
            raise ValueError(f"lua/{name}.lua: {kind} in the header are not numbered 1..n")
    return Source(
        name=name,
        text=text,
        keys=tuple(var for _, var, _ in declared["KEYS"]),
        args=tuple(var for _, var, _ in declared["ARGV"]),
        variadic_keys=bool(declared["KEYS"]) and declared["KEYS"][-1][2],
        variadic_args=bool(declared["ARGV"]) and declared["ARGV"][-1][2],
    )


@cache
def sources() -> dict[str, Source]:
    """Every script of lua/ except the shared lib, by name."""
    return {
        path.name[:-4]: _parse(path.name[:-4], path.read_text(encoding="utf-8"))
        for path in sorted(LUA.iterdir(), key=lambda p: p.name)
        if path.name.endswith(".lua")
    }


# A helper of lib.lua: a line "local function name(" at the start of a line,
# with the comment lines just above it; it runs until the next helper's comment
# or definition. Everything before the first helper is the head (reply codes, ACTOR).
_HELPER = re.compile(r"^(?:--[^\n]*\n)*local function (\w+)\(", re.MULTILINE)
_WORD = re.compile(r"\w+")
_COMMENT = re.compile(r"--\[\[.*?\]\]|--[^\n]*", re.DOTALL)


def _names(code: str) -> set[str]:
    """The words of Lua ``code`` outside its comments."""
    return set(_WORD.findall(_COMMENT.sub("", code)))


@cache
def lib_parts() -> tuple[str, dict[str, str]]:
    """lib.lua as (its head, {helper name: its text}), the helpers in file order."""
    text = sources()[LIB].text
    found = list(_HELPER.finditer(text))
    if not found:
        return text, {}
    helpers = {
        match[1]: text[match.start() : (found[i + 1].start() if i + 1 < len(found) else len(text))]
        for i, match in enumerate(found)
    }
    return text[: found[0].start()], helpers


@cache
def script_text(name: str) -> str:
    """What is sent to Redis for lua/<name>.lua: lib.lua's head, the helpers the
    script uses (each before its callers, as in lib.lua), then the script."""
    head, helpers = lib_parts()
    wanted: set[str] = set()
    pending = _names(sources()[name].text) & set(helpers)
    while pending:  # the helpers named, then those they name, ...
        wanted |= pending
        pending = {word for helper in pending for word in _names(helpers[helper])} & set(helpers) - wanted
    used = "".join(text for helper, text in helpers.items() if helper in wanted)
    return f"{head}{used}\n{sources()[name].text}"


class Script:
    """One registered script; calls check the header's arity, then run by SHA in the
    next pipeline of the Batcher (on a cluster, by the ClusterCaller), or in the
    given pipeline."""

    __slots__ = ("name", "_n_keys", "_n_args", "_variadic_keys", "_variadic_args", "_script", "_send", "_durable")

    def __init__(self, source: Source, script: AsyncScript, send: Callable[..., Awaitable[Any]]) -> None:
        self.name = source.name
        self._n_keys, self._n_args = len(source.keys), len(source.args)
        self._variadic_keys, self._variadic_args = source.variadic_keys, source.variadic_args
        self._script = script
        self._send = send
        self._durable = source.name not in NOT_WAITED

    @property
    def text(self) -> str:
        """What is sent to Redis: lib.lua's head and the helpers used, then the script."""
        return self._script.script

    def __call__(self, keys: list[str], args: list[Any], client: Any = None):
        if not _arity_ok(len(keys), self._n_keys, self._variadic_keys) or not _arity_ok(
            len(args), self._n_args, self._variadic_args
        ):
            raise TypeError(
                f"lua/{self.name}.lua declares {self._n_keys} KEYS and {self._n_args} ARGV, "
                f"called with {len(keys)} and {len(args)}"
            )
        if client is not None:
            return self._script(keys, args, client)
        script = self._script
        return self._send(("EVALSHA", script.sha, len(keys), *keys, *args), script.script, self._durable)


def _arity_ok(given: int, declared: int, variadic: bool) -> bool:
    # A variadic last entry "X[n..]" may be empty: at least n - 1 are required.
    return given >= declared - 1 if variadic else given == declared


class Scripts:
    """The scripts of lua/, registered with one client, one attribute each:
    ``scripts.lease_acquire`` runs lua/lease_acquire.lua."""

    agent_register: Script
    agent_heartbeat: Script
    agent_remove: Script
    agent_credential: Script
    lease_acquire: Script
    lease_renew: Script
    lease_release: Script
    lease_send_check: Script
    consensus_request: Script
    consensus_vote: Script
    consensus_read: Script
    consensus_policy: Script
    suppression_put: Script
    suppression_remove: Script
    rate_limit: Script

    def __init__(self, client: Redis, timeout: float | None = None, replication: Replication = Replication()) -> None:
        # On a cluster each call goes to the master of its keys' slot and follows
        # the cluster's redirections itself (redis/cluster.py); the batcher speaks to one server.
        self.slots: SlotMap | None = None
        self._cluster: ClusterCaller | None = None
        if isinstance(client, RedisCluster):
            self.slots = SlotMap(client)
            self._cluster = ClusterCaller(client, self.slots, timeout, replication)
            send = self._cluster.call
        else:
            send = Batcher(client, timeout, replication=replication).call
        self._client = client
        missing = sorted(set(sources()) - {LIB} - set(Scripts.__annotations__))
        if missing:  # a script nobody can call: declare it above
            raise RuntimeError(f"lua/{missing[0]}.lua is not declared as an attribute of Scripts")
        for name in Scripts.__annotations__:
            source = sources()[name]
            setattr(self, name, Script(source, client.register_script(script_text(name)), send))

    def all(self) -> list[Script]:
        """Every script, in the order declared."""
        return [getattr(self, name) for name in Scripts.__annotations__]

    async def load(self) -> None:
        """Load every script into Redis now (on a cluster: into every master), so the
        first calls find them: a first call would otherwise meet NOSCRIPT, which is
        counted as a Redis error although nothing is wrong."""
        texts = [script.text for script in self.all()]
        if isinstance(self._client, RedisCluster):
            for text in texts:  # redis-py sends SCRIPT LOAD to every primary
                await self._client.script_load(text)
            return
        pipe = self._client.pipeline(transaction=False)
        for text in texts:
            pipe.script_load(text)
        await pipe.execute()

    async def aclose(self) -> None:
        """Close the connections the scripts' own path made (on a cluster); those
        of the client close with it."""
        if self._cluster is not None:
            await self._cluster.aclose()
