"""docs/performance.md, written from one run's figures (and nothing else).

The section "Where the time goes" is the maintainer's: it is never generated, and
what it holds in the existing file is kept when the file is written again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.load import Result
from tests.bench.prepare import LeaseMemory

# Every report has these sections, in this order (the smoke test checks them).
SECTIONS = (
    "# Performance",
    "## Unexpected answers",
    "## Method",
    "## Results at 1 worker",  # one per worker count measured
    "## The floor",
    "## Scale: Redis memory per active lease",
    "## Scale: throughput",
    "## Where the time goes",
)
WHERE_THE_TIME_GOES = "## Where the time goes"
PLACEHOLDER = (
    "_To be written by the maintainer from a profile of a worker under this load "
    "(for example `py-spy record --pid <worker>` during a run). The benchmark never "
    "generates this section and keeps it when it rewrites this file._"
)
CORES = ("server", "redis", "wrk", "other")
# Other processes busier than this during a measured run disturbed it: the report says so.
DISTURBED_CORES = 0.15
MEMORY_TARGET = 400  # bytes per active lease
SCALE_TARGET = 0.85  # throughput at many agents / at few


@dataclass(frozen=True)
class Op:
    """An operation as measured: its wrk script, the answer every request must get,
    and the issue's targets (None: report only)."""

    key: str
    title: str
    script: str
    expect: int
    marker: str | None = None  # the expected answer's body contains it
    ratio: float | None = None  # throughput vs floor, at least
    p99_ms: float | None = None  # at most

    @property
    def target(self) -> str:
        if self.ratio is None:
            return "none (report only)"
        return f"≥ {self.ratio:.2f}, p99 ≤ {self.p99_ms:g} ms"


@dataclass
class Row:
    op: Op
    result: Result
    floor_rps: float  # mean of the floor runs just before and just after

    @property
    def ratio(self) -> float:
        return self.result.rps / self.floor_rps

    @property
    def met(self) -> str:
        if self.op.ratio is None:
            return "—"
        missed = [
            what
            for what, ok in (("ratio", self.ratio >= self.op.ratio), ("p99", self.result.p99_ms <= self.op.p99_ms))
            if not ok
        ]
        return "yes" if not missed else f"**no** ({', '.join(missed)})"


@dataclass
class Table:
    workers: int
    rows: list[Row]
    floors: list[Result]  # in the order run: floor, op 1, floor, op 2, ..., floor


@dataclass
class ScaleRow:
    op: Op
    few: list[Result]  # the runs at few agents, before and after
    many: Result

    @property
    def few_rps(self) -> float:
        return sum(r.rps for r in self.few) / len(self.few)

    @property
    def ratio(self) -> float:
        return self.many.rps / self.few_rps


@dataclass
class Report:
    command: str
    date: str
    machine: list[str]  # "- **name**: value" lines
    method: list[str]
    settings: dict[str, object]  # the uvicorn settings both servers ran with
    loop_http: str
    tables: list[Table] = field(default_factory=list)
    scale: list[ScaleRow] = field(default_factory=list)
    scale_agents: tuple[int, int] = (1000, 100_000)
    scale_workers: int = 1
    memory: list[LeaseMemory] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def ms(value: float) -> str:
    return f"{value:.2f}"


def rps(value: float) -> str:
    return f"{value:,.0f}"


def workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def cores(result: Result) -> str:
    return " / ".join(f"{result.cores.get(name, 0):.2f}" for name in CORES)


