"""What the security tests share: the report they write their figures to, a private
redis-server per test, and the Authorization header.

security_report prints a summary line (seen with `pytest -s`) and appends a JSON line
to the file named by CONCORD_SECURITY_REPORT, if set; the tenant-isolation and rate-limit
tests of tests/api report through it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import V1
from tests.support.helpers import RedisServer, redis_server
from tests.support.reports import append_report, redis_version

REPORT_ENV = "CONCORD_SECURITY_REPORT"


def security_report(summary: str, record: dict[str, Any]) -> None:
    """Print ``summary`` as one line (seen with `pytest -s`) and append ``record``
    as one JSON line to the file named by CONCORD_SECURITY_REPORT, if it is set
    (tests/support/reports.py, as the fault suites do with theirs)."""
    print(f"\n[security] {summary}", flush=True)
    append_report(REPORT_ENV, {**record, "redis": redis_version()})


AGENTS = f"{V1}/agents"


@pytest.fixture
def private_redis(real_redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: its users, keys and statistics are the
    test's alone. (real_redis_url only decides whether a real Redis may be used.)"""
    with redis_server(tmp_path / "redis") as server:
        yield server


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}
