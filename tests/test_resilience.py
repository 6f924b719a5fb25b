"""The service rides out what kills processes: a task that kills its worker is parked after
three deaths, and a Redis that is SIGKILLed or stopped and restarted (with and without
persistence) is waited for; worker and beat carry on by themselves."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from tests.processes import KEYS, Processes, wait_until
from worker.embedded import redis_binary

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}


def test_a_task_that_kills_its_worker_three_times_is_parked(procs, redis_url):
    procs.worker("--pool", "prefork", "-c", "1", "-I", "tests.poison_tasks")
    sender = Celery(broker=redis_url)
    sender.send_task("newsmon.test.kill_worker", queue="process", task_id="poison-1")
    wait_until(lambda: procs.redis.hget(KEYS.p + "{sched}:parked", "poison-1"), 90,
               "the task to be parked")
    record = json.loads(procs.redis.hget(KEYS.p + "{sched}:parked", "poison-1"))
    assert record["task"] == "newsmon.test.kill_worker"
    assert "killed its worker 3 times" in record["reason"]
    time.sleep(3)  # not requeued again: no more starts
    assert not procs.redis.exists(KEYS.p + "{sched}:runs:poison-1")
    out = subprocess.run([sys.executable, "-m", "worker", "status"], env=procs.env, capture_output=True,
                         text=True, timeout=60)
    assert "PARKED" in out.stdout and "killed its worker 3 times" in out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KillableRedis:
    """A redis-server on a fixed port that the test can kill and start again."""

    def __init__(self, folder: Path, persist: bool):
        self.folder, self.persist, self.port = folder, persist, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else \
            ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [redis_binary(prefer_machine=True), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--save", "", *durability], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, "redis to start")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=10)


@pytest.mark.parametrize(("persist", "how"), [(True, signal.SIGKILL), (False, signal.SIGKILL),
                                               (True, signal.SIGTERM)])
def test_worker_and_beat_ride_out_redis_going_away(tmp_path, http_server, persist, how):
    server = KillableRedis(tmp_path / "redis", persist)
    server.start()
    (tmp_path / "run").mkdir()
    procs = Processes(tmp_path / "run", server.url)
    try:
        http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump",
                                                         LNG_STORY)]))
        (procs.config / "feeds.yaml").write_text(yaml.safe_dump({
            "feeds": [{"url": http_server.url("/a"), "name": "a", "every": "1s",
                       "full_text": "never"}],
            "watchlists": [{"name": "lng", "entities": ["LNG"]},
                           {"name": "rice", "entities": ["rice"]}]}))
        worker, beat = procs.worker(), procs.beat()
        wait_until(lambda: "lng" in procs.alerts(), 40, "the first alert")
        server.kill(how)
        time.sleep(6)  # worker and beat meet the outage: ticks, fetches and reconnects fail
        http_server.routes["/a"] = (200, RSS, rss([item(2, "Rice harvest to grow",
                                                         RICE_STORY)]))
        server.start()
        procs.redis = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            wait_until(lambda: "rice" in procs.alerts(), 90, "an alert after Redis came back")
        except AssertionError:
            print(procs.logs()[-6000:])
            raise
        assert worker.poll() is None and beat.poll() is None, procs.logs()[-3000:]
        assert "Unrecoverable error" not in procs.logs()
        if persist:
            assert procs.alerts().count("lng") == 1  # state survived: no repeated alert
    finally:
        procs.stop_all()
        if server.proc and server.proc.poll() is None:
            server.kill()