def render(report: Report, kept: str | None = None) -> str:
    out: list[str] = ["# Performance", ""]
    out += opening(
        "Figures of one run of the benchmark, `tests/bench/run.py`, on the machine below; every figure "
        "here was measured by that run. It starts everything it needs itself (a private `redis-server`, "
        "`concord serve`, the floor, `wrk`) and rewrites this file, except the last section.",
        report.command,
        report.date,
    )
    out += [
        *report.machine,
        f"- **Event loop and HTTP parser** (both servers): {report.loop_http}",
        "",
    ]
    out += _summary(report)
    out += _disturbed(report)

    out += unexpected(
        "## Unexpected answers",
        report.problems,
        "below",
        "None: every request of every run, warm-ups included, got its expected status (and body, "
        "where one is checked) and wrk saw no socket error.",
    )

    out += ["## Method", ""]
    out += report.method
    notable = (
        "loop",
        "http",
        "log_level",
        "access_log",
        "backlog",
        "limit_concurrency",
        "timeout_keep_alive",
        "lifespan",
        "proxy_headers",
        "server_header",
        "date_header",
    )
    shown = ", ".join(f"`{name}={report.settings[name]!r}`" for name in notable if name in report.settings)
    out += [
        (
            f"- **uvicorn settings**, the same for `concord serve` and the floor (captured from `concord serve` "
            f"itself, so the floor gets every keyword argument it passes to uvicorn; `workers` as in each table): "
            f"{shown}."
        ),
        "",
    ]

    for table in report.tables:
        out += [f"## Results at {workers(table.workers)}", ""]
        out += [
            (
                "| operation | req/s | p50 ms | p99 ms | floor req/s | ratio to floor | target | met? "
                "| cores busy: server / redis / wrk / other |"
            ),
            "|---|--:|--:|--:|--:|--:|---|---|---|",
        ]
        for row in table.rows:
            r = row.result
            out.append(
                f"| {row.op.title} | {rps(r.rps)} | {ms(r.p50_ms)} | {ms(r.p99_ms)} | {rps(row.floor_rps)} "
                f"| {row.ratio:.2f} | {row.op.target} | {row.met} | {cores(r)} |"
            )
        out.append("")

    out += [
        "## The floor",
        "",
        "Each floor run, in the order run (before the first operation, then after each one).",
        "",
    ]
    out += [
        "| workers | run | req/s | p50 ms | p99 ms | cores busy: server / redis / wrk / other |",
        "|--:|--:|--:|--:|--:|---|",
    ]
    for table in report.tables:
        for i, r in enumerate(table.floors, 1):
            out.append(f"| {table.workers} | {i} | {rps(r.rps)} | {ms(r.p50_ms)} | {ms(r.p99_ms)} | {cores(r)} |")
        if table.floors:
            values = [r.rps for r in table.floors]
            out.append(
                f"| {table.workers} | mean (min–max) | {rps(sum(values) / len(values))} "
                f"({rps(min(values))}–{rps(max(values))}) | | | |"
            )
    out.append("")

    out += ["## Scale: Redis memory per active lease", ""]
    if report.memory:
        out += [
            (
                "`INFO memory` `used_memory` on a Redis of its own, before and after acquiring the leases (fresh "
                "24-character contacts, 24-hour leases, through `Store.acquire`, at most 64 in flight), with "
                "the agents registered before the first reading. The delta is everything the leases cost, "
                "their index entries and Redis's per-key overhead included; `used_memory` counts what the "
                "allocator (jemalloc) handed out, so its rounding to size classes is included too."
            ),
            "",
            "| agents × leases each | leases | used_memory before | after | bytes per lease | target | met? |",
            "|---|--:|--:|--:|--:|---|---|",
        ]
        for m in report.memory:
            met = "yes" if m.per_lease <= MEMORY_TARGET else "**no**"
            out.append(
                f"| {m.agents:,} × {m.leases_per_agent:,} | {m.leases:,} | {m.before:,} | {m.after:,} "
                f"| {m.per_lease:.0f} | ≤ {MEMORY_TARGET} | {met} |"
            )
    else:
        out.append("Not measured in this run.")
    out.append("")

    few, many = report.scale_agents
    out += [f"## Scale: throughput at {few:,} versus {many:,} registered agents", ""]
    if report.scale:
        out += [
            (
                f"A Redis of its own with two tenants, one of {few:,} agents and one of {many:,} (all active), "
                f"`concord serve` at {report.scale_workers} worker. Each operation ran at {few:,} agents, at "
                f"{many:,}, then at {few:,} again; the ratio divides the throughput at {many:,} by the mean of "
                "the two runs around it. Vote runs use fresh requests of each tenant, as in the tables above."
            ),
            "",
            (
                f"| operation | req/s at {few:,} (before, after) | req/s at {many:,} | ratio | "
                f"p99 ms at {few:,} (worse run) / {many:,} | target | met? "
                f"| cores busy at {many:,}: server / redis / wrk / other |"
            ),
            "|---|--:|--:|--:|--:|---|---|---|",
        ]
        for row in report.scale:
            around = ", ".join(rps(r.rps) for r in row.few)
            met = "yes" if row.ratio >= SCALE_TARGET else "**no**"
            p99_few = max(r.p99_ms for r in row.few)
            out.append(
                f"| {row.op.title} | {rps(row.few_rps)} ({around}) | {rps(row.many.rps)} | {row.ratio:.2f} "
                f"| {ms(p99_few)} / {ms(row.many.p99_ms)} | ≥ {SCALE_TARGET} | {met} | {cores(row.many)} |"
            )
    else:
        out.append("Not measured in this run.")
    out.append("")

    out += [WHERE_THE_TIME_GOES, ""]
    out.append(kept.strip() if kept and kept.strip() else PLACEHOLDER)
    out.append("")
    return "\n".join(out)


