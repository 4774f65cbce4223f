"""The README's walkthrough, run as written against `concord serve`.

Its bash blocks run in one shell against a fresh service on the embedded store
(as the quickstart starts it); every `<!-- expect: ... -->` must appear in the
output, in order. A README that drifts from the service fails here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import ServiceProcess, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> tuple[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    expects = re.findall(r"<!-- expect: (.*?) -->", section)
    return "\n".join(blocks), expects


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
        script = script.replace("export CONCORD=http://127.0.0.1:8080 KEY=ck_...", f"export CONCORD={service.url} KEY={key}")
        script = script.replace("/tmp/lease.json", str(tmp_path / "lease.json"))
        run = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        position = 0
        for expected in expects:
            found = run.stdout.find(expected, position)
            assert found >= 0, f"README promises {expected!r}; the walkthrough printed:\n{run.stdout}"
            position = found + len(expected)
    finally:
        service.stop()
