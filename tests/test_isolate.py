"""worker/isolate.py: a step past its deadline is stopped; the others are not."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.feeds import LNG_STORY, item, rss
from worker.errors import NotAFeedError
from worker.isolate import Isolated, StepTimeout
from worker.parse import parse_feed


@pytest.fixture
def isolated():
    pool = Isolated(2)
    yield pool
    pool.close()


def test_a_step_past_its_deadline_is_stopped_and_the_next_one_runs(isolated):
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="took longer than 0.5 s"):
        isolated.call(time.sleep, 30, deadline=0.5)
    assert time.monotonic() - started < 10
    assert isolated.call(os.getpid, deadline=10) != os.getpid()


def test_a_stuck_step_does_not_hold_up_the_others(isolated):
    stuck = threading.Thread(target=lambda: pytest.raises(StepTimeout, isolated.call,
                                                          time.sleep, 30, deadline=3))
    stuck.start()
    data = rss([item(1, "Gas imports rise", LNG_STORY)])
    parsed = isolated.call(parse_feed, data, "application/rss+xml", deadline=10)
    assert stuck.is_alive()  # parsed while the other step still runs
    assert parsed == parse_feed(data, "application/rss+xml")
    stuck.join()


def test_errors_come_back_as_themselves(isolated):
    with pytest.raises(NotAFeedError):
        isolated.call(parse_feed, b"<html><body>no feed</body></html>", "text/html", deadline=10)


def test_a_child_that_dies_is_an_error_not_a_hang(isolated):
    with pytest.raises(StepTimeout, match="died"):
        isolated.call(os._exit, 3, deadline=10)
    assert isolated.call(abs, -2, deadline=10) == 2


def test_a_parse_past_the_deadline_fails_its_feed_only(tmp_path, redis_url, http_server,
                                                       monkeypatch):
    from worker import service as service_module
    from worker.service import Service
    from worker.settings import Settings

    data = rss([item(1, "Gas imports rise", LNG_STORY)])
    http_server.routes["/feed"] = (200, {"Content-Type": "application/rss+xml"}, data)
    (tmp_path / "feeds.yaml").write_text(f"feeds:\n  - url: {http_server.url('/feed')}\n"
                                         "    name: slow\n    full_text: never\n")
    service = Service(Settings.from_env({
        "NEWSMON_CONFIG": str(tmp_path), "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
        "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"}), redis_url)
    monkeypatch.setattr(service_module, "PARSE_DEADLINE", 0.000_001)  # no parse is that fast
    outcome = service.poll(service.feed("slow"), lambda *a: None)
    assert outcome["outcome"] == "failed"
    assert outcome["error"] == "parsing took longer than 1e-06 s and was stopped"
    monkeypatch.setattr(service_module, "PARSE_DEADLINE", 20.0)
    assert service.poll(service.feed("slow"), lambda *a: None)["outcome"] == "ok"
    service.isolated.close()
    service.fetcher.close()
