"""A paired A/B benchmark: what a change costs each hot-path operation, within 5% or not.

    .venv/bin/python tests/bench/ab.py --before main --output /tmp/ab.md       # main against this working tree
    .venv/bin/python tests/bench/ab.py --before f5dafb3 --after c46ea1d --rounds 60 --output /tmp/ab.md
    .venv/bin/python tests/bench/ab.py --before HEAD --smoke --output /tmp/ab.md   # seconds: checks it works

Two runs of run.py, one per commit, differ by more than 5% on a shared machine
whatever the code (docs/performance.md). This command serves both versions at
once, each its own redis-server and `concord serve` (1 worker), and alternates
short wrk slices between them, before-after in one round and after-before in
the next (A B, B A, A B, ...), so drift and noise of the machine fall on both
sides alike. Each pair of slices gives a ratio after/before; the report gives
each operation's median ratio with a bootstrap 95% interval, and says "within
5%", "costs X%" or "cannot tell" from the interval alone (ab_report.py).

Each side is a checkout of its commit (`git worktree add --detach` into a
temporary directory, removed afterwards) or a copy of a working tree (its
tracked files as they are on disk and the untracked ones git does not ignore:
HEAD and the uncommitted change, frozen for the run). Its package is built by
pip, without dependencies, into a directory of its own that goes on PYTHONPATH
of the running virtualenv, whose libraries both sides then share, so the two
differ only by their code. That is done when the checkout's pyproject.toml asks
for the same dependencies as this tree's; otherwise (or with --own-venvs) the
side gets a virtualenv of its own (`pip install CHECKOUT[server,test]`). Not the
checkout's service/ on PYTHONPATH: the running virtualenv's editable install
maps `concord.lua` to its own tree's lua/, so the checkout would run this tree's
Lua scripts.

Each side is driven by its checkout's own bench (ab_side.py): the settings, the
data, the credentials, the wrk scripts and the checks of every answer are the
commit's, since they change with the wire protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: `tests` imports from the repository

from tests.bench import load  # noqa: E402
from tests.bench.ab_report import BUDGET, RESAMPLES, ABReport, OpFigures, Pair, Slice, render  # noqa: E402
from tests.bench.run import BY_KEY, command_line, cpu_model, platform_cores  # noqa: E402
from tests.support.helpers import REDIS_SERVER, RedisServer  # noqa: E402

SIDE = Path(__file__).resolve().parent / "ab_side.py"
HOT_PATH = ["heartbeat", "lease-free", "send-check", "vote", "consensus-read"]
FULL = {"rounds": 20, "seconds": 3, "warmup": 2, "ops": HOT_PATH, "agents": 1000}
SMOKE = {"rounds": 2, "seconds": 1, "warmup": 1, "ops": ["heartbeat", "vote"], "agents": 100}
# Between slices a side prepares what the next needs (fresh consensus requests for a vote).
OVERHEAD_SECONDS = 0.6


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve two versions of Concord side by side and measure them in alternating wrk slices.",
        epilog="A side is a commit (anything `git rev-parse` takes) or a directory: a working tree, "
        "measured with its uncommitted changes.",
    )
    parser.add_argument("--before", required=True, help="the version measured as before")
    parser.add_argument("--after", default=str(REPO), help="the version measured as after (default: this working tree)")
    parser.add_argument("--ops", nargs="+", choices=list(BY_KEY), help=f"operations (default {' '.join(HOT_PATH)})")
    parser.add_argument("--rounds", type=int, help="pairs of slices per operation (default 20)")
    parser.add_argument("--seconds", type=int, help="length of each slice (default 3; wrk counts whole seconds)")
    parser.add_argument("--warmup", type=int, help="a slice per side and operation before the rounds, 0 for none")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--agents",
        type=int,
        help="agents of the tenant measured (default 1000). Every lease-free request makes a lease that "
        "lives 30 minutes, and later commits refuse an agent's 1001st: give more for long runs",
    )
    parser.add_argument(
        "--own-venvs", action="store_true", help="a virtualenv per side even when the dependencies are the same"
    )
    parser.add_argument("--smoke", action="store_true", help="1 s slices, 2 rounds, heartbeat and vote, 100 agents")
    parser.add_argument("--output", required=True, help="the Markdown section, written (and printed) whole")
    options = parser.parse_args(argv)
    for name, value in (SMOKE if options.smoke else FULL).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.seconds < 1 or options.warmup < 0 or options.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1, --warmup at least 0")
    return options


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"ab.py: git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class Side:
    """One version, as served: where its code is, how it is installed, its driver."""

    name: str  # "before" | "after"
    short: str  # for the heading: "`f5dafb3`"
    what: str  # for the report: "commit `f5dafb3` (its subject)"
    directory: Path
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    installed: str = ""
    process: subprocess.Popen | None = None
    log: Path | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    def start(self, work: Path, options: argparse.Namespace) -> None:
        self.log = work / f"side-{self.name}.log"
        data = work / f"data-{self.name}"
        data.mkdir()
        settings = {key: getattr(options, key) for key in ("ops", "agents", "connections", "threads")}
        self.process = subprocess.Popen(
            [self.python, str(SIDE), str(self.directory), str(data), json.dumps(settings)],
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
            text=True,
        )

    def receive(self) -> dict[str, Any]:
        assert self.process and self.process.stdout
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} side ({self.what}) stopped; the last lines of its log:\n{self.tail()}")
        return json.loads(line)

    def wait_ready(self) -> None:
        self.ready = self.receive()["ready"]

    def slice(self, op: str, seconds: int, label: str) -> dict[str, Any]:
        assert self.process and self.process.stdin
        self.process.stdin.write(json.dumps({"op": op, "seconds": seconds, "label": label}) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def stop(self) -> None:
        """End of input: the driver stops its server and its Redis, then exits."""
        if self.process is None or self.process.poll() is not None:
            return
        assert self.process.stdin
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        if not self.log or not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# --- the two versions, each in a directory of its own --------------------------


@contextmanager
def checkout(name: str, spec: str, work: Path) -> Iterator[Side]:
    """The version ``spec`` names, in ``work/name``: a detached worktree of a commit
    (removed afterwards), or a copy of a working tree's files."""
    directory = work / name
    if Path(spec).is_dir():
        tree = Path(spec).resolve()
        head = git("rev-parse", "--short", "HEAD", cwd=tree)
        changed = len(git("status", "--porcelain", cwd=tree).splitlines())
        for relative in git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=tree).split("\0"):
            source = tree / relative
            if relative and source.is_file():  # a tracked file deleted in the tree is left out, as it is there
                (directory / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, directory / relative, follow_symlinks=False)
        state = f", with {changed} files changed or new" if changed else ", no uncommitted change"
        yield Side(name, f"the working tree on `{head}`", f"the working tree {tree} (HEAD `{head}`{state})", directory)
        return
    commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    short, subject = git("log", "-1", "--format=%h%x00%s", commit).split("\0")
    git("worktree", "add", "--detach", "--quiet", str(directory), commit)
    try:
        yield Side(
            name, f"`{short}`", f"commit `{short}` ({subject[:100]}{'…' if len(subject) > 100 else ''})", directory
        )
    finally:
        git("worktree", "remove", "--force", str(directory))


