"""The figures of a paired A/B run (ab.py) and its Markdown section.

A pair is one slice of each side run back to back on the same operation; its
ratio is after / before. An operation's figure is the median of its pairs'
ratios, with a 95% interval from a bootstrap over the pairs, and the interval
alone decides what the run can say about the 5% rule.

The section uses `###` headings and below, never `##`: it can be pasted into
"Where the time goes" of docs/performance.md, which run.py keeps up to the next
`## ` heading.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.bench.report import DISTURBED_CORES, opening, unexpected

# Our rule: a change on the hot path costs at most this share of its throughput.
BUDGET = 0.05
RESAMPLES = 10_000
# With fewer pairs, even the widest interval a median has (the lowest to the highest
# pair) covers it less than 95% of the time (2 x 0.5**5 > 5%): no verdict.
MIN_PAIRS = 6
SEED = 13  # the same pairs give the same interval in every report

# Every section has these headings, in this order (the smoke test checks them).
SECTIONS = (
    "### Paired A/B",
    "#### The 5% rule, by throughput",
    "#### CPU per request",
    "#### Method",
    "#### Unexpected answers",
)


@dataclass(frozen=True)
class Slice:
    """One wrk run of one side, as its checkout's load.Result reported it."""

    rps: float
    p99_ms: float
    cores: dict[str, float]  # "server" | "redis" | "wrk" | "other" -> cores busy during the slice

    @classmethod
    def of(cls, result: dict) -> Slice:
        return cls(result["rps"], result["p99_ms"], dict(result.get("cores", {})))

    def cpu_us(self, process: str) -> float:
        """CPU time ``process`` spent per request, µs (cores busy / requests a second)."""
        return self.cores.get(process, 0.0) / self.rps * 1e6 if self.rps else float("nan")


@dataclass(frozen=True)
class Pair:
    round: int
    before_first: bool
    before: Slice
    after: Slice

    def ratio(self, figure: Callable[[Slice], float]) -> float:
        return figure(self.after) / figure(self.before)

    @property
    def other(self) -> float:
        """The cores other processes kept busy, in the busier slice of the two."""
        return max(self.before.cores.get("other", 0.0), self.after.cores.get("other", 0.0))


@dataclass(frozen=True)
class Interval:
    median: float
    low: float
    high: float


