"""The servers the benchmark measures, and what they cost in CPU.

`concord serve` runs as tests/support/helpers.ServiceProcess runs it (`python -m
concord serve`, the console script's entry point). The floor gets exactly the
keyword arguments `concord serve` hands to uvicorn: uvicorn_settings() runs the
real command with uvicorn.Config replaced by a recorder, so whatever the CLI passes
(workers, loop, http, log level, backlog, ...) the floor is served the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.helpers import ServiceProcess, concord_env, wait_until

REPO = Path(__file__).resolve().parents[2]

# Runs `concord serve ARGS`; uvicorn.Config prints its keyword arguments and exits
# before anything is served.
_RECORDER = """
import json, sys
import uvicorn.config

def name(value):
    return f"{value.__module__}:{value.__qualname__}"

def record(self, app, **settings):
    print(json.dumps({"app": app if isinstance(app, str) else name(app), **settings}, default=name))
    raise SystemExit(0)

uvicorn.config.Config.__init__ = record
from concord.cli import main
sys.exit(main(sys.argv[1:]))
"""


def uvicorn_settings(env: dict[str, str], workers: int) -> dict[str, Any]:
    """The keyword arguments `concord serve --workers N` passes to uvicorn, with these
    CONCORD_* settings; without app, factory, host and port."""
    done = subprocess.run(
        [sys.executable, "-c", _RECORDER, "serve", "--port", "1", "--workers", str(workers)],
        env=concord_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"could not read the uvicorn settings of `concord serve`: {done.stderr.strip()}")
    settings = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("app", "factory", "host", "port"):
        settings.pop(name, None)
    return settings


class FloorProcess(ServiceProcess):
    """The floor app (floor.py) under uvicorn with the given settings, on a free
    port: started, checked ready and stopped as `concord serve` is in the tests."""

    ready_path = "/"

    def __init__(self, settings: dict[str, Any], log: Path) -> None:
        super().__init__({}, log=log)
        self.settings = settings

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tests.bench.floor",
            "--port",
            str(self.port),
            "--settings",
            json.dumps(self.settings),
        ]


# --- processes, from /proc -------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def machine_cpu_seconds() -> float:
    """CPU time every process of the machine has used so far (/proc/stat, all cores)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_quiet(cores: float, timeout: float) -> bool:
    """Wait until the whole machine keeps fewer than ``cores`` busy over a second (our
    servers idle between runs, so what is busy then is someone else); False if it
    is still busy after ``timeout`` seconds."""
    window = [time.monotonic(), machine_cpu_seconds()]

    def quiet() -> bool:
        now, used = time.monotonic(), machine_cpu_seconds()
        if now - window[0] < 1.0:
            return False
        busy = (used - window[1]) / (now - window[0])
        window[:] = [now, used]
        return busy < cores

    try:
        wait_until(quiet, timeout=timeout, what="a quiet machine")
    except AssertionError:
        return False
    return True


def serving(pid: int) -> list[int]:
    """The processes that serve requests: uvicorn's workers, or the process itself
    when it runs one worker in-process."""
    workers = [child for child in children(pid) if b"spawn_main" in _cmdline(child)]
    return workers or [pid]


def wait_for_workers(pid: int, workers: int, what: str) -> None:
    if workers > 1:
        wait_until(lambda: len(serving(pid)) >= workers, timeout=30, what=f"{workers} workers of {what}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# Shared objects that show which event loop and HTTP parser a process runs.
LIBRARIES = {"uvloop": "/uvloop/", "httptools": "/httptools/", "zuvloop": "/zuvloop/"}


def loaded_libraries(pid: int) -> set[str]:
    """Which of LIBRARIES are mapped into the process (uvicorn imports uvloop and
    httptools only when it uses them)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {name for name, marker in LIBRARIES.items() if marker in maps}