def dependencies(directory: Path) -> tuple[object, object]:
    project = tomllib.loads((directory / "pyproject.toml").read_text())["project"]
    return project.get("dependencies", []), project.get("optional-dependencies", {})


def install(side: Side, work: Path, own_venv: bool) -> None:
    """Make the side's code importable, and nothing else of it (see the module's docstring)."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    if not own_venv and dependencies(side.directory) == dependencies(REPO):
        site = work / f"site-{side.name}"
        pip(sys.executable, "install", "--no-deps", "--target", str(site), str(side.directory))
        side.env = env | {"PYTHONPATH": str(site)}
        side.installed = (
            "its package built by pip into a directory of its own, first on PYTHONPATH; the libraries of the "
            f"running virtualenv ({Path(sys.executable).parent.parent}), whose dependencies its pyproject.toml asks for"
        )
        return
    venv = work / f"venv-{side.name}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    side.python = str(venv / "bin" / "python")
    pip(side.python, "install", f"{side.directory}[server,test]")
    side.env = env
    reason = "--own-venvs" if own_venv else "its pyproject.toml asks for other dependencies than this tree's"
    side.installed = f"a virtualenv of its own, `pip install CHECKOUT[server,test]` ({reason})"


def pip(python: str, *args: str) -> None:
    done = subprocess.run([python, "-m", "pip", "--quiet", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def check_code(side: Side) -> None:
    """The side serves its own copy of the package and of the Lua scripts, not this tree's."""
    home = Path(side.env.get("PYTHONPATH") or Path(side.python).parent.parent)
    for what, path in side.ready["code"].items():
        if not Path(path).resolve().is_relative_to(home.resolve()):
            raise RuntimeError(f"the {side.name} side imports its {what} from {path}, not from {home}")


