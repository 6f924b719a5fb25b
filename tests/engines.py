"""Real engines the tests start themselves on loopback ports in a temporary folder: a
three-node Redis Cluster, a Redis with a Sentinel watching it, and a RabbitMQ vhost of the
test's own on the machine's RabbitMQ (created, then deleted; never the default vhost)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

from worker.embedded import redis_binary

MAX_CLUSTER_PORT = 55535   # a cluster node also listens on its port + 10000 (the cluster bus)
SENTINEL_MASTER = "newsmon-test"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(limit: int = 65535) -> int:
    """A free loopback port at most ``limit`` whose port + 10000 is free too when it has to be."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= limit and (limit == 65535 or _free(port + 10000)):
            return port
    raise RuntimeError("no free port")


def ask(port: int, *command: str) -> object:
    """One command to the server on ``port``, on a connection closed right after."""
    with redis.Redis(port=port, decode_responses=True) as client:
        return client.execute_command(*command)


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class Servers:
    """redis-server processes of one fixture, stopped together."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str) -> None:
        log = open(self.folder / f"{port}.log", "wb")  # noqa: SIM115
        self.procs[port] = subprocess.Popen(
            [redis_binary(prefer_machine=True), *args, "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "no", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(lambda: ask(port, "PING"), f"redis-server on port {port}")

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


@contextlib.contextmanager
def redis_cluster(folder: Path, nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` masters (no replicas); yields the URL of one node."""
    servers = Servers(folder)
    try:
        ports = [free_port(MAX_CLUSTER_PORT) for _ in range(nodes)]
        for port in ports:
            servers.start(port, "--cluster-enabled", "yes", "--cluster-config-file",
                          f"nodes-{port}.conf", "--cluster-node-timeout", "5000")
        subprocess.run([shutil.which("redis-cli") or "redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        _wait(lambda: all("cluster_state:ok" in str(ask(p, "CLUSTER", "INFO")) for p in ports),
              "the cluster to be ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        servers.stop()


@contextlib.contextmanager
def redis_sentinel(folder: Path) -> Iterator[tuple[str, Servers, int]]:
    """A Redis master with a replica and one Sentinel watching them (quorum 1); yields the
    REDIS_URL listing the sentinel, the servers and the master's port."""
    servers = Servers(folder)
    try:
        master, replica, port = free_port(), free_port(), free_port()
        servers.start(master)
        servers.start(replica, "--replicaof", "127.0.0.1", str(master))
        conf = folder / "sentinel.conf"
        conf.write_text(f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 1\n"
                        f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
                        f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n")
        log = open(folder / "sentinel.log", "wb")  # noqa: SIM115
        servers.procs[port] = subprocess.Popen(
            [redis_binary(prefer_machine=True), str(conf), "--sentinel", "--port", str(port),
             "--bind", "127.0.0.1", "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(lambda: ask(port, "SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER),
              "the sentinel")
        _wait(lambda: ask(port, "SENTINEL", "replicas", SENTINEL_MASTER),
              "the sentinel to see the replica")
        # a second address that never answers: the client must try the next sentinel
        yield f"redis://127.0.0.1:{free_port()},127.0.0.1:{port}/0", servers, master
    finally:
        servers.stop()


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


def rabbitmq_available() -> bool:
    if not shutil.which("rabbitmqctl"):
        return False
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 5672)) == 0


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[tuple[str, str]]:
    """A vhost of this test's own on the machine's RabbitMQ; yields (amqp URL, vhost)."""
    vhost = f"newsmon-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}", vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)
