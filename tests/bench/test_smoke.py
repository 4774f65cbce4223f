"""The benchmarks still run: `tests/bench/run.py --smoke` (1 s runs, one worker, three
operations, small scale figures) writes a report with every section,
`tests/bench/deployments.py` at its smallest writes its tables, and
`tests/bench/ab.py --smoke` measures HEAD against the working tree and writes its section.

Nothing here looks at a figure: speed belongs in the benchmark, not in the tests.
The benchmark starts its own redis-server, so this test needs the binary as well
as wrk; it is marked `real`, and without either it skips, or fails under
CONCORD_TEST_REQUIRE_REDIS=1 (as CI runs, after installing both), as other
real-Redis tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import ab_report
from tests.bench.report import SECTIONS
from tests.support.cluster import REDIS_CLI
from tests.support.helpers import REDIS_SERVER, unavailable

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, *args: str, timeout: float = 240) -> None:
    """Run tests/bench/<script> with ``args`` as a newcomer would, without our CONCORD_* settings."""
    if shutil.which("wrk") is None:
        unavailable("the benchmark needs wrk on PATH (apt-get install wrk)")
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONCORD_")}
    done = subprocess.run(
        [sys.executable, f"tests/bench/{script}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.real
@pytest.mark.timeout(300)
def test_smoke_run_writes_a_report_with_every_section(real_redis_url: str, tmp_path: Path) -> None:
    if REDIS_SERVER is None:
        unavailable("the benchmark starts its own redis-server, and there is no binary on PATH")
    output = tmp_path / "performance.md"
    bench("run.py", "--smoke", "--output", str(output))
    report = output.read_text(encoding="utf-8")
    missing = [heading for heading in SECTIONS if f"\n{heading}" not in f"\n{report}"]
    assert not missing, f"the report lacks {missing}:\n{report}"
    assert "Not measured in this run" not in report, report


@pytest.mark.real
@pytest.mark.timeout(300)
def test_the_deployments_benchmark_runs(real_redis_url: str, tmp_path: Path) -> None:
    """tests/bench/deployments.py (one Redis against a cluster, with and without
    WAIT) at its smallest writes its table, a row per operation."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        unavailable("the benchmark starts a redis-server and a Redis Cluster: it needs redis-server and redis-cli")
    output = tmp_path / "deployments.md"
    bench("deployments.py", "--seconds", "1", "--agents", "50", "--output", str(output))
    report = output.read_text(encoding="utf-8")
    for row in ("| heartbeat |", "| lease acquire, fresh contact |", "| send-check |", "| vote |"):
        assert report.count(row) == 2, report  # throughput, and Redis CPU
    assert "Redis Cluster 3+3, CONCORD_MIN_REPLICAS=1" in report


@pytest.mark.real
@pytest.mark.timeout(120)
def test_the_paired_ab_benchmark_writes_its_section(real_redis_url: str, tmp_path: Path) -> None:
    """tests/bench/ab.py --smoke: HEAD (a worktree of its own) against the working tree,
    both served side by side, each driven by its own bench; a section with every
    heading and a row per operation comes out."""
    if REDIS_SERVER is None:
        unavailable("the benchmark starts a redis-server per side, and there is no binary on PATH")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=False).returncode != 0:
        unavailable("ab.py checks out HEAD, and this tree is not a git checkout")
    output = tmp_path / "ab.md"
    bench("ab.py", "--smoke", "--before", "HEAD", "--output", str(output), timeout=100)
    report = output.read_text(encoding="utf-8")
    missing = [heading for heading in ab_report.SECTIONS if f"\n{heading}" not in f"\n{report}"]
    assert not missing, f"the section lacks {missing}:\n{report}"
    for row in ("| heartbeat |", "| vote |"):
        assert report.count(row) == 2, report  # throughput, and CPU per request
    top = [line for line in report.splitlines() if line.startswith(("# ", "## "))]
    assert not top, f"{top}: a `#` or `##` heading would end the section of docs/performance.md it is pasted into"
