"""The service under real Celery workers and beat, as users run it (subprocesses)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from tests.processes import Processes, wait_until

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}
WATCHLISTS = [{"name": "japan", "entities": ["Japan"]}, {"name": "rice", "entities": ["rice"]}]


def write_feeds(procs: Processes, feeds: list[dict], extra: str = "") -> None:
    text = yaml.safe_dump({"feeds": feeds, "watchlists": WATCHLISTS}) + extra
    (procs.config / "feeds.yaml").write_text(text)


def test_a_new_item_raises_its_alert_within_one_poll_interval(procs, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    write_feeds(procs, [{"url": http_server.url("/a"), "name": "a", "every": "3s",
                          "full_text": "never"}])
    proc = procs.newsmon_run()
    wait_until(lambda: procs.alerts() == ["rice"], 30, "the first alert")
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY),
                                               item(2, "Japan LNG imports jump", LNG_STORY)]))
    changed = time.monotonic()
    wait_until(lambda: procs.alerts() == ["japan", "rice"], 15, "the new item's alert")
    assert time.monotonic() - changed < 3 + 1 + 2  # interval + tick + processing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=35) == 0
    assert "feed=a outcome=ok" in procs.logs()
    assert "[queues]" in procs.logs()  # at debug (as procs runs it) Celery's banner is back


def test_configuration_is_reloaded_while_running(procs, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    http_server.routes["/b"] = (200, RSS, rss([item(2, "Japan LNG imports jump", LNG_STORY)]))
    feed_a = {"url": http_server.url("/a"), "name": "a", "every": "1s", "full_text": "never"}
    feed_b = {"url": http_server.url("/b"), "name": "b", "every": "1s", "full_text": "never"}
    write_feeds(procs, [feed_a])
    procs.newsmon_run()
    wait_until(lambda: http_server.hits("/a") >= 1, 30, "feed a to be fetched")
    write_feeds(procs, [feed_a], extra="this is: [not valid yaml\n")
    time.sleep(2)
    hits = http_server.hits("/a")
    wait_until(lambda: http_server.hits("/a") > hits, 10, "feed a on the last good config")
    assert "configuration change rejected" in procs.logs()
    write_feeds(procs, [feed_b])  # a removed, b added
    wait_until(lambda: http_server.hits("/b") >= 1, 10, "new feed b to start")
    time.sleep(2)  # a fetch of a already handed out may still finish
    hits = http_server.hits("/a")
    time.sleep(3)
    assert http_server.hits("/a") == hits, "removed feed a is still fetched"
    wait_until(lambda: procs.alerts() == ["japan", "rice"], 10, "both alerts")


def test_separate_worker_and_beat_processes_work(procs, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    write_feeds(procs, [{"url": http_server.url("/a"), "name": "a", "every": "2s",
                          "full_text": "never"}])
    procs.worker("-c", "2")  # Celery's default prefork pool, as deploy/ runs it
    procs.beat()
    wait_until(lambda: procs.alerts() == ["rice"], 40, "an alert through worker + beat")


def test_a_worker_killed_mid_run_loses_nothing_and_alerts_once(procs, http_server):
    """SIGKILL while full-text pages are being fetched; the restarted worker finishes the work."""
    pages = {f"/page/{i}": i for i in range(6)}

    def slow_page(handler):
        time.sleep(1.5)
        n = pages[handler.path]
        return 200, {"Content-Type": "text/html"}, (
            f"<html><body><article><h1>Story {n}</h1><p>{LNG_STORY} Story number {n}.</p>"
            f"<p>{RICE_STORY}</p></article></body></html>").encode()

    for path in pages:
        http_server.routes[path] = slow_page
    items = [item(i, f"Short story {i}", f"Japan item {i} unique words {i * 7919}",
                  link=http_server.url(f"/page/{i}")) for i in range(6)]
    http_server.routes["/a"] = (200, RSS, rss(items))
    write_feeds(procs, [{"url": http_server.url("/a"), "name": "a", "every": "2s",
                          "full_text": "always"}])
    first = procs.newsmon_run()
    wait_until(lambda: any(http_server.hits(p) for p in pages), 30, "page fetches to begin")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert procs.stats().get("articles", "0") != "6"  # killed before the work was done
    procs.newsmon_run()
    wait_until(lambda: procs.stats().get("articles") == "6", 60, "all six articles")
    time.sleep(4)  # let any redelivered task run again
    assert procs.stats()["articles"] == "6"
    assert procs.alerts().count("japan") == int(procs.stats()["stories"])
    dumps = sorted((procs.tmp / "dump").rglob("*.txt"))
    assert len(dumps) == int(procs.stats()["stories"])
