"""Politeness across workers: at most two requests to one host at a time from every worker
together (a lease in Redis), article pages on a budget of their own, a bounded host table."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from worker.fetch import Fetcher, LocalHostLeases
from worker.store import Store

LOOPBACK = ["127.0.0.0/8"]

# One worker process: ``threads`` threads, each fetching its share of the URLs given.
CLIENT = """
import sys, threading
from worker.fetch import Fetcher
from worker.store import Store
url, shared, threads, urls = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4:]
leases = Store.from_url(url).hosts if shared else None
fetcher = Fetcher(["127.0.0.0/8"], total_timeout=60, leases=leases)
failed = []
def work(mine):
    for u in mine:
        try:
            fetcher.get(u, kind="page" if "/page/" in u else "feed")
        except Exception as exc:
            failed.append(repr(exc))
pool = [threading.Thread(target=work, args=(urls[i::threads],)) for i in range(threads)]
for t in pool: t.start()
for t in pool: t.join()
print("failed", len(failed), failed[:3])
sys.exit(1 if failed else 0)
"""


class Counting(ThreadingHTTPServer):
    """Answers every GET after ``delay`` seconds and records how many were in flight at once,
    in all and for article pages (paths /page/...), and the order requests came in."""

    daemon_threads = True

    def __init__(self, delay: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay
        self.lock = threading.Lock()
        self.active = {"all": 0, "page": 0}
        self.peak = {"all": 0, "page": 0}
        self.order: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def enter(self, kinds: tuple[str, ...], path: str) -> None:
        with self.lock:
            self.order.append(path)
            for k in kinds:
                self.active[k] += 1
                self.peak[k] = max(self.peak[k], self.active[k])

    def leave(self, kinds: tuple[str, ...]) -> None:
        with self.lock:
            for k in kinds:
                self.active[k] -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Counting

    def do_GET(self) -> None:
        kinds = ("all", "page") if self.path.startswith("/page/") else ("all",)
        self.server.enter(kinds, self.path)
        try:
            time.sleep(self.server.delay)
        finally:
            self.server.leave(kinds)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting() -> Iterator[Counting]:
    server = Counting(delay=0.05)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _run_workers(server: Counting, redis_url: str, shared: bool, processes: int = 3) -> None:
    urls = [server.url(f"/{'page' if i % 2 else 'feed'}/{i}") for i in range(24)]
    children = [subprocess.Popen([sys.executable, "-c", CLIENT, redis_url, "1" if shared else "0",
                                  "4", *urls], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for _ in range(processes)]
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out.decode()
    assert len(server.order) == processes * len(urls)


def test_several_workers_together_open_at_most_two_requests_to_one_host(counting, redis_url):
    _run_workers(counting, redis_url, shared=True)
    assert counting.peak["all"] == 2      # both slots were used, never a third
    assert counting.peak["page"] == 1     # pages never held both


def test_without_the_shared_lease_each_worker_would_open_its_own_two(counting, redis_url):
    _run_workers(counting, redis_url, shared=False)
    assert counting.peak["all"] > 2


def test_article_pages_cannot_starve_feed_polls(counting, redis_url):
    store = Store.from_url(redis_url)
    with Fetcher(LOOPBACK, total_timeout=30, leases=store.hosts) as fetcher:
        pages = [threading.Thread(target=fetcher.get, args=(counting.url(f"/page/{i}"),),
                                  kwargs={"kind": "page"}) for i in range(10)]
        for t in pages:
            t.start()
        time.sleep(0.02)
        fetcher.get(counting.url("/feed/0"))  # takes the slot pages may not take
        for t in pages:
            t.join()
    # 10 pages take at least 10 turns of the one page slot; the feed did not wait for them.
    assert counting.order.index("/feed/0") <= 3
    assert counting.peak["page"] == 1


def test_a_lease_of_a_dead_holder_runs_out(redis_url):
    leases = Store.from_url(redis_url).hosts
    assert leases.acquire("news.example", "feed", "a", 0.3, total=2)
    assert leases.acquire("news.example", "feed", "b", 30, total=2)
    assert not leases.acquire("news.example", "feed", "c", 30, total=2)
    time.sleep(0.4)  # "a" never released: its lease ends by itself
    assert leases.acquire("news.example", "feed", "c", 30, total=2)
    assert leases.held("news.example") == 2
    ttl = redis.Redis.from_url(redis_url).pttl(leases.key("news.example"))
    assert 25_000 < ttl <= 30_000  # the key goes with its longest lease


def test_pages_have_a_budget_feeds_do_not(redis_url):
    leases = Store.from_url(redis_url).hosts
    assert leases.acquire("h", "page", "p1", 30, total=2, budget=1)
    assert not leases.acquire("h", "page", "p2", 30, total=2, budget=1)
    assert leases.acquire("h", "feed", "f1", 30, total=2)
    leases.release("h", "page", "p1")
    assert leases.acquire("h", "feed", "f2", 30, total=2)
    assert leases.held("h") == 2


def test_the_process_host_table_holds_only_hosts_with_live_leases():
    table = LocalHostLeases()
    for i in range(10_000):
        assert table.acquire(f"host{i}.example", "feed", "t", 30, total=2)
        table.release(f"host{i}.example", "feed", "t")
    assert table.hosts() == 0
    table.acquire("a.example", "feed", "t", 30, total=2)
    table.acquire("b.example", "feed", "t", 0.01, total=2)  # its holder never comes back
    time.sleep(0.02)
    table.acquire("c.example", "feed", "t", 30, total=2)
    table.acquire("b.example", "page", "u", 30, total=2, budget=1)  # expired ones are dropped
    table.release("b.example", "page", "u")
    assert table.hosts() == 2
