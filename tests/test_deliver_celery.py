"""Delivery under real Celery workers and beat (subprocesses), as users run them: a feed item
becomes an alert, the alert reaches the webhook, retries come from the outbox via beat, and a
worker SIGKILLed in the middle of a delivery loses nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from tests.deliveries import hook, posts, verified
from tests.feeds import LNG_STORY, item, rss
from tests.processes import KEYS, Processes, wait_until

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}


def write_config(procs: Processes, server, retry: list[str] | None = None) -> None:
    (procs.config / "config.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": server.url("/feed"), "name": "wire", "every": "30s",
                   "full_text": "never"}],
        "webhooks": {"ops": hook(server.url("/hook"), retry=retry)},
        "watchlists": [{"name": "energy", "webhook": "ops", "entities": ["LNG"]}]}))
    server.routes["/feed"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))


def test_an_alert_reaches_the_webhook_and_is_retried_through_beat(procs, http_server):
    answers = iter([500, 204])
    http_server.routes["/hook"] = lambda h: (next(answers, 204), {}, b"")
    write_config(procs, http_server, retry=["1s"])
    procs.worker()
    procs.beat()
    wait_until(lambda: len(posts(http_server, "/hook")) >= 2, 60, "a failed send and its retry")
    [alert_id] = procs.alert_ids()
    wait_until(lambda: procs.state(alert_id) == "delivered", 10, "the alert to be delivered")
    first, second = posts(http_server, "/hook")
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == alert_id
    assert verified(second)["data"]["article"]["title"] == "Japan LNG imports jump"
    # The first send went out as soon as the alert was made, not at the next tick.
    made = float(procs.redis.hget(KEYS.alert(alert_id), "created"))
    attempts = json.loads(procs.redis.hget(KEYS.alert(alert_id), "log"))
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
    write_config(procs, http_server)
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
