"""Figures the reliability and security tests record for docs/reliability.md.

Each suite prints a one-line summary per check (visible with ``pytest -s``) and,
when the environment variable it names holds a file path, appends the figures
there as one JSON line; a real run's lines are what the docs quote.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.support.helpers import REDIS_SERVER, RedisServer


def append_report(env_var: str, entry: dict[str, Any]) -> None:
    """Append ``entry`` as a JSON line to the file named by ``env_var``, if it is set."""
    path = os.environ.get(env_var)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({**entry, "at": time.time()}, sort_keys=True) + "\n")


def redis_version() -> str | None:
    return RedisServer.version_of(REDIS_SERVER) if REDIS_SERVER else None


REPORT_ENV = "CONCORD_FAULT_REPORT"


@dataclass
class FaultRecord:
    """What one fault test saw, as docs/reliability.md quotes it.

    ``losses``, ``double_grants``, ``duplicate_votes`` and ``flips`` count what
    happened (0 wherever the design promises 0; an empty restart promises nothing
    and says so with ``extra["zero_promised"] = False``); ``extra`` holds the
    figures particular to a fault."""

    fault: str
    provoked: str
    trials: int = 0
    acknowledged: int = 0
    losses: int = 0
    double_grants: int = 0
    duplicate_votes: int = 0
    flips: int = 0
    max_503_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def saw_503(self, seconds: float) -> None:
        self.max_503_seconds = max(self.max_503_seconds or 0.0, round(seconds, 3))

    def line(self, outcome: str) -> str:
        figures = " ".join(
            f"{name}={getattr(self, name)}"
            for name in ("trials", "acknowledged", "losses", "double_grants", "duplicate_votes", "flips")
        )
        slowest = "" if self.max_503_seconds is None else f" max_503_seconds={self.max_503_seconds}"
        extra = "".join(f" {name}={value}" for name, value in self.extra.items())
        return f"[fault] {self.fault} ({outcome}): {figures}{slowest}{extra}"

    def write(self, outcome: str) -> None:
        print("\n" + self.line(outcome), flush=True)
        append_report(REPORT_ENV, {**asdict(self), "outcome": outcome, "redis": redis_version()})


@contextmanager
def fault_record(fault: str, provoked: str) -> Iterator[FaultRecord]:
    """A FaultRecord for the block, written when the block ends, pass or fail."""
    record = FaultRecord(fault, provoked)
    outcome = "failed"
    try:
        yield record
        outcome = "passed"
    finally:
        record.write(outcome)
