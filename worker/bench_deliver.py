"""``newsmon bench --only deliver``: webhook deliveries per second to a local receiver that
answers 204, and the latency they add from alert record to receipt (median, p99).

Measured twice: in one process with a thread pool (the code the deliver task runs: claim,
begin, sign, POST, record), and through a real Celery worker (16 threads, queue ``deliver``),
sent as the process task sends new alerts. The receiver runs in its own process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _receive(port_queue: Any) -> None:
    """A keep-alive receiver (own process): 204 to every POST, remembering when each
    webhook-id arrived; GET /received returns them."""
    from worker.bench import QuietHandler, loopback_server

    received: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received.setdefault(self.headers["webhook-id"], time.time())
            self.reply(204)

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(received).encode()
                received.clear()
            self.reply(200, body)

    server = loopback_server(Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def _alert_record(n: int) -> tuple[str, dict[str, Any]]:
    """A realistic alert record (a ~4 KB article dump), as the pipeline stores it."""
    import random
    from datetime import UTC, datetime

    from worker.bench import _paragraphs
    from worker.dump import dump_of, render_dump
    from worker.models import Article, Match, WatchlistHit
    from worker.pipeline import alert_json

    paragraphs = tuple(_paragraphs(random.Random(n), 4000))
    article = Article(id=f"{n:016x}", canonical_url=f"https://news.example/{n}",
                      url=f"https://news.example/{n}", guid=None, title=f"Japan LNG story {n}",
                      author="Reporter", source="Bench Wire", published=datetime.now(UTC),
                      paragraphs=paragraphs, feed="https://news.example/rss")
    hit = WatchlistHit("energy", ("LNG",), (Match("LNG", "LNG", "title", 6, 9, article.title),))
    return article.id, alert_json(hit, article, article.id, render_dump(dump_of(article)),
                                  time.time())


def _fetch_received(port: int) -> dict[str, float]:
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{port}/received", timeout=30).json())


def bench_deliver(quick: bool) -> None:
    import yaml

    from worker.bench import _redis
    from worker.service import Service
    from worker.settings import Settings

    n = 500 if quick else 3000
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    receiver = ctx.Process(target=_receive, args=(ports,), daemon=True)
    receiver.start()
    port = ports.get(timeout=30)
    with _redis() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "config"
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump({
            "webhooks": {"bench": {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET}},
            "watchlists": [{"name": "energy", "webhook": "bench", "entities": ["LNG"]}]}))
        settings = Settings.from_env({"NEWSMON_CONFIG": str(folder),
                                      "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"})
        service = Service(settings, url)
        records = [_alert_record(i) for i in range(4 * n)]
        print(f"deliver to one webhook answering 204 (its own process); {n:,} alerts each")
        print("        in one process, 16 threads:")
        _throughput(service, records[:n], port, service.deliver_until_done)
        _latency(service, records[n:2 * n], port, service.deliver)
        with _celery_worker(url, folder) as send:
            print("        through a Celery worker (--pool threads -c 16):")
            _throughput(service, records[2 * n:3 * n], port, _drain_with(service, send))
            _latency(service, records[3 * n:], port, send)
        service.sender.close()
        service.store.r.flushdb()
    receiver.kill()


def _throughput(service: Any, records: list[tuple[str, dict[str, Any]]], port: int,
                drain: Any) -> None:
    """A backlog of alerts, drained by ``drain(ids, timeout)``."""
    ids = [service.store.claim_alert(story, "energy", rec["id"], rec, time.time())[0]
           for story, rec in records]
    wall0 = time.perf_counter()
    states = drain(ids, 300)
    wall = time.perf_counter() - wall0
    got = _fetch_received(port)
    print(f"          a backlog: {len(ids) / wall:,.0f} deliveries/s  "
          f"(delivered {states.get('delivered', 0):,}, received {len(got):,})")


def _latency(service: Any, records: list[tuple[str, dict[str, Any]]], port: int,
             send: Any) -> None:
    """Alerts arriving at 100 per second, each handed to ``send`` at once (the fast path)."""
    created: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=16) as pool:
        for story, rec in records:
            at = time.time()
            alert_id, _ = service.store.claim_alert(story, "energy", rec["id"], rec, at)
            created[alert_id] = at
            for claim in service.claim_deliveries(time.time(), [alert_id]):
                pool.submit(send, claim)
            time.sleep(max(0.0, at + 0.01 - time.time()))
        deadline = time.time() + 30
        while service.store.r.zcard(service.store.keys.outbox) and time.time() < deadline:
            time.sleep(0.05)
    got = _fetch_received(port)
    added = sorted((got[a] - t) * 1000 for a, t in created.items() if a in got)
    if not added:
        print("          latency: nothing was received")
        return
    p99 = added[min(len(added) - 1, int(len(added) * 0.99))]
    print(f"          alert record to receipt at 100 alerts/s: median "
          f"{statistics.median(added):.1f} ms  p99 {p99:.1f} ms  "
          f"(received {len(added):,} of {len(created):,})")


class _celery_worker:
    """A Celery worker on the ``deliver`` queue (subprocess); entering gives a function that
    sends one claim to it as a ``newsmon.deliver`` task."""

    def __init__(self, redis_url: str, config: Path):
        self.env = {**os.environ, "REDIS_URL": redis_url, "NEWSMON_CONFIG": str(config),
                    "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_LOG_FORMAT": "text"}
        self.redis_url = redis_url

    def __enter__(self) -> Any:
        from celery import Celery

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "deliver",
             "--pool", "threads", "-c", "16", "--loglevel", "WARNING"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.app = Celery(broker=self.redis_url)  # not worker.app: its broker is from our env
        deadline = time.monotonic() + 60
        while not self.app.control.ping(timeout=0.5):  # started, connected, consuming
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the Celery worker did not start")

        def send(claim: Any) -> None:
            self.app.send_task("newsmon.deliver", (claim.member, claim.token, claim.watchlist),
                               queue="deliver")

        return send

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        self.app.close()


def _drain_with(service: Any, send: Any) -> Any:
    def drain(ids: list[str], timeout: float) -> dict[str, int]:
        for claim in service.claim_deliveries(time.time(), ids):
            send(claim)
        deadline = time.monotonic() + timeout
        while service.store.r.zcard(service.store.keys.outbox) and time.monotonic() < deadline:
            time.sleep(0.01)  # the outbox empties as alerts are delivered (or dead)
        done = service.store.delivery_states(ids)
        return {"delivered": sum(s == "delivered" for s in done.values())}

    return drain
