"""The README's walkthrough and its "Using Concord from an agent" examples, run
as written against `concord serve`.

Bash blocks run in one shell against a fresh service on the embedded store (as
the quickstart starts it), the SDK example as a Python script; every
`<!-- expect: ... -->` of a section must appear in its output, in order. A README
that drifts from the service fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.helpers import ServiceProcess, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    return README.read_text(encoding="utf-8").split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def walkthrough() -> tuple[str, list[str]]:
    text = section("Walkthrough")
    return "\n".join(blocks(text, "bash")), re.findall(r"<!-- expect: (.*?) -->", text)


def assert_printed(output: str, expects: list[str]) -> None:
    position = 0
    for expected in expects:
        found = output.find(expected, position)
        assert found >= 0, f"README promises {expected!r}; the example printed:\n{output}"
        position = found + len(expected)


def test_walkthrough_has_blocks_and_expectations():
    script, expects = walkthrough()
    assert "curl" in script and "export CONCORD=" in script
    assert len(expects) >= 8


def test_walkthrough_gives_the_documented_answers(tmp_path: Path):
    log = tmp_path / "serve.log"
    service = ServiceProcess({}, log=log).start()  # no settings: the embedded store, as in the quickstart
    try:
        key = wait_until(lambda: re.search(r"for tenant 'demo': (\S+)", log.read_text()), what="the demo key")[1]
        script, expects = walkthrough()
        script = script.replace(
            "export CONCORD=http://127.0.0.1:8080 KEY=ck_...", f"export CONCORD={service.url} KEY={key}"
        )
        script = script.replace("/tmp/lease.json", str(tmp_path / "lease.json"))
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert_printed(run.stdout, expects)
    finally:
        service.stop()


def test_the_agent_examples_coordinate_three_agents_with_the_sdk_and_the_cli(tmp_path: Path):
    text = section("Using Concord from an agent")
    (program,), (shell,) = blocks(text, "python"), blocks(text, "bash")
    expects = re.findall(r"<!-- expect: (.*?) -->", text)
    assert len(expects) == 6 and "from concord import Concord" in program
    log = tmp_path / "serve.log"
    service = ServiceProcess({}, log=log).start()
    try:
        key = wait_until(lambda: re.search(r"for tenant 'demo': (\S+)", log.read_text()), what="the demo key")[1]
        env = {**os.environ, "CONCORD_URL": service.url, "CONCORD_API_KEY": key}
        (tmp_path / "agents.py").write_text(program)
        sdk = subprocess.run(
            [sys.executable, "agents.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert sdk.returncode == 0, sdk.stderr
        assert_printed(sdk.stdout, expects[:3])

        export = "export CONCORD_URL=http://127.0.0.1:8080 CONCORD_API_KEY=ck_..."
        assert export in shell
        concord = Path(sys.executable).parent / "concord"  # the command `pip install` made, as .venv/bin/concord
        shell = shell.replace(export, f"export CONCORD_URL={service.url} CONCORD_API_KEY={key}")
        shell = shell.replace(".venv/bin/concord", str(concord))
        cli = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + shell],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert_printed(cli.stdout, expects[3:])
    finally:
        service.stop()
