"""Prometheus metrics served by a real Celery worker (prefork: counters from every child) and by
``newsmon run``; structured JSON logs with the ids of what each line is about."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deliveries import SECRET
from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from tests.processes import Processes, wait_until
from worker.metrics import ClusterCollector
from worker.store import Store

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value; {} while nothing listens."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def configure(procs: Processes, server: Any) -> None:
    server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY),
                                          item(2, "Rice harvest to grow", RICE_STORY)]))
    server.routes["/b"] = (200, RSS, rss([item(3, "Japan LNG imports jump", LNG_STORY)],
                                         title="Other Wire"))
    server.routes["/down"] = (500, {}, b"broken")
    server.routes["/hook"] = (204, {}, b"")
    (procs.config / "c.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": server.url(p), "name": p.strip("/"), "every": "1h",
                   "full_text": "never"} for p in ("/a", "/b", "/down")],
        "webhooks": {"desk": {"url": server.url("/hook"), "secret": SECRET}},
        "watchlists": [{"name": "japan", "entities": ["Japan"], "webhook": "desk"},
                       {"name": "rice", "entities": ["rice"]}]}))


def test_a_prefork_worker_serves_every_childs_counters_and_the_cluster_gauges(procs, http_server):
    configure(procs, http_server)
    port = free_port()
    procs.env["NEWSMON_METRICS_PORT"] = str(port)
    procs.worker("--pool", "prefork", "--concurrency", "2")
    procs.beat()

    def done() -> dict:
        samples = scrape(port)
        delivered = value(samples, "newsmon_deliveries_total", kind="webhook", outcome="delivered")
        return samples if delivered else {}

    wait_until(done, 45, "a delivery counted in the metrics")
    samples = done()
    assert value(samples, "newsmon_fetches_total", outcome="ok") == 2
    assert value(samples, "newsmon_fetches_total", outcome="failed") == 1
    assert value(samples, "newsmon_fetch_duration_seconds_count") == 3
    assert value(samples, "newsmon_articles_total") == 3
    assert value(samples, "newsmon_stories_total") == 2
    assert value(samples, "newsmon_duplicates_total") == 1
    assert value(samples, "newsmon_alerts_total", watchlist="japan") == 1
    assert value(samples, "newsmon_alerts_total", watchlist="rice") == 1
    assert value(samples, "newsmon_delivery_duration_seconds_count", kind="webhook") == 1
    assert value(samples, "newsmon_feed_health_changes_total", state="degraded") == 1
    assert value(samples, "newsmon_feeds", health="healthy") == 2
    assert value(samples, "newsmon_feeds", health="degraded") == 1
    assert value(samples, "newsmon_feeds_failing") == 0
    assert value(samples, "newsmon_feeds_stale") == 0
    assert value(samples, "newsmon_feeds_not_modified_ratio") == 0
    assert 0 <= value(samples, "newsmon_beat_age_seconds") < 10
    for queue in ("schedule", "fetch", "process", "deliver"):
        assert value(samples, "newsmon_queue_depth", queue=queue) is not None
    assert value(samples, "newsmon_outbox_dead") == 0
    # the children wrote the counters: more than one process's files were summed
    worker_folder = procs.tmp / "data" / "metrics" / str(procs.procs[0].pid)
    assert len({f.name.rsplit("_", 1)[-1] for f in worker_folder.glob("*.db")}) >= 2


def test_queue_depth_counts_waiting_tasks(procs, http_server):
    from celery import Celery

    port = free_port()
    procs.env["NEWSMON_METRICS_PORT"] = str(port)
    (procs.config / "c.yaml").write_text("feeds: []\n")
    app = Celery("newsmon-test", broker=procs.env["REDIS_URL"])
    for _ in range(3):
        app.send_task("newsmon.process", args=[{}, {}], queue="process", priority=0)
    app.send_task("newsmon.process", args=[{}, {}], queue="process", priority=6)
    app.close()
    # A worker that does not consume "process": the four tasks wait there.
    procs.start(sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "schedule",
                "--pool", "threads", "-c", "2")
    wait_until(lambda: value(scrape(port), "newsmon_queue_depth", queue="process") == 4, 30,
               "the queue depth")


def test_newsmon_run_serves_metrics_and_logs_json_lines_with_ids(procs, http_server):
    configure(procs, http_server)
    port = free_port()
    procs.env.update(NEWSMON_METRICS_PORT=str(port), NEWSMON_LOG_FORMAT="json")
    procs.newsmon_run()
    wait_until(lambda: value(scrape(port), "newsmon_deliveries_total", kind="webhook",
                             outcome="delivered"), 45, "newsmon run's metrics")
    lines = [line for line in procs.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    fetched = [r for r in records if r["message"].startswith("feed=a outcome=ok")]
    assert fetched and fetched[0]["feed"] == "a"
    [raised] = [r for r in records if r["message"].startswith("alert=")
                and "watchlist=japan" in r["message"]]
    assert raised["alert"].startswith("alert_") and raised["story"] and raised["article"]
    sent = [r for r in records if r.get("alert") == raised["alert"] and "outcome=delivered"
            in r["message"]]
    assert sent


def test_json_logs_of_run_once(procs, http_server):
    configure(procs, http_server)
    procs.env["NEWSMON_LOG_FORMAT"] = "json"
    done = subprocess.run([sys.executable, "-m", "worker", "run", "--once"], env=procs.env,
                          capture_output=True, timeout=60, text=True)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()
               if not line.startswith("feed down failed")]
    failed = [r for r in records if r.get("feed") == "down" and r["level"] == "WARNING"]
    assert failed and "outcome=failed" in failed[0]["message"]


def test_cluster_gauges_are_derived_from_the_feed_states_in_redis(redis_url):
    store = Store.from_url(redis_url)
    now = time.time()
    store.sync_feeds(["a", "b", "c", "d", "gone"], now)
    for name, health, stale, outcome in (("a", "healthy", "0", "ok"),
                                         ("b", "healthy", "1", "not modified"),
                                         ("c", "degraded", "0", "failed"),
                                         ("d", "failing", "0", "failed")):
        store.r.hset(store.keys.feed(name), mapping={"health": health, "stale": stale,
                                                      "outcome": outcome})
    store.r.hset(store.keys.feed("removed"), mapping={"health": "failing"})  # not configured
    store.r.zadd(store.keys.outbox, {"x": now - 1, "y": now + 60, "z": now + 90})
    store.r.zadd(store.keys.dead, {"w|webhook:desk": now})
    store.mark_beat(now - 5)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in ClusterCollector(store, ("fetch",)).collect()
               for s in family.samples}
    assert value(samples, "newsmon_feeds", health="healthy") == 3  # "gone" never fetched
    assert value(samples, "newsmon_feeds", health="degraded") == 1
    assert value(samples, "newsmon_feeds_failing") == 1
    assert value(samples, "newsmon_feeds_stale") == 1
    assert value(samples, "newsmon_feeds_not_modified_ratio") == 0.5  # of the feeds fetched fine
    assert (value(samples, "newsmon_outbox_due"), value(samples, "newsmon_outbox_waiting"),
            value(samples, "newsmon_outbox_dead")) == (1, 2, 1)
    assert value(samples, "newsmon_queue_depth", queue="fetch") == 0
    assert 5 <= value(samples, "newsmon_beat_age_seconds") < 10
    store.r.close()