def bootstrap(values: list[float], resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The median of ``values`` and a 95% percentile-bootstrap interval for it."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return Interval(statistics.median(values), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1])


@dataclass
class OpFigures:
    key: str
    title: str
    pairs: list[Pair] = field(default_factory=list)

    def interval(self, figure: Callable[[Slice], float]) -> Interval:
        return bootstrap([pair.ratio(figure) for pair in self.pairs])

    @property
    def throughput(self) -> Interval:
        return self.interval(lambda s: s.rps)

    def median(self, side: str, figure: Callable[[Slice], float]) -> float:
        return statistics.median(figure(getattr(pair, side)) for pair in self.pairs)

    @property
    def verdict(self) -> str:
        return verdict(self.throughput, len(self.pairs))


def verdict(throughput: Interval, pairs: int) -> str:
    """What an interval of after/before throughput says about the rule, and no more."""
    if pairs < MIN_PAIRS:
        return f"cannot tell (fewer than {MIN_PAIRS} pairs)"
    floor = 1 - BUDGET
    if throughput.low >= floor:
        return f"within {BUDGET:.0%}"
    if throughput.high < floor:
        return f"**costs {1 - throughput.median:.1%}**"
    if throughput.high < 1:  # a cost, shown; whether it passes the rule, not
        return f"cannot tell (costs {1 - throughput.high:.1%} to {1 - throughput.low:.1%})"
    return "cannot tell"


@dataclass
class ABReport:
    title: str  # "`abc1234` → `def5678`"
    command: str
    date: str
    before: str  # what each side is: "commit `abc1234` (subject)", "the working tree ..."
    after: str
    machine: list[str]  # "- **name**: value" lines, how each side was installed and served among them
    method: list[str]
    ops: list[OpFigures] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def change(ratio: float) -> str:
    """A ratio as a signed change: 0.93 -> "−7.0%"."""
    value = (ratio - 1) * 100
    return f"{'+' if value >= 0 else '−'}{abs(value):.1f}%"


def span(interval: Interval) -> str:
    return f"{change(interval.low)} to {change(interval.high)}"


def render(report: ABReport) -> str:
    out = [f"### Paired A/B: {report.title}", ""]
    out += opening(
        "Figures of one run of `tests/bench/ab.py`: both versions served side by side, each its own "
        "`concord serve` and Redis, measured in alternating short wrk slices, every figure a ratio of "
        "the two sides within a pair of slices run back to back.",
        report.command,
        report.date,
    )
    out += [
        f"- **Before**: {report.before}",
        f"- **After**: {report.after}",
        *report.machine,
        *_other(report),
        "",
    ]
    out += _summary(report)

    out += ["#### The 5% rule, by throughput", ""]
    out += [
        (
            "| operation | pairs | req/s before | req/s after | after / before, median of pairs "
            f"| 95% interval | the {BUDGET:.0%} rule | median of pairs run before first / after first |"
        ),
        "|---|--:|--:|--:|--:|--:|---|--:|",
    ]
    for op in report.ops:
        t = op.throughput
        by_order = [[pair.ratio(_rps) for pair in op.pairs if pair.before_first == first] for first in (True, False)]
        orders = " / ".join(f"{statistics.median(ratios):.3f}" if ratios else "—" for ratios in by_order)
        out.append(
            f"| {op.title} | {len(op.pairs)} | {op.median('before', _rps):,.0f} | {op.median('after', _rps):,.0f} "
            f"| {t.median:.3f} ({change(t.median)}) | {span(t)} | {op.verdict} | {orders} |"
        )
    out.append("")

    out += ["#### CPU per request", ""]
    out += [
        (
            "Cores busy during a slice divided by its requests a second (from /proc); medians of the slices, "
            "and the change as the median of the pairs' ratios with its 95% interval. More CPU per request is "
            "a cost even where throughput does not show it (at 1 worker the server's Python is what limits "
            "throughput; Redis's time adds latency and shares the cores)."
        ),
        "",
        (
            "| operation | server µs before → after | change (95% interval) | Redis µs before → after "
            "| change (95% interval) | p99 ms before → after | other cores: median / max "
            f"| pairs disturbed (> {DISTURBED_CORES}) |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for op in report.ops:
        cells = []
        for process in ("server", "redis"):

            def cpu(s: Slice, process: str = process) -> float:
                return s.cpu_us(process)

            interval = op.interval(cpu)
            cells += [
                f"{op.median('before', cpu):.1f} → {op.median('after', cpu):.1f}",
                f"{change(interval.median)} ({span(interval)})",
            ]
        others = [pair.other for pair in op.pairs]
        disturbed = sum(other > DISTURBED_CORES for other in others)
        p99 = f"{op.median('before', _p99):.2f} → {op.median('after', _p99):.2f}"
        out.append(
            f"| {op.title} | {' | '.join(cells)} | {p99} "
            f"| {statistics.median(others):.2f} / {max(others):.2f} | {disturbed} |"
        )
    out.append("")

    out += ["#### Method", ""]
    out += report.method
    out.append("")

    out += unexpected(
        "#### Unexpected answers",
        report.problems,
        "above",
        "None: every request of every slice, warm-ups included, got its expected status (and body, "
        "where one is checked) on both sides, and wrk saw no socket error.",
    )
    return "\n".join(out)


def _rps(s: Slice) -> float:
    return s.rps


def _p99(s: Slice) -> float:
    return s.p99_ms


def _other(report: ABReport) -> list[str]:
    slices = [s for op in report.ops for pair in op.pairs for s in (pair.before, pair.after)]
    if not slices:
        return []
    others = sorted(s.cores.get("other", 0.0) for s in slices)
    busy = sum(other > DISTURBED_CORES for other in others)
    return [
        (
            f"- **Other processes** (CPU outside the benchmark, during the measured slices): median "
            f"{statistics.median(others):.2f} cores, at most {others[-1]:.2f}; {busy} of {len(others)} slices "
            f"above {DISTURBED_CORES} cores. A pair takes the noise of its two slices; the median of pairs "
            "is what a few disturbed ones cannot move."
        )
    ]


def _summary(report: ABReport) -> list[str]:
    if not report.ops:
        return []
    parts = [f"{op.title}: {op.verdict} ({change(op.throughput.median)}, {span(op.throughput)})" for op in report.ops]
    return [f"**The {BUDGET:.0%} rule, from the 95% intervals of throughput**: " + "; ".join(parts) + ".", ""]
