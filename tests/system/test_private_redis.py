"""The private redis-server the tests start: a port someone else took between
choosing it and binding it costs a retry on another port, not a failed run
(CI once lost a cluster test to exactly that)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.helpers import REDIS_SERVER, RedisServer, unavailable


@pytest.fixture(autouse=True)
def _binary() -> None:
    """These tests start redis-server themselves: without it they skip, or fail where
    CI requires the real parts (CONCORD_TEST_REQUIRE_REDIS=1)."""
    if REDIS_SERVER is None:
        unavailable("needs a redis-server binary on PATH to start")


def occupy(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.parametrize("taken", ["port", "cluster bus port"])
def test_a_port_taken_before_the_first_start_is_replaced_by_a_free_one(tmp_path: Path, taken: str):
    server = RedisServer(tmp_path, "--cluster-enabled", "yes", "--save", "", cluster_bus=True)
    chosen = server.port if taken == "port" else server.bus_port
    with occupy(chosen):
        server.start()
        try:
            assert chosen not in (server.port, server.bus_port)
            with server.client() as client:
                assert client.ping()
                assert client.info("cluster")["cluster_enabled"] == 1
        finally:
            server.kill()


def test_a_restart_keeps_its_port_and_says_why_it_cannot_start(tmp_path: Path):
    server = RedisServer(tmp_path).start()
    port = server.port
    server.kill()
    with occupy(port):
        with pytest.raises(AssertionError, match=f"port {port} did not start"):
            server.start()
    assert server.port == port
