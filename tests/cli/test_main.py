"""`concord` itself (`--version`, no command), and the command as `pip install
concord` (no extra) has it: the client commands and `--help` load nothing of the
server, and still work when the server's dependencies cannot be imported at all;
the server commands then say in one line what to install.

Each run is a subprocess of a small `-c` program that can refuse the server's
dependencies (a meta-path finder raising ModuleNotFoundError, as for a package that
is not installed), runs concord.cli.main, and then writes the names in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from concord.cli import main
from concord.cli.common import server_missing
from tests.support.helpers import ServiceProcess, concord_env, service

TENANT, API_KEY = "acme", "acme-main-key-0123456789"
REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60
# What `pip install 'concord[server]'` adds (pyproject.toml), as top-level module names.
SERVER_DEPENDENCIES = ("starlette", "uvicorn", "redis", "fakeredis", "lupa", "uvloop", "httptools", "hiredis")

PROGRAM = """
import json, sys

refused = frozenset(json.loads(sys.argv[1]))


class NotInstalled:
    # First on sys.meta_path: an import of a refused package fails as if it were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
from concord.cli import main

try:
    status = main(sys.argv[3:])
except SystemExit as exc:
    status = exc.code
with open(sys.argv[2], "w") as loaded:
    json.dump(sorted(sys.modules), loaded)
sys.exit(status)
"""


def run_cli(
    *args: str, refuse: tuple[str, ...] = (), settings: dict[str, str], modules: Path
) -> subprocess.CompletedProcess[str]:
    """`concord ARGS` with exactly these CONCORD_* settings, the ``refuse`` packages not
    importable; the modules it loaded are written to ``modules``."""
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(refuse), str(modules), *args],
        cwd=REPO,
        env=concord_env(settings),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def server_modules(modules: Path) -> list[str]:
    """The loaded modules that belong to the server or its dependencies."""
    loaded = json.loads(modules.read_text())
    return [
        name
        for name in loaded
        if name.partition(".")[0] in SERVER_DEPENDENCIES
        or name == "concord.server"
        or name.startswith("concord.server.")
    ]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A `concord serve` on its embedded store (a process of its own, with every dependency)."""
    directory = tmp_path_factory.mktemp("main")
    with service({"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}"}, directory / "concord.log") as proc:
        yield proc


def client_settings(api: ServiceProcess) -> dict[str, str]:
    return {"CONCORD_URL": api.url, "CONCORD_API_KEY": API_KEY}


# Each client command once, in the order a script would run them; {agent}, {contact} and
# {credential_file} are filled in. The commands after `register` act with its credential.
CLIENT_COMMANDS = [
    ([], 0),
    (["--help"], 0),
    (["--version"], 0),
    (["agents", "--help"], 0),
    (["agents", "register", "{name}"], 0),
    (["agents", "heartbeat"], 0),
    (["agents", "list"], 0),
    (["lease", "acquire", "--contact", "{contact}", "--credential-file", "{credential_file}"], 0),
    (["lease", "check", "--agent", "{agent}", "--contact", "{contact}"], 0),
    (["lease", "list", "--contact", "{contact}"], 0),
    (["consensus", "request", "--action", "pause", "--timeout", "60"], 0),
    (["consensus", "list"], 0),
    (["agents", "rotate", "{agent}", "--save-credential", "{credential_file}"], 0),
    (["agents", "show", "agent_00000000-0000-0000-0000-000000000000"], 1),  # a problem answer
]


@pytest.mark.parametrize("refuse", [(), SERVER_DEPENDENCIES], ids=["with-the-server-installed", "without-it"])
def test_client_commands_import_nothing_of_the_server(api: ServiceProcess, tmp_path: Path, refuse: tuple[str, ...]):
    """With every dependency installed, nothing of the server is loaded; with the
    server's dependencies refused, every client command still works."""
    env = client_settings(api)
    name = f"imports-{uuid.uuid4().hex[:8]}"
    fill = {"name": name, "agent": "", "contact": f"{name}@example.com", "credential_file": str(tmp_path / "a.cred")}
    for args, status in CLIENT_COMMANDS:
        modules = tmp_path / "modules.json"
        run = run_cli(*(arg.format(**fill) for arg in args), refuse=refuse, settings=env, modules=modules)
        assert run.returncode == status, (args, run.returncode, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr, (args, run.stderr)
        assert server_modules(modules) == [], args
        if args[:2] == ["agents", "register"]:
            registered = json.loads(run.stdout)
            fill["agent"], env["CONCORD_AGENT_CREDENTIAL"] = registered["id"], registered["credential"]
            (tmp_path / "a.cred").write_text(registered["credential"])


# --- the server commands without the server ----------------------------------------------

INSTALL = "pip install 'concord[server]'"
# Settings under which each command would otherwise go on (to a Redis that does not answer).
NO_REDIS = {"CONCORD_REDIS_URL": "redis://127.0.0.1:9/0"}


@pytest.mark.parametrize(
    "refuse",
    [SERVER_DEPENDENCIES, ("starlette",), ("uvicorn",), ("redis",)],
    ids=["all", "starlette", "uvicorn", "redis"],
)
def test_serve_without_the_server_says_what_to_install_in_one_line(tmp_path: Path, refuse: tuple[str, ...]):
    run = run_cli("serve", "--port", "9", refuse=refuse, settings={}, modules=tmp_path / "modules.json")
    assert (run.returncode, run.stdout) == (2, ""), run
    assert run.stderr == f"concord serve needs the server: {INSTALL}\n", run.stderr


@pytest.mark.parametrize(
    "args", [["keys", "list"], ["keys", "create", "--tenant", TENANT], ["inspect", "--tenant", TENANT]]
)
@pytest.mark.parametrize("refuse", [SERVER_DEPENDENCIES, ("redis",)], ids=["all", "redis"])
def test_keys_and_inspect_without_the_server_say_what_to_install_as_their_problem(
    tmp_path: Path, args: list[str], refuse: tuple[str, ...]
):
    run = run_cli(*args, refuse=refuse, settings=NO_REDIS, modules=tmp_path / "modules.json")
    assert (run.returncode, run.stdout) == (2, ""), run
    assert len(run.stderr.splitlines()) == 1, run.stderr
    problem = json.loads(run.stderr)
    assert problem["code"] == "not_installed" and problem["type"] == "urn:concord:problem:not_installed", problem
    assert problem["detail"].startswith(f"concord {args[0]} needs the server: {INSTALL}"), problem


def test_an_import_error_of_our_own_is_not_taken_for_a_missing_extra(capsys: pytest.CaptureFixture[str]):
    """A broken import inside concord must keep its traceback, not become a wrong hint."""
    for name in ("concord.server.app", "msgspec", None):
        error = ImportError("cannot import name 'x'", name=name)
        with pytest.raises(ImportError) as raised:
            server_missing("serve", error)
        assert raised.value is error
    assert capsys.readouterr().err == ""


# --- concord itself --------------------------------------------------------------------


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"concord {version('concord')}\n"


def test_no_command_prints_the_help_on_stdout_and_exits_0(capsys: pytest.CaptureFixture[str]):
    assert main([]) == 0
    shown = capsys.readouterr()
    assert shown.err == "", shown.err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert shown.out == capsys.readouterr().out and shown.out.startswith("usage: concord"), shown.out
