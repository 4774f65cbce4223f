"""A private Redis Cluster for the tests: real redis-server processes on free
ports, joined by `redis-cli --cluster create`, torn down by SIGKILL.

``redis_cluster(directory)`` is the context manager; the session-scoped ``cluster``
fixture shares one 3-master, 3-replica cluster with every test of a session (import
it into a test module, or into conftest.py). Tests that share it keep to key
prefixes of their own; a test that kills a node restarts it (``restart``) or uses a
cluster of its own, so the next test finds every slot served.

Without a redis-server or redis-cli binary (or with a Redis older than 7, which has
no ``cluster-port``), a test needing the cluster skips, or fails when
CONCORD_TEST_REQUIRE_REDIS=1 (tests/support/helpers.unavailable).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from tests.support.helpers import REDIS_SERVER, RedisServer, unavailable, wait_until

REDIS_CLI = shutil.which("redis-cli")
SLOTS = 16384
# Small, so a failover (a replica's promotion after its master is unreachable for
# this long) takes seconds in the failover tests, not the default 15 s.
NODE_TIMEOUT_MS = 2000
# Joining six nodes takes redis-cli a few seconds on its own (it polls once a second).
START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Topology:
    """One node's view of the cluster (CLUSTER NODES) for one node id."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # the master a replica follows; None for a master
    slots: tuple[tuple[int, int], ...]  # inclusive ranges; migrating/importing marks left out

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool({"fail", "fail?", "noaddr"} & self.flags)


def parse_cluster_nodes(text: str) -> dict[str, Topology]:
    """CLUSTER NODES's reply, by node id. Each line is
    ``<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    found: dict[str, Topology] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        node_id, address, flags, master = fields[:4]
        ranges = []
        for item in fields[8:]:
            if item.startswith("["):  # [slot->-id] or [slot-<-id]: a slot being moved, owned elsewhere
                continue
            start, _, end = item.partition("-")
            ranges.append((int(start), int(end or start)))
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        found[node_id] = Topology(
            node_id=node_id,
            port=port,
            flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master,
            slots=tuple(sorted(ranges)),
        )
    return found


def serving_masters(view: dict[str, Topology]) -> list[Topology]:
    """The masters of a CLUSTER NODES view that serve slots and are not marked failing."""
    return [t for t in view.values() if t.is_master and not t.failing and t.slots]


def cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class Node:
    """One redis-server of the cluster. Its id is fixed once the cluster is made;
    its role is read live, since a failover changes it."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.node_id = ""  # CLUSTER MYID, read once the process runs

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        """A plain client of this node alone: it answers for its own slots and
        replies MOVED for the others, which is what slot tests want to see."""
        return self.server.client(socket_timeout=5, **kwargs)

    @property
    def role(self) -> str:
        """ "master" or "replica" (ROLE), or "down" for a node whose process is gone."""
        if not self.alive:
            return "down"
        with self.client() as client:
            role = client.execute_command("ROLE")[0]
        return "master" if role == "master" else "replica"

    def __repr__(self) -> str:
        return f"Node(port={self.port}, id={self.node_id[:8]}, {'alive' if self.alive else 'down'})"


class Cluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Every node has its own directory (its nodes.conf lives there, so a restarted node
    rejoins with its identity) and a bus port chosen free, not port + 10000, which
    may lie past 65535 for a high free port."""

    def __init__(self, directory: Path, masters: int = 3, replicas_per_master: int = 1) -> None:
        if masters < 3:
            raise ValueError(f"redis-cli --cluster create needs at least 3 masters, got {masters}")
        self.directory = Path(directory)
        self.replicas_per_master = replicas_per_master
        self.nodes: list[Node] = []
        for i in range(masters * (1 + replicas_per_master)):
            config = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "no",
                "--save", "",
                # A replica's first sync would wait 5 s for more replicas to share it.
                "--repl-diskless-sync-delay", "0",
            )  # fmt: skip
            self.nodes.append(Node(RedisServer(self.directory / f"node{i}", *config, cluster_bus=True)))
        self.expected_masters = masters
        self.started_in: float | None = None  # seconds from the first process to cluster_state:ok
        self._lost_slots: dict[str, tuple[tuple[int, int], ...]] = {}  # killed master id -> its slots
        self._paused: set[str] = set()  # ids of nodes SIGSTOPped by pause()

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> Cluster:
        started = time.monotonic()
        for node in self.nodes:
            node.server.start()
            with node.client() as client:
                node.node_id = client.execute_command("CLUSTER", "MYID")
        command = [
            REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        self.wait_ready(START_TIMEOUT)
        self.started_in = time.monotonic() - started
        return self

    def stop(self) -> None:
        """SIGKILL every node: nothing is worth saving, and a SIGSTOPped node dies too."""
        for node in self.nodes:
            node.server.kill()

    def kill(self, node: Node) -> None:
        """SIGKILL one node, remembering the slots it served for wait_for_failover."""
        if node.node_id in (t.node_id for t in self.masters()):
            self._lost_slots[node.node_id] = self.topology()[node.node_id].slots
        node.server.kill()

    def pause(self, node: Node) -> None:
        """SIGSTOP one node (a replica that stops acknowledging, say); the other
        methods leave it alone until ``resume``, since it answers nothing."""
        os.kill(node.server.process.pid, signal.SIGSTOP)
        self._paused.add(node.node_id)

    def resume(self, node: Node) -> None:
        os.kill(node.server.process.pid, signal.SIGCONT)
        self._paused.discard(node.node_id)

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        """Start a killed node again on its port; its nodes.conf makes it rejoin (a
        master that failed over comes back as a replica of its successor)."""
        node.server.start()
        self.wait_ready(timeout)

    # --- what the cluster says ---------------------------------------------------

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port> of one live node; the cluster client finds the rest."""
        return self.live_nodes()[0].url

    def live_nodes(self) -> list[Node]:
        live = [node for node in self.nodes if node.alive and node.node_id not in self._paused]
        if not live:
            raise RuntimeError("every node of the cluster is down")
        return live

    def client(self, **kwargs) -> redis.cluster.RedisCluster:
        """A sync cluster client (decode_responses=True), started from every live node."""
        kwargs.setdefault("decode_responses", True)
        nodes = [redis.cluster.ClusterNode("127.0.0.1", node.port) for node in self.live_nodes()]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)

    def async_client(self, **kwargs) -> redis.asyncio.cluster.RedisCluster:
        """The asyncio cluster client, as the service would build one."""
        kwargs.setdefault("decode_responses", True)
        nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", node.port) for node in self.live_nodes()]
        return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **kwargs)

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.node_id == node_id)

    def topology(self, via: Node | None = None) -> dict[str, Topology]:
        """CLUSTER NODES as ``via`` (by default the first live node) sees it."""
        with (via or self.live_nodes()[0]).client() as client:
            return parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))

    def masters(self) -> list[Topology]:
        """The masters now serving slots, with their slot ranges, by first slot."""
        return sorted(serving_masters(self.topology()), key=lambda t: t.slots[0])

    def master_of_slot(self, slot: int) -> Node:
        for master in self.masters():
            if any(start <= slot <= end for start, end in master.slots):
                return self.node(master.node_id)
        raise LookupError(f"no live master serves slot {slot}")

    def replicas_of(self, master: Node) -> list[Node]:
        return [self.node(t.node_id) for t in self.topology().values() if t.master_id == master.node_id]

    # --- waiting -------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        """Until every live node says cluster_state:ok with all slots assigned, and
        agrees on the expected number of serving masters each with a connected
        replica (so a failover test has a replica to promote)."""
        wait_until(self._ready, timeout=timeout, what=f"cluster of {len(self.nodes)} nodes to be ready")

    def _ready(self) -> bool:
        everyone_up = all(node.alive for node in self.nodes) and not self._paused
        try:
            for node in self.live_nodes():
                with node.client() as client:
                    info = cluster_info(client)
                    role = client.execute_command("ROLE")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_assigned", 0)) != SLOTS:
                    return False
                if role[0] == "slave" and role[3] != "connected":  # ROLE: slave ip port state offset
                    return False
                view = self.topology(via=node)
                serving = serving_masters(view)
                served = sum(end - start + 1 for t in serving for start, end in t.slots)
                if len(serving) != self.expected_masters or served != SLOTS:
                    return False
                # A master whose old replica took over has none until that node restarts.
                if (
                    everyone_up
                    and self.replicas_per_master
                    and any(not any(r.master_id == m.node_id and not r.failing for r in view.values()) for m in serving)
                ):
                    return False
            return True
        except redis.exceptions.RedisError:
            return False

    def wait_for_failover(self, old_master: Node, timeout: float = 30.0) -> Node:
        """After ``kill(old_master)``: poll until a replica of it serves all its slots
        in every live node's view and every live node says cluster_state:ok. Returns
        the promoted node."""
        lost = self._lost_slots.get(old_master.node_id)
        if lost is None:
            raise ValueError(f"{old_master} was not a master when it was killed with Cluster.kill")

        def promoted() -> Node | None:
            try:
                owners = set()
                for node in self.live_nodes():
                    with node.client() as client:
                        if cluster_info(client).get("cluster_state") != "ok":
                            return None
                    view = self.topology(via=node)
                    owners |= {t.node_id for t in serving_masters(view) if set(lost) <= set(t.slots)}
                if len(owners) != 1 or old_master.node_id in owners:
                    return None
                new = self.node(owners.pop())
                return new if new.alive and new.role == "master" else None
            except redis.exceptions.RedisError:
                return None

        new_master = wait_until(promoted, timeout=timeout, what=f"a replica of {old_master} to take over its slots")
        return new_master  # type: ignore[return-value]


@contextmanager
def redis_cluster(directory: Path, masters: int = 3, replicas_per_master: int = 1) -> Iterator[Cluster]:
    """A running cluster for the block, every node killed afterwards. Without the
    binaries, the test skips (or fails when CONCORD_TEST_REQUIRE_REDIS=1)."""
    missing = [name for name, path in (("redis-server", REDIS_SERVER), ("redis-cli", REDIS_CLI)) if path is None]
    if missing:
        unavailable(f"a Redis Cluster needs {' and '.join(missing)} on PATH")
    version = RedisServer.version_of(REDIS_SERVER)  # type: ignore[arg-type]
    if int(version.split(".")[0]) < 7:
        unavailable(f"a Redis Cluster on free bus ports needs redis-server >= 7 (cluster-port), found {version}")
    cluster = Cluster(directory, masters, replicas_per_master)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# One cluster per session, even when several modules import the fixture (pytest
# would otherwise make one per module that holds it): started on first use, killed
# when pytest ends. A failure to start is remembered, so later tests fail fast.
_session: dict[str, object] = {}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Cluster:
    """The session's 3-master, 3-replica cluster."""
    if "error" in _session:
        pytest.fail(f"the session's Redis Cluster did not start: {_session['error']}")
    if "cluster" not in _session:
        block = redis_cluster(tmp_path_factory.mktemp("cluster"))
        try:
            _session["cluster"] = block.__enter__()
        except Exception as exc:
            _session["error"] = repr(exc)
            raise
        pytestconfig.add_cleanup(lambda: block.__exit__(None, None, None))
    return _session["cluster"]  # type: ignore[return-value]
