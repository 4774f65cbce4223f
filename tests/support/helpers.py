"""Real parts for the tests: private redis-server processes, `concord serve`
processes, and polling with a deadline (never a bare sleep)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from concord.server.store.keys import Keys

if TYPE_CHECKING:
    from tests.support.api import Fleet

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def eventually(
    check: Callable[[], Awaitable[object]], timeout: float = 10.0, what: str = "condition", every: float = 0.02
) -> object:
    """Async ``wait_until``: await ``check()`` every ``every`` s until truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


async def snapshot(redis_client, match: str, *, expiry: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every key matching ``match`` -> (type, contents), or (type, contents, absolute
    expiry in ms or -1) with ``expiry``; zsets as {member: score}. Taken before and
    after an operation, it shows whether anything was written."""
    found: dict[str, tuple[Any, ...]] = {}
    async for key in redis_client.scan_iter(match=match, count=1000):
        kind = await redis_client.type(key)
        if kind == "hash":
            value: Any = await redis_client.hgetall(key)
        elif kind == "zset":
            value = dict(await redis_client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            value = await redis_client.get(key)
        elif kind == "list":
            value = await redis_client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await redis_client.smembers(key))
        elif kind == "stream":
            value = await redis_client.xrange(key)
        else:
            value = None
        found[key] = (kind, value, await redis_client.pexpiretime(key)) if expiry else (kind, value)
    return found


class RedisServer:
    """A private redis-server on a free port, with its own directory; never the shared one."""

    def __init__(self, directory: Path, *config: str, port: int | None = None, cluster_bus: bool = False) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # A cluster node's bus port, chosen free too (port + 10000 may lie past 65535).
        self.bus_port = free_port() if cluster_bus else None
        # Ports picked free may be taken by someone else before redis-server binds
        # them; until the first start succeeds, such a start is retried on new ones.
        self._ports_settled = port is not None
        self.config = config or ("--save", "", "--appendonly", "no")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, **kwargs)

    def start(self) -> RedisServer:
        for _attempt in range(5):
            if self._launch():
                self._ports_settled = True  # a restart comes back on the same ports
                return self
            if self._ports_settled:
                break
            self.port = free_port()
            self.bus_port = self.bus_port and free_port()
            (self.directory / "nodes.conf").unlink(missing_ok=True)  # may name the ports just lost
        raise AssertionError(f"redis-server on port {self.port} did not start:\n{self._log_tail()}")

    def _launch(self) -> bool:
        """Start the process; True once it answers PING, False if it exited first."""
        bus = ("--cluster-port", str(self.bus_port)) if self.bus_port else ()
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *bus,
                *self.config,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # One try a PING: whatever else holds the port may never answer, and the
        # client's own retries would outlast the deadline.
        client = self.client(socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            wait_until(
                lambda: self.process.poll() is not None or _pings(client),
                timeout=10,
                what=f"redis-server on port {self.port}",
            )
        finally:
            client.close()
        return self.process.poll() is None

    def _log_tail(self, lines: int = 5) -> str:
        log = self.directory / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), saving only if the config asks for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def version(self) -> str:
        return self.version_of(REDIS_SERVER)

    @staticmethod
    def version_of(binary: str) -> str:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        return out.split("v=")[1].split()[0] if "v=" in out else out.strip()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


class ServiceProcess:
    """`concord serve` in a subprocess, on a free port, started and checked ready.

    It sees none of the caller's CONCORD_* variables, only ``settings``, so a test
    controls exactly what the service is configured with."""

    def __init__(self, settings: dict[str, str], workers: int = 1, log: Path | None = None) -> None:
        self.port = free_port()
        self.env = concord_env(settings)
        if log is not None:  # its temporary files (the metrics directory) go next to its log
            self.env.setdefault("TMPDIR", str(log.parent))
        self.workers = workers
        self.log = log
        self.process: subprocess.Popen | None = None
        self.fleets: dict[str | None, Fleet] = {}  # api key -> what its clients learned

    # What is started, and the path that answers 200 once it is ready.
    ready_path = "/readyz"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "concord", "serve", "--port", str(self.port), "--workers", str(self.workers)]

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command,
                cwd=Path(__file__).resolve().parents[2],  # the repository: `-m tests...` resolves too
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log:
                output.close()  # the child has its own copy of the descriptor
        try:
            wait_until(self._ready, timeout=timeout, what=f"{' '.join(self.command[2:4])} on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise AssertionError(f"{' '.join(self.command[2:4])} exited with {self.process.returncode}; see {self.log}")
        try:
            return httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log else ""

    def client(self, api_key: str | None, fleet: Fleet | None = None) -> httpx.AsyncClient:
        """An HTTP client of this service that authenticates as a fleet does
        (support/api.py Fleet): each agent with its own credential, the rest with
        ``api_key``. The clients of one key share what they learn (one Fleet per key
        per process, or ``fleet``), as a fleet's processes share their agents'
        credentials; a request that hangs past HANG_SECONDS fails."""
        if fleet is None:
            fleet = self.fleets.setdefault(api_key, _fleet(api_key))
        return httpx.AsyncClient(base_url=self.url, auth=fleet, timeout=HANG_SECONDS)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


# A request that has not answered after this long is hung: that is the failure the
# process tests look for, never a fine timing.
HANG_SECONDS = 10.0


def _fleet(api_key: str | None) -> Fleet:
    from tests.support.api import Fleet  # support/api.py imports this module

    return Fleet(api_key)


def concord_env(settings: dict[str, str]) -> dict[str, str]:
    """This environment without the caller's CONCORD_* variables, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONCORD_")}
    env.update(settings)
    return env


def unavailable(message: str) -> NoReturn:
    """A real part this test needs is missing: skip, or fail when CI requires the
    real parts (CONCORD_TEST_REQUIRE_REDIS=1), so that nothing is skipped there unseen."""
    if os.environ.get("CONCORD_TEST_REQUIRE_REDIS") == "1":
        pytest.fail(f"{message} (CONCORD_TEST_REQUIRE_REDIS=1)")
    pytest.skip(message)


@contextmanager
def redis_server(directory: Path, *config: str, port: int | None = None) -> Iterator[RedisServer]:
    """A private redis-server for the block; killed afterwards whatever state it is in
    (SIGKILL also ends a server a test left SIGSTOPped). Tests that stop and start
    servers need the binary: without it they skip, or fail if a real Redis is required."""
    if REDIS_SERVER is None:
        unavailable("needs a redis-server binary on PATH to start, stop and restart")
    server = RedisServer(directory, *config, port=port)
    try:
        yield server.start()
    finally:
        server.kill()


@contextmanager
def service(settings: dict[str, str], log: Path, workers: int = 1) -> Iterator[ServiceProcess]:
    """A running `concord serve` for the block, stopped afterwards."""
    proc = ServiceProcess(settings, workers, log)
    try:
        yield proc.start()
    finally:
        proc.stop()


@dataclass
class Stack:
    """A private redis-server and a `concord serve` on it, under a key prefix of their own."""

    redis: RedisServer
    service: ServiceProcess
    keys: Keys
    directory: Path


@contextmanager
def running_stack(directory: Path, settings: dict[str, str], *redis_config: str, workers: int = 1) -> Iterator[Stack]:
    """Start a Stack for the block (``settings`` add to CONCORD_REDIS_URL and
    CONCORD_KEY_PREFIX, which it fills in); everything is stopped afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with redis_server(directory / "redis", *redis_config) as server:
        env = {"CONCORD_REDIS_URL": server.url, "CONCORD_KEY_PREFIX": prefix, **settings}
        with service(env, directory / "concord.log", workers) as proc:
            yield Stack(server, proc, Keys(prefix), directory)
