"""Sentry: the scrubbing rules, then real sentry-sdk clients in newsmon's own processes sending
to a loopback endpoint the test starts (DSN http://key@127.0.0.1:PORT/1)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from tests.processes import wait_until
from worker.redact import remember
from worker.sentry import FILTERED, scrub_event

WEBHOOK_SECRET = "whsec_c2VudHJ5LXRlc3Qtc2VjcmV0LXZhbHVl"
HOOK_TOKEN = "T0k3nInThePath9f8e7d"
PASSWORD = "hunter2pw"
QUERY_TOKEN = "q9TOKENq9"
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SECRETS = (WEBHOOK_SECRET, HOOK_TOKEN, PASSWORD, QUERY_TOKEN, SIGNATURE, "c2VudHJ5LXRlc3Qtc2Vj")


def test_scrub_event_removes_every_kind_of_secret_and_tags_the_ids():
    remember([f"https://hooks.example/{HOOK_TOKEN}"])
    event = {
        "message": f"POST https://hooks.example/{HOOK_TOKEN} failed; feed "
                   f"http://user:{PASSWORD}@feeds.example/rss?api_token={QUERY_TOKEN}&page=2",
        "extra": {"feed": "wire", "alert": "alert_1", "config": {"secret": ["whsec_x"]},
                  "headers": {"webhook-signature": SIGNATURE, "Authorization": "Bearer abc"}},
        "exception": {"values": [{"stacktrace": {"frames": [{"vars": {
            "secrets": f"['{WEBHOOK_SECRET}']", "sig": f"'{SIGNATURE}'",
            "body": f"signed with {WEBHOOK_SECRET}"}}]}}]},
    }
    out = json.dumps(scrub_event(event, {}))
    for secret in (*SECRETS, "whsec_x", "Bearer abc"):
        assert secret not in out, secret
    assert event["tags"] == {"feed": "wire", "alert": "alert_1"}
    assert "page=2" in out and "feeds.example/rss" in out and FILTERED in out


BEAT_ONCE = """
import sentry_sdk
from celery.beat import Scheduler
from worker.app import app
from worker.sentry import init_sentry

init_sentry("beat")
scheduler = Scheduler(app)
scheduler.apply_entry(scheduler.schedule["newsmon-heartbeat"], producer=scheduler.producer)
sentry_sdk.flush()
"""


# -- through real clients -------------------------------------------------------------------
def envelopes(server: Any) -> list[list[dict[str, Any]]]:
    """Every envelope the endpoint received, as its items (header merged with payload)."""
    out = []
    for request in server.requests:
        if not request["path"].startswith("/api/1/envelope"):
            continue
        body = request["body"]
        if request["headers"].get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        lines = body.split(b"\n")
        items, i = [], 1
        while i + 1 < len(lines) and lines[i]:
            header = json.loads(lines[i])
            items.append({**header, "payload": json.loads(lines[i + 1])})
            i += 2
        out.append(items)
    return out


def events(server: Any) -> list[dict[str, Any]]:
    return [item["payload"] for env in envelopes(server) for item in env if item["type"] == "event"]


def check_ins(server: Any) -> list[dict[str, Any]]:
    return [item["payload"] for env in envelopes(server) for item in env
            if item["type"] == "check_in"]


def raw(server: Any) -> str:
    return "\n".join(json.dumps(e) for env in envelopes(server) for e in env)


@pytest.fixture
def sentry_env(procs, http_server):
    http_server.routes["/api/1/envelope/"] = (200, {"Content-Type": "application/json"}, b"{}")
    procs.env.update(SENTRY_DSN=f"http://publickey@127.0.0.1:{http_server.port}/1",
                     SENTRY_ENVIRONMENT="ci", DESK_SECRET=WEBHOOK_SECRET)
    http_server.routes["/hook/" + HOOK_TOKEN] = (204, {}, b"")
    config = {"webhooks": {"desk": {"url": http_server.url(f"/hook/{HOOK_TOKEN}"),
                                    "secret": "${DESK_SECRET}"}},
              "watchlists": [{"name": "lng", "entities": ["LNG"], "webhook": "desk"}]}
    (procs.config / "hooks.yaml").write_text(yaml.safe_dump(config))
    return procs


@pytest.mark.integration
def test_a_failing_feed_reports_once_when_it_turns_failing(sentry_env, http_server):
    procs = sentry_env
    http_server.routes["/feed"] = (500, {}, b"broken")
    url = http_server.url("/feed").replace("//", f"//reader:{PASSWORD}@") + f"?token={QUERY_TOKEN}"
    (procs.config / "feeds.yaml").write_text(yaml.safe_dump(
        {"feeds": [{"url": url, "name": "wire", "failing_after": "1s"}]}))
    for _ in range(3):  # degraded, failing (reported), still failing (not reported again)
        done = subprocess.run([sys.executable, "-m", "worker", "run", "--once"], env=procs.env,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        time.sleep(1.1)
    [event] = events(http_server)
    assert event["level"] == "error" and "health=failing" in json.dumps(event["logentry"])
    assert event["tags"]["feed"] == "wire" and event["tags"]["process"] == "run"
    assert event["environment"] == "ci" and event["release"].startswith("newsmon@")
    text = raw(http_server)
    for secret in SECRETS:
        assert secret not in text, text[max(0, text.find(secret) - 300):text.find(secret) + 50]


@pytest.mark.integration
def test_task_errors_carry_their_feed_and_no_secret(sentry_env, http_server):
    procs = sentry_env
    procs.worker()
    from celery import Celery

    app = Celery("newsmon-test", broker=procs.env["REDIS_URL"])
    feed = {"url": f"http://reader:{PASSWORD}@127.0.0.1:9/feed?token={QUERY_TOKEN}",
            "name": "wire", "every": 300.0}
    batch = {"feed": {"title": "x"}, "items": [{"note": f"signed {SIGNATURE} with {WEBHOOK_SECRET}"}]}
    app.send_task("newsmon.process", args=[feed, batch], queue="process")
    app.close()
    wait_until(lambda: events(http_server), 30, "the task error's event")
    [event] = events(http_server)
    assert event["tags"]["feed"] == "wire" and event["tags"]["process"] == "worker"
    assert event["exception"]["values"][-1]["mechanism"]["type"] == "celery"
    assert event["extra"]["celery-job"]["task_name"] == "newsmon.process"
    # beat's heartbeat is a cron monitor: beat opens the check-in, the worker closes it. Beat's
    # own scheduler sends the entry now, rather than after its minute.
    subprocess.run([sys.executable, "-c", BEAT_ONCE], env=procs.env, check=True, timeout=60)
    wait_until(lambda: {"in_progress", "ok"} <= {c["status"] for c in check_ins(http_server)},
               30, "heartbeat check-ins")
    assert {c["monitor_slug"] for c in check_ins(http_server)} == {"newsmon-heartbeat"}
    text = raw(http_server)
    for secret in SECRETS:
        assert secret not in text, text[max(0, text.find(secret) - 300):text.find(secret) + 50]
