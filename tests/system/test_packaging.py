"""The wheel, as `pip install concord` gives it: built from this checkout,
installed with no extra into a fresh venv, and used there.

What it promises (pyproject.toml): the SDK on httpx and msgspec only, nothing of
the server importable, and yet every file of the package shipped (the server's
modules as files, the Lua scripts as concord/lua/*.lua, py.typed), so that
`pip install 'concord[server]'` needs nothing but the extra's dependencies. The
wheel is built once per session from a copy of the checkout (the build writes
build/ and *.egg-info beside its sources, and a stale build/ would ship deleted
modules); the venv is made once for the module. pip fetches httpx and msgspec
from the package index: without a network the tests say so (helpers.unavailable).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support.helpers import Stack, concord_env, running_stack, unavailable

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE = REPOSITORY / "service" / "concord"
LUA = REPOSITORY / "lua"
# What `pip install concord` must not bring: the server's dependencies (the extra `server`).
SERVER_ONLY = ("starlette", "uvicorn", "redis", "fakeredis", "lupa", "uvloop", "httptools", "hiredis")
# What the build must not see: the checkout's own environments, caches and build output.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"
)
# pip's words for "the package index could not be reached", as opposed to a build or install that failed.
OFFLINE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
)
API_KEY = "pkg-test-key-0123456789"
TIMEOUT = 120


def _run(command: list[str | Path], what: str, *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a step of the setup; a failure fails the test with pip's output, unless
    the output says the package index was unreachable (then: unavailable)."""
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT
    )
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        if any(marker in output for marker in OFFLINE):
            unavailable(f"{what} needs the package index, which is unreachable: {result.stderr.strip()[-300:]}")
        pytest.fail(f"{what} failed ({result.returncode}):\n{output[-4000:]}")
    return result


def _clean_env() -> dict[str, str]:
    """This environment without what would let the venv see anything but itself:
    no PYTHON* search paths, no active virtualenv, none of the caller's CONCORD_*."""
    env = concord_env({})
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout (its working tree, committed or not), built once per session."""
    work = tmp_path_factory.mktemp("wheel")
    sources = work / "sources"
    shutil.copytree(REPOSITORY, sources, ignore=NOT_SOURCES)
    out = work / "dist"
    # Build isolation, as a user's `pip install .` does: the build uses the setuptools
    # pyproject.toml asks for, not whatever this environment has.
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, sources]
    _run(command, "building the wheel", env=_clean_env(), cwd=work)
    (built,) = out.glob("concord-*.whl")
    return built


@dataclass
class Venv:
    """A fresh venv with the wheel installed, no extra: what `pip install concord` gives."""

    root: Path
    cwd: Path  # an empty directory to run in, so nothing of the checkout is on sys.path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def concord(self) -> Path:
        return self.root / "bin" / "concord"

    def run(self, *command: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            timeout=TIMEOUT,
        )

    def program(self, source: str, env: dict[str, str] | None = None) -> dict:
        """Run ``source`` in the venv's python (isolated mode: no PYTHON* variables,
        no current directory on sys.path); it prints one JSON document, returned."""
        result = self.run(self.python, "-I", "-c", source, env=env)
        assert result.returncode == 0, f"the program failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sdk_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("sdk-venv")
    root, cwd = base / "venv", base / "cwd"
    cwd.mkdir()
    try:
        venv.create(root, with_pip=True, clear=True)
    except (OSError, subprocess.CalledProcessError) as exc:  # ensurepip missing (Debian's python3-venv)
        unavailable(f"cannot create a venv with pip: {exc}")
    env = _clean_env()
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(root)
    _run([root / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], "installing the wheel", env=env, cwd=cwd)
    return Venv(root, cwd, env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("packaging"), {"CONCORD_API_KEYS": f"acme:{API_KEY}"}) as running:
        yield running


# --- the wheel -------------------------------------------------------------------


def test_the_wheel_ships_every_module_the_type_marker_and_the_lua_scripts(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"concord/{path.relative_to(PACKAGE).as_posix()}" for path in PACKAGE.rglob("*.py")}
    scripts = {f"concord/lua/{path.name}" for path in [*LUA.glob("*.lua"), *LUA.glob("*.py")]}
    assert any(name.startswith("concord/server/") for name in modules)  # the checkout is what we think it is
    assert len(scripts) > 2
    assert sorted(modules - names) == [], "modules missing from the wheel (pyproject.toml's packages?)"
    assert sorted(scripts - names) == [], "Lua scripts missing from the wheel (package data of concord.lua)"
    assert "concord/py.typed" in names
    dist_info = wheel.name.split("-py")[0] + ".dist-info/"
    assert sorted(name for name in names if not name.startswith(("concord/", dist_info))) == []


def test_the_wheel_depends_on_httpx_and_msgspec_only_without_an_extra(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    requires = [Requirement(line.removeprefix("Requires-Dist:")) for line in lines if line.startswith("Requires-Dist:")]
    assert sorted(req.name for req in requires if req.marker is None) == ["httpx", "msgspec"]
    assert {req.name for req in requires if req.marker is not None} >= set(SERVER_ONLY) - {
        "lupa"
    }  # lupa: fakeredis[lua]


# --- the SDK, installed without the server -----------------------------------------

PROGRAM = """
import json, os, sys
from concord import Concord, LeaseConflict

