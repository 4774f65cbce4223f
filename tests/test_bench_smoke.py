"""The benchmark still runs: `tests/bench/run.py --smoke` (1 s runs, one worker, three
operations, small scale figures) writes a report with every section.

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

from tests.bench.report import SECTIONS
from tests.helpers import REDIS_SERVER, unavailable

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.real
@pytest.mark.timeout(300)
def test_smoke_run_writes_a_report_with_every_section(real_redis_url: str, tmp_path: Path) -> None:
    if REDIS_SERVER is None:
        unavailable("the benchmark starts its own redis-server, and there is no binary on PATH")
    if shutil.which("wrk") is None:
        unavailable("the benchmark needs wrk on PATH (apt-get install wrk)")
    output = tmp_path / "performance.md"
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONCORD_")}

    done = subprocess.run(
        [sys.executable, "tests/bench/run.py", "--smoke", "--output", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert done.returncode == 0, f"the smoke run failed:\n{done.stdout}\n{done.stderr}"
    report = output.read_text(encoding="utf-8")
    missing = [heading for heading in SECTIONS if f"\n{heading}" not in f"\n{report}"]
    assert not missing, f"the report lacks {missing}:\n{report}"
    assert "Not measured in this run" not in report, report
