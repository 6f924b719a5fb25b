"""Delivery under real Celery workers and beat (subprocesses), as users run them: a feed item
becomes an alert, the alert reaches the webhook, retries come from the outbox via beat, and a
worker SIGKILLed in the middle of a delivery loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml

from tests.deliveries import hook, posts, verified
from tests.feeds import LNG_STORY, item, rss

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}
CELERY = [sys.executable, "-m", "celery", "-A", "worker.app"]


def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Processes:
    """A config folder, the environment of one test, and the processes it started."""

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

    def write_config(self, server, retry: list[str] | None = None) -> None:
        (self.config / "config.yaml").write_text(yaml.safe_dump({
            "feeds": [{"url": server.url("/feed"), "name": "wire", "every": "30s",
                       "full_text": "never"}],
            "webhooks": {"ops": hook(server.url("/hook"), retry=retry)},
            "watchlists": [{"name": "energy", "webhook": "ops", "entities": ["LNG"]}]}))
        server.routes["/feed"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"proc{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        return self.start(*CELERY, "worker", "-Q", "schedule,fetch,process,deliver",
                          "--pool", "threads", "-c", "8", "--loglevel", "INFO")

    def beat(self) -> subprocess.Popen[bytes]:
        return self.start(*CELERY, "beat", "--schedule", str(self.tmp / "beat-schedule"))

    def alert_ids(self) -> list[str]:
        return self.redis.zrange("newsmon:alerts:by-time", 0, -1)

    def state(self, alert_id: str) -> str | None:
        return self.redis.hget(f"newsmon:alert:{alert_id}", "state")

    def logs(self) -> str:
        return "\n".join((self.tmp / f"proc{i}.log").read_text(errors="replace")
                         for i in range(len(self.procs)))

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        self.redis.close()


@pytest.fixture
def procs(tmp_path, redis_url):
    p = Processes(tmp_path, redis_url)
    yield p
    p.stop_all()


def test_an_alert_reaches_the_webhook_and_is_retried_through_beat(procs, http_server):
    answers = iter([500, 204])
    http_server.routes["/hook"] = lambda h: (next(answers, 204), {}, b"")
    procs.write_config(http_server, retry=["1s"])
    procs.worker()
    procs.beat()
    wait_until(lambda: len(posts(http_server, "/hook")) >= 2, 60, "a failed send and its retry")
    [alert_id] = procs.alert_ids()
    wait_until(lambda: procs.state(alert_id) == "delivered", 10, "the alert to be delivered")
    first, second = posts(http_server, "/hook")
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == alert_id
    assert verified(second)["data"]["article"]["title"] == "Japan LNG imports jump"
    # The first send went out as soon as the alert was made, not at the next tick.
    made = float(procs.redis.hget(f"newsmon:alert:{alert_id}", "created"))
    attempts = json.loads(procs.redis.hget(f"newsmon:alert:{alert_id}", "log"))
    assert attempts[0]["at"] - made < 1.0
    assert 0.7 <= attempts[1]["at"] - attempts[0]["at"] < 6
    time.sleep(2)
    assert len(posts(http_server, "/hook")) == 2  # delivered: never sent again
    assert "outcome=delivered" in procs.logs()


def test_a_worker_killed_during_a_delivery_delivers_later_with_the_same_id(procs, http_server):
    in_request = threading.Event()
    release = threading.Event()

    def slow_then_fine(handler):
        if not in_request.is_set():
            in_request.set()
            release.wait(30)  # the worker is killed while it waits for this answer
        return 204, {}, b""

    http_server.routes["/hook"] = slow_then_fine
    procs.write_config(http_server)
    first = procs.worker()
    procs.beat()
    assert in_request.wait(60), "the delivery never began"
    procs.kill(first)
    release.set()
    [alert_id] = procs.alert_ids()
    assert procs.state(alert_id) == "pending"
    procs.worker()
    wait_until(lambda: procs.state(alert_id) == "delivered", 60, "delivery after the restart")
    requests = posts(http_server, "/hook")
    assert len(requests) >= 2
    assert {r["headers"]["webhook-id"] for r in requests} == {alert_id}
    verified(requests[-1])
