"""Prometheus metrics: counted per process, summed over the workers of `concord serve`.

Counting is on the hot path (thousands of requests a second per worker), so a
count is one dict or list increment on the module-level ``METRICS``, in the event
loop's thread: no lock, no I/O. Every family and label value is declared here;
a label value outside its declared set raises KeyError, so a typo at a call site
fails its first test instead of growing a new series.

Several workers are separate processes, and a scrape reaches one of them. Each
worker's ``Exporter`` writes a snapshot of its counters to
``<CONCORD_METRICS_DIR>/<pid>-<token>.json`` every second and at shutdown
(atomically: a temporary file, then ``os.replace``); ``GET /metrics`` writes its
own snapshot first, then sums every snapshot in the directory. A snapshot's
counts only grow and a worker that exits leaves its file behind, so the sums
never go down while the directory lives, even when workers die and restart
(docs/observability.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import msgspec
import redis.exceptions as rx
from starlette.requests import Request
from starlette.responses import Response

from concord.server.errors import NotReplicated

log = logging.getLogger("concord")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds (seconds) of the latency buckets; +Inf is implied.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The declared label values of the domain counters.
LEASE_OUTCOMES = ("granted", "extended", "conflict", "takeover", "renewed", "released")
VOTES = ("approve", "reject")
CONSENSUS_OUTCOMES = ("approved", "rejected", "expired")
# The kind of a failed Redis call: the first entry whose classes it is an instance
# of, so subclasses come first (ReadOnlyError, NoScriptError, MovedError, ... are
# ResponseErrors; MovedError is an AskError; ClusterDownError a ClusterError).
_ERROR_KINDS: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((TimeoutError, rx.TimeoutError), "timeout"),
    ((rx.ConnectionError,), "connection"),
    ((rx.ReadOnlyError,), "read_only"),
    ((rx.OutOfMemoryError,), "out_of_memory"),
    ((rx.NoScriptError,), "no_script"),
    ((rx.MovedError,), "moved"),
    ((rx.AskError,), "ask"),
    ((rx.TryAgainError,), "try_again"),
    ((rx.ClusterDownError,), "cluster_down"),
    ((rx.ClusterError,), "redirections"),  # redis-py ran out of redirections ("TTL exhausted")
    ((NotReplicated,), "not_replicated"),
    ((rx.ResponseError,), "response"),
)
REDIS_ERROR_KINDS = tuple(kind for _, kind in _ERROR_KINDS) + ("other",)
# A snapshot file of another format (an older or newer Concord) is not summed.
FORMAT = 1


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # "counter" or "histogram"
    help: str
    buckets: tuple[float, ...] = ()


REQUESTS = Family(
    "concord_http_requests_total", "counter", "HTTP requests answered, by route template, method and status."
)
REQUEST_SECONDS = Family(
    "concord_http_request_duration_seconds",
    "histogram",
    "Time from receiving an HTTP request to its last byte sent, by route template and method.",
    REQUEST_BUCKETS,
)
LEASES = Family(
    "concord_lease_operations_total", "counter", "Lease operations that succeeded or conflicted, by outcome."
)
VOTES_CAST = Family("concord_votes_total", "counter", "Consensus votes recorded, by vote.")
CONSENSUS_REQUESTS = Family("concord_consensus_requests_total", "counter", "Consensus requests created.")
CONSENSUS_DECISIONS = Family("concord_consensus_decisions_total", "counter", "Consensus requests closed, by outcome.")
REDIS_ERRORS = Family("concord_redis_errors_total", "counter", "Failed Redis round trips, by kind of error.")
REDIS_SECONDS = Family(
    "concord_redis_duration_seconds",
    "histogram",
    "Time of one Redis round trip (a pipelined batch of script calls).",
    REDIS_BUCKETS,
)
FAMILIES = (
    REQUESTS,
    REQUEST_SECONDS,
    LEASES,
    VOTES_CAST,
    CONSENSUS_REQUESTS,
    CONSENSUS_DECISIONS,
    REDIS_ERRORS,
    REDIS_SECONDS,
)

# One family's series: rendered label text (`route="/x",method="GET"`) -> a count,
# or for a histogram its per-bucket counts (not cumulative, +Inf last), then the sum.
Series = dict[str, int | list[int | float]]


class Snapshot(msgspec.Struct):
    format: int
    pid: int
    families: dict[str, Series]


def _histogram(buckets: tuple[float, ...]) -> list[int | float]:
    return [0] * (len(buckets) + 1) + [0.0]


class Metrics:
    """The counters of one process. Call only from its event loop's thread."""

    __slots__ = (
        "requests",
        "request_seconds",
        "leases",
        "votes",
        "consensus_requests",
        "decisions",
        "redis_errors",
        "redis_seconds",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.request_seconds: dict[tuple[str, str], list[int | float]] = {}
        # The domain counters start at zero for every declared value: a series that
        # exists from the start makes rate() right from the first increment.
        self.leases = dict.fromkeys(LEASE_OUTCOMES, 0)
        self.votes = dict.fromkeys(VOTES, 0)
        self.consensus_requests = 0
        self.decisions = dict.fromkeys(CONSENSUS_OUTCOMES, 0)
        self.redis_errors = dict.fromkeys(REDIS_ERROR_KINDS, 0)
        self.redis_seconds = _histogram(REDIS_BUCKETS)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is its template (or "unmatched"), never the raw path."""
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.request_seconds.get((route, method))
        if histogram is None:
            histogram = self.request_seconds[(route, method)] = _histogram(REQUEST_BUCKETS)
        # bisect_left: the first bound >= seconds, Prometheus's `le`.
        histogram[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def lease(self, outcome: str) -> None:
        """One of LEASE_OUTCOMES."""
        self.leases[outcome] += 1

    def vote(self, vote: str) -> None:
        """One of VOTES."""
        self.votes[vote] += 1

    def consensus(self, event: str) -> None:
        """ "requested" when a consensus request is created, else one of CONSENSUS_OUTCOMES when it closes."""
        if event == "requested":
            self.consensus_requests += 1
        else:
            self.decisions[event] += 1

    def redis(self, seconds: float, error_kind: str | None = None) -> None:
        """One Redis round trip that took ``seconds``; ``error_kind`` (one of
        REDIS_ERROR_KINDS, see ``redis_error_kind``) when it failed."""
        self.redis_seconds[bisect_left(REDIS_BUCKETS, seconds)] += 1
        self.redis_seconds[-1] += seconds
        if error_kind is not None:
            self.redis_errors[error_kind] += 1

    def redis_error(self, kind: str) -> None:
        """An error reply inside a round trip already counted by ``redis`` (one
        script of a pipelined batch failed, the others did not); one of REDIS_ERROR_KINDS."""
        self.redis_errors[kind] += 1

    def snapshot(self) -> dict[str, Series]:
        """Every series by family name, as copies: the counters go on counting."""
        return {
            REQUESTS.name: {
                _labels(route=route, method=method, status=str(status)): count
                for (route, method, status), count in self.requests.items()
            },
            REQUEST_SECONDS.name: {
                _labels(route=route, method=method): list(histogram)
                for (route, method), histogram in self.request_seconds.items()
            },
            LEASES.name: {_labels(outcome=outcome): n for outcome, n in self.leases.items()},
            VOTES_CAST.name: {_labels(vote=vote): n for vote, n in self.votes.items()},
            CONSENSUS_REQUESTS.name: {"": self.consensus_requests},
            CONSENSUS_DECISIONS.name: {_labels(outcome=outcome): n for outcome, n in self.decisions.items()},
            REDIS_ERRORS.name: {_labels(kind=kind): n for kind, n in self.redis_errors.items()},
            REDIS_SECONDS.name: {"": list(self.redis_seconds)},
        }


METRICS = Metrics()
"""This process's counters; the only instance the service counts into."""


def redis_error_kind(exc: BaseException) -> str:
    """The REDIS_ERROR_KINDS label of an exception raised by a Redis call."""
    return next((kind for classes, kind in _ERROR_KINDS if isinstance(exc, classes)), "other")


# --- several processes: snapshot files, their sum, the exposition -------------


class Exporter:
    """Writes this process's snapshot into ``directory`` and serves ``GET /metrics``.
    Without a directory, /metrics reports this process's counters alone."""

    def __init__(self, metrics: Metrics, directory: str | None) -> None:
        self.metrics = metrics
        self.directory = Path(directory) if directory else None
        self._path: Path | None = None
        self._written = b""
        self._failing = False

    @property
    def path(self) -> Path | None:
        """This process's snapshot file. Named when first written, in the worker
        itself; the token keeps a reused pid from overwriting an exited worker's file."""
        if self._path is None and self.directory is not None:
            self._path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        return self._path

    def write(self) -> None:
        """Replace this process's snapshot file atomically: a reader sees the whole
        previous file or the whole new one. A failure is logged (once until a write
        succeeds again) and the next write tries again."""
        path = self.path
        if path is None:
            return
        data = msgspec.json.encode(Snapshot(FORMAT, os.getpid(), self.metrics.snapshot()))
        if data == self._written:
            return
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "Cannot write the metrics snapshot %s: %s; /metrics misses this worker's latest counts", path, exc
                )
            self._failing = True
            return
        self._written, self._failing = data, False

    def collect(self) -> dict[str, Series]:
        """The sum over every worker's snapshot, this process's brought up to date first."""
        if self.directory is None:
            return self.metrics.snapshot()
        self.write()
        return merge(read_snapshots(self.directory))

    @asynccontextmanager
    async def running(self, every: float = 1.0) -> AsyncIterator[None]:
        """Write a snapshot now, every ``every`` seconds, and at the end (shutdown)."""
        if self.directory is None:
            yield
            return
        self.write()
        task = asyncio.create_task(self._write_every(every))
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            self.write()

    async def _write_every(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.write()

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text exposition of ``collect()``."""
        return Response(render(self.collect()), headers={"content-type": CONTENT_TYPE})


def read_snapshots(directory: Path) -> list[Snapshot]:
    """Every readable snapshot of this format in ``directory``; others are logged and skipped."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            snapshot = msgspec.json.decode(path.read_bytes(), type=Snapshot)
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("Skipping the metrics snapshot %s: %s", path, exc)
            continue
        if snapshot.format != FORMAT:
            log.warning("Skipping the metrics snapshot %s: format %s, expected %s", path, snapshot.format, FORMAT)
            continue
        found.append(snapshot)
    return found


def merge(snapshots: Iterable[Snapshot]) -> dict[str, Series]:
    """Series summed over ``snapshots``: counts added, histograms bucket by bucket.
    Unknown families, and histograms with other buckets, are left out."""
    width = {f.name: len(f.buckets) + 2 for f in FAMILIES if f.kind == "histogram"}
    known = {f.name for f in FAMILIES}
    total: dict[str, Series] = {name: {} for name in known}
    for snapshot in snapshots:
        for name, series in snapshot.families.items():
            if name not in known:
                continue
            into = total[name]
            for labels, value in series.items():
                if name in width:
                    if not isinstance(value, list) or len(value) != width[name]:
                        continue
                    previous = into.get(labels)
                    into[labels] = value if previous is None else [a + b for a, b in zip(previous, value)]
                elif isinstance(value, int):
                    into[labels] = into.get(labels, 0) + value
    return total


def render(families: dict[str, Series]) -> str:
    """The Prometheus text exposition format 0.0.4: HELP and TYPE for every family,
    series in label order, histogram buckets cumulative up to +Inf == _count."""
    lines: list[str] = []
    for family in FAMILIES:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        series = families.get(family.name, {})
        for labels in sorted(series):
            value = series[labels]
            if family.kind == "counter":
                lines.append(f"{family.name}{_braces(labels)} {value}")
                continue
            assert isinstance(value, list)
            cumulative = 0
            for bound, count in zip((*map(_number, family.buckets), "+Inf"), value):
                cumulative += int(count)
                le = f'le="{bound}"'
                lines.append(f"{family.name}_bucket{{{labels + ',' + le if labels else le}}} {cumulative}")
            lines.append(f"{family.name}_sum{_braces(labels)} {_number(value[-1])}")
            lines.append(f"{family.name}_count{_braces(labels)} {cumulative}")
    return "\n".join(lines) + "\n"


def _labels(**labels: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())


def _escape(value: str) -> str:
    # The exposition format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _braces(labels: str) -> str:
    return f"{{{labels}}}" if labels else ""


def _number(value: float) -> str:
    return repr(float(value))