SERVER_ONLY = {server_only!r}
contact = "pat@example.com"
with Concord() as concord:  # CONCORD_URL and CONCORD_API_KEY, as a user sets them
    sdr, retention = concord.register("sdr-agent", role="sdr"), concord.register("retention-agent")
    with sdr.lease(contact, duration=60, intent="outbound") as lease:
        try:
            retention.lease(contact).acquire()
        except LeaseConflict as conflict:
            holder = conflict.holder.agent_id
        else:
            sys.exit("the second agent got a lease the first one holds")
        allowed = sdr.send_check(contact, lease.fencing_token)
        refused = retention.send_check(contact)
    after = retention.send_check(contact)
loaded = [name for name in sys.modules if name.split(".")[0] in SERVER_ONLY or name.startswith("concord.server")]
print(json.dumps({{
    "sdr": sdr.id,
    "holder": holder,
    "allowed": allowed.allowed,
    "refused": [refused.allowed, refused.reason],
    "released": lease.released.released,
    "after_release": after.allowed,
    "loaded": sorted(loaded),
    "concord": os.path.dirname(sys.modules["concord"].__file__),
}}))
"""


def test_the_sdk_alone_coordinates_two_agents_against_a_running_service(sdk_venv: Venv, stack: Stack):
    env = {"CONCORD_URL": stack.service.url, "CONCORD_API_KEY": API_KEY}
    result = sdk_venv.program(PROGRAM.format(server_only=SERVER_ONLY), env)
    assert Path(result["concord"]).is_relative_to(sdk_venv.root)  # the wheel's copy, not the checkout
    assert result["holder"] == result["sdr"]
    assert result["allowed"] is True and result["refused"] == [False, "lease_conflict"]
    assert result["released"] is True and result["after_release"] is True
    assert result["loaded"] == []


IMPORTS = """
import importlib.util, json, os, sys
import concord
from concord import AsyncConcord, Concord, LeaseConflict, NotConfigured

SERVER_ONLY = {server_only!r}
package = os.path.dirname(concord.__file__)
print(json.dumps({{
    "importable": [name for name in SERVER_ONLY if importlib.util.find_spec(name) is not None],
    "loaded": sorted(name for name in sys.modules if name.split(".")[0] in SERVER_ONLY or name.startswith("concord.")),
    "server_files": sorted(os.listdir(os.path.join(package, "server"))),
    "version": concord.__version__,
    "package": package,
}}))
"""


def test_nothing_of_the_server_is_importable_and_import_concord_loads_only_the_sdk(sdk_venv: Venv, wheel: Path):
    result = sdk_venv.program(IMPORTS.format(server_only=SERVER_ONLY))
    assert Path(result["package"]).is_relative_to(sdk_venv.root)
    assert result["importable"] == []
    assert "app.py" in result["server_files"] and "store" in result["server_files"]  # shipped, as files
    assert [name for name in result["loaded"] if name.split(".")[1] in ("server", "cli")] == []
    assert [name for name in result["loaded"] if name.split(".")[0] in SERVER_ONLY] == []
    assert result["version"] == wheel.name.split("-")[1]


# --- the CLI, installed without the server -------------------------------------------


def test_concord_version_and_help_work_without_the_server(sdk_venv: Venv, wheel: Path):
    version = sdk_venv.run(sdk_venv.concord, "--version")
    assert version.returncode == 0, version.stderr
    assert wheel.name.split("-")[1] in version.stdout
    help_ = sdk_venv.run(sdk_venv.concord)
    assert help_.returncode == 0, help_.stderr
    assert "usage: concord" in help_.stdout + help_.stderr and "Traceback" not in help_.stderr


def test_concord_serve_without_the_server_names_the_command_that_installs_it(sdk_venv: Venv):
    serve = sdk_venv.run(sdk_venv.concord, "serve")
    assert serve.returncode != 0
    lines = serve.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'concord[server]'" in lines[0], serve.stderr