def opening(what: str, command: str, date: str) -> list[str]:
    """A report's first lines: what it holds, the command that made it, and when."""
    return [what, "", "```", command, "```", "", f"- **Date**: {date}"]


def unexpected(heading: str, problems: list[str], where: str, none: str) -> list[str]:
    """The section that lists every answer other than expected (the figures ``where``
    are then suspect), or says ``none`` when there was none."""
    out = [heading, ""]
    if problems:
        out += [f"**The run saw answers other than expected; the figures {where} are suspect:**", ""]
        out += [f"- {problem}" for problem in problems]
    else:
        out.append(none)
    return [*out, ""]


def _summary(report: Report) -> list[str]:
    verdicts: list[tuple[str, bool]] = []
    for table in report.tables:
        for row in table.rows:
            if row.op.ratio is not None:
                verdicts.append((f"{row.op.title} at {workers(table.workers)}", row.met == "yes"))
    verdicts += [
        (f"memory at {m.agents:,} × {m.leases_per_agent:,}", m.per_lease <= MEMORY_TARGET) for m in report.memory
    ]
    verdicts += [
        (f"{row.op.title} at {report.scale_agents[1]:,} agents", row.ratio >= SCALE_TARGET) for row in report.scale
    ]
    if not verdicts:
        return []
    missed = [name for name, ok in verdicts if not ok]
    line = f"**Targets met: {len(verdicts) - len(missed)} of {len(verdicts)}.**"
    if missed:
        line += " Missed: " + "; ".join(missed) + "."
    return [line, ""]


def _disturbed(report: Report) -> list[str]:
    """A warning when other processes of the machine were busy during measured runs."""
    runs = [(f"floor at {workers(t.workers)}", r) for t in report.tables for r in t.floors]
    runs += [(f"{row.op.title} at {workers(t.workers)}", row.result) for t in report.tables for row in t.rows]
    runs += [(f"{row.op.title} (scale)", r) for row in report.scale for r in (*row.few, row.many)]
    busy = [(name, r.cores.get("other", 0.0)) for name, r in runs if r.cores.get("other", 0.0) > DISTURBED_CORES]
    if not busy:
        return []
    worst = max(cores for _, cores in busy)
    names = "; ".join(f"{name} ({cores:.2f})" for name, cores in busy)
    return [
        (
            f"**Disturbed**: processes outside the benchmark kept up to {worst:.2f} cores busy during "
            f"{len(busy)} of {len(runs)} measured runs (column *other*): {names}."
        ),
        "",
    ]


def kept_section(path: Path) -> str | None:
    """The body of "Where the time goes" in an existing report, if it has one."""
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(WHERE_THE_TIME_GOES)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if not match or match.group(1).strip() in ("", PLACEHOLDER):
        return None
    return match.group(1)
