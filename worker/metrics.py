"""Prometheus metrics: what each process did (counters and histograms, shared between Celery's
prefork children through prometheus-client's multiprocess files) and what the cluster looks
like now (gauges read from Redis when scraped). Served by the worker on NEWSMON_METRICS_PORT.
Names and labels are listed in docs/operations.md.

The multiprocess mode must be chosen before prometheus_client is imported: when metrics are on
and PROMETHEUS_MULTIPROC_DIR is unset, this module points it at a folder of its own under the
data dir, named after the process that imported it first (the worker's main process, whose
forked children write beside it). Folders of processes that no longer run are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from worker.settings import default_data_dir

if TYPE_CHECKING:
    from worker.store import Store

log = logging.getLogger("newsmon.metrics")


def _multiprocess_dir() -> None:
    if not os.environ.get("NEWSMON_METRICS_PORT") or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    root = Path(os.environ.get("NEWSMON_DATA_DIR") or default_data_dir()) / "metrics"
    with contextlib.suppress(OSError):
        for old in root.iterdir():
            if old.name.isdigit() and not _running(int(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    here = root / str(os.getpid())
    shutil.rmtree(here, ignore_errors=True)  # a pid used before, by a process that is gone
    here.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(here)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_multiprocess_dir()

from prometheus_client import Counter, Histogram  # noqa: E402  (after the folder is chosen)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FETCHES = Counter("newsmon_fetches_total", "Feed fetches by outcome", ["outcome"])
FETCH_SECONDS = Histogram("newsmon_fetch_duration_seconds", "Feed fetch latency", buckets=_LATENCY)
ARTICLES = Counter("newsmon_articles_total", "Articles processed (each copy of a story)")
STORIES = Counter("newsmon_stories_total", "New stories (articles not seen before)")
DUPLICATES = Counter("newsmon_duplicates_total", "Articles found to repeat a known story")
ALERTS = Counter("newsmon_alerts_total", "Alerts raised", ["watchlist"])
DELIVERIES = Counter("newsmon_deliveries_total", "Delivery attempts by outcome",
                     ["kind", "outcome"])
DELIVERY_SECONDS = Histogram("newsmon_delivery_duration_seconds", "Delivery attempt latency",
                             ["kind"], buckets=_LATENCY)
PARKED = Counter("newsmon_tasks_parked_total", "Tasks parked after killing their worker 3 times",
                 ["task"])
HEALTH_CHANGES = Counter("newsmon_feed_health_changes_total",
                         "Feeds entering a health state", ["state"])

# Celery's Redis transport keeps a list per queue and priority step (kombu: priority_steps).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class ClusterCollector(Collector):
    """Gauges read from Redis at scrape time: the same figures on every worker, so aggregate
    them with max(), not sum()."""

    def __init__(self, store: Store, queues: tuple[str, ...]):
        self.store = store
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except Exception as exc:  # a scrape without these gauges beats a failed scrape
            log.warning("cluster metrics unavailable: %s", exc)

    def _collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.store
        now = time.time()
        depth = GaugeMetricFamily("newsmon_queue_depth", "Tasks waiting in a Celery queue",
                                  labels=["queue"])
        for queue, n in store.queue_depths(self.queues, _PRIORITY_SUFFIXES).items():
            depth.add_metric([queue], n)
        yield depth
        outbox = store.outbox_counts(now)
        for name, text in (("due", "Deliveries due now (alerts and events)"),
                           ("waiting", "Deliveries waiting for a later retry"),
                           ("dead", "Dead-lettered deliveries")):
            yield GaugeMetricFamily(f"newsmon_outbox_{name}", text, value=outbox[name])
        states = store.feed_health_summary()
        by_health = GaugeMetricFamily("newsmon_feeds", "Configured feeds by health",
                                      labels=["health"])
        tally = Tally(s["health"] for s in states)
        for health in ("healthy", "degraded", "failing"):
            by_health.add_metric([health], tally[health])
        yield by_health
        yield GaugeMetricFamily("newsmon_feeds_failing", "Feeds failing for longer than their "
                                "failing_after", value=tally["failing"])
        yield GaugeMetricFamily("newsmon_feeds_stale", "Feeds with nothing new for much longer "
                                "than their usual rhythm", value=sum(s["stale"] for s in states))
        fetched = [s for s in states if s["outcome"] in ("ok", "not modified", "unchanged")]
        ratio = (sum(s["outcome"] == "not modified" for s in fetched) / len(fetched)
                 if fetched else 0.0)
        yield GaugeMetricFamily("newsmon_feeds_not_modified_ratio", "Share of the feeds whose "
                                "last successful fetch answered 304 Not Modified", value=ratio)
        yield GaugeMetricFamily("newsmon_parked_tasks", "Tasks parked (they killed their worker "
                                "3 times), kept 30 days", value=len(store.parked_tasks(now)))
        beat = store.last_beat()
        if beat is not None:
            yield GaugeMetricFamily("newsmon_beat_age_seconds", "Seconds since the last beat tick",
                                    value=max(0.0, now - beat))


def serve(port: int, store: Store, queues: tuple[str, ...]) -> None:
    """Serve /metrics on ``port`` from this process: every process's counters plus the
    cluster gauges. A port already taken is logged, not fatal: the work goes on."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(ClusterCollector(store, queues))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("metrics: cannot listen on port %d: %s", port, exc)
        return
    log.info("metrics: serving http://0.0.0.0:%d/metrics", port)