# --- the run -----------------------------------------------------------------------


def alternate(sides: tuple[Side, Side], o: argparse.Namespace, problems: list[str]) -> list[OpFigures]:
    """Warm-up slices, then ``o.rounds`` rounds: in each, every operation runs one slice
    on each side, before first in even rounds and after first in odd ones."""

    def run(side: Side, op: str, seconds: int, label: str) -> Slice:
        reply = side.slice(op, seconds, f"{label}, {side.name}")
        problems.extend(f"{side.name} side: {problem}" for problem in reply["problems"])
        return Slice.of(reply["result"])

    figures = [OpFigures(key, BY_KEY[key].title) for key in o.ops]
    if o.warmup:
        print(f"warm-up: a {o.warmup} s slice per side and operation", flush=True)
        for op in figures:
            for side in sides:
                run(side, op.key, o.warmup, "warm-up")
    started = time.monotonic()
    for r in range(o.rounds):
        for op in figures:
            order = sides if r % 2 == 0 else sides[::-1]
            got = {side.name: run(side, op.key, o.seconds, f"round {r + 1}") for side in order}
            pair = Pair(r, r % 2 == 0, got["before"], got["after"])
            op.pairs.append(pair)
            print(
                f"round {r + 1}/{o.rounds}, {op.title}: before {pair.before.rps:,.0f} req/s, after "
                f"{pair.after.rps:,.0f} ({pair.ratio(lambda s: s.rps):.3f}), other processes {pair.other:.2f} cores",
                flush=True,
            )
        left = (time.monotonic() - started) / (r + 1) * (o.rounds - r - 1)
        print(f"  round {r + 1} done; about {left / 60:.1f} min left", flush=True)
    return figures


def machine(sides: tuple[Side, Side]) -> list[str]:
    lines = [
        (
            f"- **Machine**: {platform_cores()} cores ({cpu_model()}), {platform.system()} {platform.release()}; "
            "wrk, both servers and both Redis share these cores, and one side is under load at a time"
        ),
        f"- **Software**: Redis {RedisServer.version_of(REDIS_SERVER)} (one per side), wrk {load.version()}",
    ]
    described = [describe(side) for side in sides]
    if described[0] == described[1]:
        return [*lines, f"- **Both sides**: {described[0]}"]
    lines += [f"- **{side.name.capitalize()} side**: {text}" for side, text in zip(sides, described)]
    return [*lines, "- **The sides run differently** (above): a difference below may be that, not the code"]


def describe(side: Side) -> str:
    """How a side was installed and what it runs: the same text for both when only their code differs."""
    seen = side.ready
    packages = ", ".join(f"{name} {v}" for name, v in seen["packages"].items() if name != "concord")
    loop_http = seen["loop_http"].split(" (read from")[0]  # the checkout's words, without its floor
    return f"{side.installed}; Python {seen['python']}, {packages}; event loop and HTTP parser: {loop_http}"


