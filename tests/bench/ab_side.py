"""One side of a paired A/B run (ab.py): a checkout's own benchmark, driven by ab.py.

    python ab_side.py CHECKOUT WORK OPTIONS_JSON

ab.py starts this file once per side, with the checkout's code importable (a copy
of its package on PYTHONPATH, or a virtualenv of its own). Everything that knows
how a commit is driven -- its settings, its data, its credentials, its wrk
scripts, its checks of each answer -- comes from CHECKOUT/tests/bench, never from
the tree ab.py runs from: a commit before agent credentials prepares and sends
none, a later one registers with the admin key and acts with each agent's own.
This file only uses what every bench since f5dafb3 has: run.parse(), run.Bench
(redis(), running(), measure()), run.BY_KEY, prepare.agents() and
prepare.hot_path().

It speaks JSON lines: once its Redis holds the data and `concord serve` (one
worker) is ready, it writes {"ready": {...}}; then for each {"op", "seconds",
"label"} read on stdin it runs one wrk slice with the checkout's Bench.measure()
(no warm-up, no retry, no waiting for a quiet machine: ab.py pairs the slices
instead) and writes {"result": ..., "problems": [...]}. At end of input it stops
the server and its Redis. Everything the checkout's bench prints goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Reported by each side: both should run the same libraries (one virtualenv) or say how they differ.
PACKAGES = ("concord", "uvicorn", "starlette", "redis", "msgspec", "uvloop", "httptools", "hiredis")
# A vote slice gets fresh consensus requests for this many times the fastest vote slice so far.
VOTE_MARGIN = 3.0


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def where_concord_comes_from() -> dict[str, str]:
    """The files of the code this side serves: ab.py checks they are the checkout's copy."""
    import concord
    import concord.lua

    return {"package": str(Path(concord.__file__).parent), "lua": str(list(concord.lua.__path__)[0])}


def main(argv: list[str]) -> int:
    checkout, work, options = Path(argv[0]).resolve(), Path(argv[1]), json.loads(argv[2])
    # The protocol keeps the real stdout; the checkout's bench prints progress, and its
    # subprocesses inherit fd 1, so both go to stderr instead.
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.path[0] = str(checkout)  # instead of this file's directory: `tests` is the checkout's
    os.chdir(checkout)

    from tests.bench import prepare, run

    def send(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")

    bench = run.Bench(
        run.parse(
            ["--workers", "1", "--ops", *options["ops"], "--seconds", "1", "--warmup", "0"]
            + ["--retries", "0", "--quiet-wait", "0", "--scale-ops", "--memory"]
            + ["--connections", str(options["connections"]), "--threads", str(options["threads"])]
            + ["--agents", str(options["agents"]), "--output", str(work / "unused.md")]
        ),
        work,
    )
    fastest_vote: list[float] = []
    default_bound = bench.rate_bound
    # Enough fresh requests for any vote slice, without making the default's (1.5 x a
    # floor this run never measures) for every slice of a long run.
    bench.rate_bound = lambda: VOTE_MARGIN * max(fastest_vote) if fastest_vote else default_bound()

    with bench.redis("redis") as redis:
        prepare.agents(redis.url, bench.small, options["agents"])
        prepare.hot_path(redis.url, bench.small)
        with bench.running(redis.url, 1, floor=False) as (service, _):
            send(
                {
                    "ready": {
                        "loop_http": bench.loop_http,
                        "settings": bench.settings,
                        "problems": list(bench.problems),
                        "python": platform.python_version(),
                        "executable": sys.executable,
                        "packages": {name: installed(name) for name in PACKAGES},
                        "code": where_concord_comes_from(),
                        "pid": service.process.pid,
                    }
                }
            )
            for line in sys.stdin:
                command = json.loads(line)
                op = run.BY_KEY[command["op"]]
                bench.o.seconds = command["seconds"]
                seen = len(bench.problems)
                result = bench.measure(op, service.url, service.process.pid, bench.small, redis.url, command["label"])
                if op.script == "vote":
                    fastest_vote.append(result.rps)
                send({"result": dataclasses.asdict(result), "problems": bench.problems[seen:]})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
