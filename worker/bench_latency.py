"""Benchmark: end-to-end latency from a feed change to its alert record under ``newsmon run``."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import yaml

from worker.bench import QuietHandler, _redis, loopback_server, rss_feed
from worker.store import Keys


def bench_latency(quick: bool) -> None:
    samples = 4 if quick else 20
    state = {"items": 1}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.reply(200, rss_feed(state["items"], seed=7, tag="lat"),
                       {"Content-Type": "application/rss+xml"})

    server = loopback_server(Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with _redis() as url, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config"
        config.mkdir()
        (config / "feeds.yaml").write_text(yaml.safe_dump({
            "feeds": [{"url": f"http://127.0.0.1:{server.server_address[1]}/feed",
                       "name": "latency", "every": "10s", "full_text": "never"}],
            "watchlists": [{"name": "all", "entities": ["energy"]}]}))
        env = {**os.environ, "REDIS_URL": url, "NEWSMON_CONFIG": str(config),
               "NEWSMON_DUMP_DIR": str(Path(tmp) / "dump"), "NEWSMON_DATA_DIR": tmp,
               "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_TICK_SECONDS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--concurrency", "4"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        client = redis.Redis.from_url(url)
        try:
            latencies = _measure(client, state, samples)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=40)
            client.close()
    server.shutdown()
    server.server_close()
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"latency feed change -> alert record, 10 s interval, 1 s tick ({samples} changes)")
    print(f"        median {statistics.median(lat):.1f} s  p99 {p99:.1f} s  max {lat[-1]:.1f} s "
          "(bound: interval + tick + processing)")


def _measure(client: redis.Redis, state: dict[str, int], samples: int) -> list[float]:
    def alerts() -> int:
        return int(client.zcard(Keys().by_time))

    deadline = time.monotonic() + 60
    while alerts() < 1:  # the first item's alert: the service is up
        if time.monotonic() > deadline:
            raise RuntimeError("newsmon run raised no alert within 60 s")
        time.sleep(0.1)
    rng = random.Random(5)
    latencies = []
    for _ in range(samples):
        time.sleep(rng.uniform(0, 10))  # change at a random phase of the poll interval
        before = alerts()
        state["items"] += 1  # a new item; its random text mentions the watched word
        changed = time.monotonic()
        while alerts() == before:
            if time.monotonic() - changed > 60:
                raise RuntimeError("no alert within 60 s of a feed change")
            time.sleep(0.02)
        latencies.append(time.monotonic() - changed)
    return latencies
