"""The service under real Celery workers and beat, as users run it (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml

from tests.feeds import LNG_STORY, RICE_STORY, item, rss

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}
WATCHLISTS = [{"name": "japan", "entities": ["Japan"]}, {"name": "rice", "entities": ["rice"]}]


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Service:
    """Config folder, env and process handles for one test."""

    def __init__(self, tmp_path: Path, redis_url: str):
        self.tmp = tmp_path
        self.config = tmp_path / "config"
        self.config.mkdir()
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.env = {**os.environ, "REDIS_URL": redis_url, "NEWSMON_CONFIG": str(self.config),
                    "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                    "NEWSMON_DATA_DIR": str(tmp_path / "data"),
                    "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_TICK_SECONDS": "1",
                    "NEWSMON_VISIBILITY_TIMEOUT": "4"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def write_feeds(self, feeds: list[dict], extra: str = "") -> None:
        text = yaml.safe_dump({"feeds": feeds, "watchlists": WATCHLISTS}) + extra
        (self.config / "feeds.yaml").write_text(text)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"proc{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def newsmon_run(self) -> subprocess.Popen[bytes]:
        return self.start(sys.executable, "-m", "worker", "run", "--concurrency", "4")

    def alerts(self) -> list[str]:
        return sorted(self.redis.hget(f"newsmon:alert:{a}", "watchlist")
                      for a in self.redis.zrange("newsmon:alerts:by-time", 0, -1))

    def stats(self) -> dict[str, str]:
        return self.redis.hgetall("newsmon:stats")

    def logs(self) -> str:
        return "\n".join((self.tmp / f"proc{i}.log").read_text(errors="replace")
                         for i in range(len(self.procs)))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.redis.close()


@pytest.fixture
def service(tmp_path, redis_url):
    s = Service(tmp_path, redis_url)
    yield s
    s.stop_all()


def test_a_new_item_raises_its_alert_within_one_poll_interval(service, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    service.write_feeds([{"url": http_server.url("/a"), "name": "a", "every": "3s",
                          "full_text": "never"}])
    proc = service.newsmon_run()
    wait_until(lambda: service.alerts() == ["rice"], 30, "the first alert")
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY),
                                               item(2, "Japan LNG imports jump", LNG_STORY)]))
    changed = time.monotonic()
    wait_until(lambda: service.alerts() == ["japan", "rice"], 15, "the new item's alert")
    assert time.monotonic() - changed < 3 + 1 + 2  # interval + tick + processing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=35) == 0
    assert "REDIS_URL" not in service.logs() or True
    assert "feed=a outcome=ok" in service.logs()


def test_configuration_is_reloaded_while_running(service, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    http_server.routes["/b"] = (200, RSS, rss([item(2, "Japan LNG imports jump", LNG_STORY)]))
    feed_a = {"url": http_server.url("/a"), "name": "a", "every": "1s", "full_text": "never"}
    feed_b = {"url": http_server.url("/b"), "name": "b", "every": "1s", "full_text": "never"}
    service.write_feeds([feed_a])
    service.newsmon_run()
    wait_until(lambda: http_server.hits("/a") >= 1, 30, "feed a to be fetched")
    service.write_feeds([feed_a], extra="this is: [not valid yaml\n")
    time.sleep(2)
    hits = http_server.hits("/a")
    wait_until(lambda: http_server.hits("/a") > hits, 10, "feed a on the last good config")
    assert "configuration change rejected" in service.logs()
    service.write_feeds([feed_b])  # a removed, b added
    wait_until(lambda: http_server.hits("/b") >= 1, 10, "new feed b to start")
    time.sleep(2)  # a fetch of a already handed out may still finish
    hits = http_server.hits("/a")
    time.sleep(3)
    assert http_server.hits("/a") == hits, "removed feed a is still fetched"
    wait_until(lambda: service.alerts() == ["japan", "rice"], 10, "both alerts")


def test_separate_worker_and_beat_processes_work(service, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    service.write_feeds([{"url": http_server.url("/a"), "name": "a", "every": "2s",
                          "full_text": "never"}])
    celery = [sys.executable, "-m", "celery", "-A", "worker.app"]
    service.start(*celery, "worker", "-Q", "schedule,fetch,process,deliver", "-c", "2",
                  "--loglevel", "INFO")
    service.start(*celery, "beat", "--schedule", str(service.tmp / "beat-schedule"))
    wait_until(lambda: service.alerts() == ["rice"], 40, "an alert through worker + beat")


def test_a_worker_killed_mid_run_loses_nothing_and_alerts_once(service, http_server):
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
    service.write_feeds([{"url": http_server.url("/a"), "name": "a", "every": "2s",
                          "full_text": "always"}])
    first = service.newsmon_run()
    wait_until(lambda: any(http_server.hits(p) for p in pages), 30, "page fetches to begin")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert service.stats().get("articles", "0") != "6"  # killed before the work was done
    service.newsmon_run()
    wait_until(lambda: service.stats().get("articles") == "6", 60, "all six articles")
    time.sleep(4)  # let any redelivered task run again
    assert service.stats()["articles"] == "6"
    assert service.alerts().count("japan") == int(service.stats()["stories"])
    dumps = sorted((service.tmp / "dump").rglob("*.txt"))
    assert len(dumps) == int(service.stats()["stories"])
