"""The README's promises, checked: its examples run, its quickstart is what CI runs,
its links and those of docs/ lead somewhere, and the reference pages it sends
readers to miss no error code (docs/errors.md) and no setting (docs/configuration.md).

The walkthrough and the "Using Concord from an agent" examples run as written
against `concord serve`: bash blocks in one shell against a fresh service on the
embedded store (as the quickstart starts it), the SDK example as a Python script;
every `<!-- expect: ... -->` of a section must appear in its output, in order. A
README that drifts from the service fails here.

The quickstart's two commands are fixed lines that other files rely on (.ci/run
runs the test line verbatim), so they are pinned here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import concord.server.settings
from tests.support.helpers import ServiceProcess, wait_until

try:
    from concord.protocol.errors import ERRORS  # the wire contract's table of codes
except ImportError:  # until the package layout of docs/architecture.md lands
    from concord.server.errors import ERRORS

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"
DOCS = sorted((REPO / "docs").glob("*.md"))

# The quickstart's commands, verbatim: one installs and starts the service on the
# embedded store, one installs the test tools and runs the tests. CI calls the second.
SERVE_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[server]' && .venv/bin/concord serve"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
# The README is the front door, not the manual: reference material lives in docs/.
README_MAX_LINES = 300


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


def quickstart_commands() -> list[str]:
    """The command lines of the Quickstart's bash blocks (comments and blank lines left out)."""
    lines = "\n".join(blocks(section("Quickstart"), "bash")).splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_the_quickstart_is_one_command_to_serve_and_one_to_test():
    assert quickstart_commands() == [SERVE_COMMAND, TEST_COMMAND]


def test_the_quickstart_opens_the_readme_and_the_readme_stays_short():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines: move reference material to docs/"
    first_screen = "\n".join(lines[:60])
    assert "## Quickstart" in first_screen and SERVE_COMMAND in first_screen, "the quickstart left the first screen"


def test_ci_runs_the_readme_test_command_last():
    """.ci/run's last command is the README's test command, character for character,
    so "the tests pass" means the same thing in CI and on a fresh clone."""
    (test_command,) = [line for line in quickstart_commands() if line.endswith("pytest")]
    commands = [
        line.strip()
        for line in CI.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test_command in commands, f".ci/run does not run the README's test command {test_command!r}"
    assert commands[-1] == test_command, f".ci/run ends with {commands[-1]!r}, not {test_command!r}"


FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The Markdown outside code blocks and code spans, where links are links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file: lower case, punctuation
    dropped, spaces as hyphens, a repeated heading numbered -1, -2, ..."""
    found: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = repeats.get(slug, 0)
        repeats[slug] = count + 1
        found.add(f"{slug}-{count}" if count else slug)
    return found


def test_every_relative_link_of_the_readme_and_docs_resolves():
    assert DOCS, "docs/ has no pages"
    broken = []
    for page in [README, *DOCS]:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where} (no such heading in {resolved.relative_to(REPO)})")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_the_error_page_lists_every_code_with_its_status():
    rows = re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| ([^|]+) \|", (REPO / "docs/errors.md").read_text(), re.M)
    documented = {code: status.strip() for codes, status in rows for code in re.findall(r"`([a-z_]+)`", codes)}
    # code -> (status, title), or an entry with a .status
    statuses = {code: entry[0] if isinstance(entry, tuple) else entry.status for code, entry in ERRORS.items()}
    wrong = {
        code: (status, documented.get(code)) for code, status in statuses.items() if documented.get(code) != str(status)
    }
    assert not wrong, f"docs/errors.md disagrees with ERRORS (code: (status, documented)): {wrong}"


def test_the_configuration_page_names_every_setting():
    names = set(re.findall(r"CONCORD_[A-Z_]+", Path(concord.server.settings.__file__).read_text()))
    page = (REPO / "docs/configuration.md").read_text()
    missing = sorted(name for name in names if f"`{name}`" not in page)
    assert names and not missing, f"docs/configuration.md does not name {missing}"