def method(o: argparse.Namespace) -> list[str]:
    warmup = f"a {o.warmup} s warm-up slice per side and operation" if o.warmup else "no warm-up"
    return [
        (
            "- **Sides**: each version in a directory of its own (a detached `git worktree` of its commit, or a "
            "copy of a working tree's files), served by its own `concord serve` (1 worker, uvicorn) on its own "
            "`redis-server`, with the settings, data, credentials and wrk scripts of its own `tests/bench` "
            f"(`run.Bench` and `prepare.py` of that commit, driven by `tests/bench/ab_side.py`): {o.agents:,} agents, "
            "a lease each, the contended contact, consensus requests to read and, before every vote slice, "
            "fresh ones to vote on. Both sides are up for the whole run; the one not measured idles."
        ),
        (
            f"- **Slices**: wrk, {o.threads} threads, {o.connections} connections, {o.seconds} s a slice, the same "
            f"on both sides; after {warmup}, "
            f"{o.rounds} rounds, each running every operation once on each side: before then after in even "
            "rounds, after then before in odd ones (A B, B A, A B, ...), so a drift of the machine that is "
            "linear over a round adds to the after side in one pair what it takes from it in the next. "
            "Every slice's answers are checked as run.py checks them."
        ),
        (
            "- **Figures**: a pair is the two slices of one operation in one round; its ratio is after / before. "
            "An operation's figure is the median of its pairs' ratios; its 95% interval is the 2.5th to 97.5th "
            f"percentile of the medians of {RESAMPLES:,} resamples of the pairs (a percentile bootstrap, fixed "
            "seed). CPU per request is each process's CPU time during a slice (from /proc) over its requests."
        ),
        (
            f"- **The {BUDGET:.0%} rule**: *within {BUDGET:.0%}* when the whole interval of after / before "
            f"throughput is at or above {1 - BUDGET:.2f}; *costs X%* (X from the median) when the whole interval "
            f"is below {1 - BUDGET:.2f}; *cannot tell* when the interval holds {1 - BUDGET:.2f}: this run can "
            "neither show nor rule out a cost above the rule (it names the cost the interval shows, if it lies "
            "below 1), and more rounds narrow the interval."
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    o = parse(argv)
    missing = [name for name, path in (("wrk", load.WRK), ("redis-server", REDIS_SERVER)) if path is None]
    if missing:
        print(f"ab.py: {' and '.join(missing)} not found on PATH (apt-get install wrk redis-server)", file=sys.stderr)
        return 2
    per_round = len(o.ops) * 2 * (o.seconds + OVERHEAD_SECONDS)
    print(
        f"{o.rounds} rounds of {len(o.ops)} operations × 2 sides: about {o.rounds * per_round / 60:.1f} min", flush=True
    )
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="concord-ab-") as temporary, ExitStack() as stack:
        work = Path(temporary)
        sides = (
            stack.enter_context(checkout("before", o.before, work)),
            stack.enter_context(checkout("after", o.after, work)),
        )
        try:
            for side in sides:
                print(f"{side.name}: {side.what}: installing", flush=True)
                install(side, work, o.own_venvs)
            print(f"preparing the data of both sides ({o.agents:,} agents each) and starting their servers", flush=True)
            for side in sides:
                side.start(work, o)
                stack.callback(side.stop)
            for side in sides:
                side.wait_ready()
                check_code(side)
                problems.extend(f"{side.name} side: {problem}" for problem in side.ready["problems"])
            figures = alternate(sides, o, problems)
        except BaseException:
            for side in sides:
                print(f"--- the {side.name} side's log (last lines)\n{side.tail()}", file=sys.stderr)
            raise
        report = ABReport(
            title=f"{sides[0].short} → {sides[1].short}",
            command=command_line(argv, "tests/bench/ab.py"),
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            before=sides[0].what,
            after=sides[1].what,
            machine=machine(sides),
            method=method(o),
            ops=figures,
            problems=problems,
        )
    text = render(report)
    output = Path(o.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {output}")
    if problems:
        print(f"!!! {len(problems)} UNEXPECTED ANSWER(S); see 'Unexpected answers' in {output}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
