"""One wrk run: the load, the figures its script reports, and the CPU everyone used.

wrk shares the machine's cores with the servers and Redis, so each run also
records how many cores wrk, the server under test and Redis kept busy, and how
many everything else on the machine did ("other": a run disturbed by another
load shows there).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

WRK = shutil.which("wrk")
SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parents[1]
# Socket errors wrk counts; a non-2xx status is in `statuses` instead.
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    statuses: dict[int, int]
    unmarked: int  # the expected status, but not the expected body
    exhausted: int  # requests past the prepared data
    errors: dict[str, int]
    cores: dict[str, float] = field(default_factory=dict)  # "server" | "redis" | "wrk" | "other" -> cores busy

    def problems(self, expect: int) -> list[str]:
        """What went other than expected, in words; empty when every answer was ``expect``."""
        found = [f"{n} answers {status}" for status, n in sorted(self.statuses.items()) if status != expect]
        found += [f"{n} {kind} errors" for kind, n in self.errors.items() if kind in SOCKET_ERRORS and n]
        if self.unmarked:
            found.append(f"{self.unmarked} answers {expect} without the expected body")
        if self.exhausted:
            found.append(f"{self.exhausted} requests past the prepared data (repeats)")
        if self.requests == 0:
            found.append("no request completed")
        return found


def version() -> str:
    out = subprocess.run([WRK or "wrk", "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "unknown"
    return first.split(" [")[0].replace("wrk ", "")


def command(script: str, url: str, seconds: int, connections: int, threads: int, args: dict[str, object]) -> list[str]:
    return [
        WRK or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "2s",
        "-s",
        f"tests/bench/{script}.lua",
        url,
        "--",
        f"threads={threads}",
        *(f"{name}={value}" for name, value in args.items()),
    ]


def run(
    script: str,
    url: str,
    seconds: int,
    args: dict[str, object],
    *,
    connections: int,
    threads: int,
    server: Callable[[], float],
    redis: Callable[[], float],
    machine: Callable[[], float],
) -> Result:
    """Run wrk with tests/bench/<script>.lua against ``url`` for ``seconds``;
    ``server``, ``redis`` and ``machine`` give the CPU seconds those processes (and
    all processes) have used so far."""
    cmd = command(script, url, seconds, connections, threads, args)
    meters = (server, redis, _children_cpu, machine, time.monotonic)
    before = [meter() for meter in meters]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = [meter() for meter in meters]
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    figures = json.loads(lines[-1].removeprefix("BENCH "))
    busy = [(a - b) / (after[-1] - before[-1]) for a, b in zip(after, before)]
    cores = dict(zip(("server", "redis", "wrk"), busy))
    cores["other"] = max(0.0, busy[3] - sum(cores.values()))
    return Result(
        rps=figures["rps"],
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        requests=figures["requests"],
        statuses={int(code): n for code, n in figures["statuses"].items()},
        unmarked=figures["unmarked"],
        exhausted=figures["exhausted"],
        errors=figures["errors"],
        cores=cores,
    )


def _children_cpu() -> float:
    """CPU seconds of every finished child process; only wrk finishes during a run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
