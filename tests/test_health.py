"""Feed health: the pure rules, then the pipeline against a real Redis and loopback servers
(the change logged, recorded, and sent once to the health webhook as a signed event)."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from click.testing import CliRunner

from tests.deliveries import SECRET, posts, verified
from tests.feeds import LNG_STORY, item, rss
from tests.processes import KEYS, wait_until
from worker.cli import main
from worker.config import ConfigError, load_config
from worker.health import (
    DEGRADED,
    FAILING,
    HEALTHY,
    Health,
    health_event,
    is_stale,
    next_health,
    rhythm,
    stale_threshold,
)
from worker.pipeline import poll_feed
from worker.service import Service
from worker.settings import Settings

HOUR = 3600.0
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}


# -- the rules ------------------------------------------------------------------------------
def test_failures_degrade_then_fail_after_failing_after():
    h = next_health(Health(), ok=False, now=1000.0, failing_after=6 * HOUR)
    assert h == Health(DEGRADED, 1000.0)
    h = next_health(h, ok=False, now=1000.0 + 6 * HOUR - 1, failing_after=6 * HOUR)
    assert h == Health(DEGRADED, 1000.0)  # the run of failures keeps its start
    h = next_health(h, ok=False, now=1000.0 + 6 * HOUR, failing_after=6 * HOUR)
    assert h == Health(FAILING, 1000.0)
    assert next_health(h, ok=True, now=1000.0 + 7 * HOUR, failing_after=6 * HOUR) == Health()


def test_health_events_on_turning_failing_and_on_recovering_only():
    feed = {"feed": "wire"}
    degraded, failing = Health(DEGRADED, 10.0), Health(FAILING, 10.0)
    assert health_event(feed, Health(), degraded, "t") is None
    assert health_event(feed, degraded, degraded, "t") is None
    assert health_event(feed, failing, failing, "t") is None
    assert health_event(feed, degraded, Health(), "t") is None  # never failing: nothing to recover
    down = health_event(feed, degraded, failing, "t")
    up = health_event(feed, failing, Health(), "t")
    assert down["type"] == "feed.failing" and up["type"] == "feed.recovered"
    assert down["data"] is feed and down["id"].startswith("evt_")
    assert health_event(feed, degraded, failing, "later")["id"] == down["id"]  # same run: same id
    assert health_event(feed, Health(DEGRADED, 99.0), Health(FAILING, 99.0), "t")["id"] != down["id"]


def test_rhythm_is_the_median_gap_of_the_newest_items():
    assert rhythm([]) is None and rhythm([1.0, 2.0]) is None
    assert rhythm([0.0, HOUR, 2 * HOUR, 10 * HOUR]) == HOUR
    many = [i * 60.0 for i in range(100)] + [-10 * HOUR]  # old outlier beyond the newest 20
    assert rhythm(many) == 60.0


def test_stale_threshold_and_verdict():
    assert stale_threshold(None, 300, None) is None  # no rhythm: cannot be judged
    assert stale_threshold(2 * HOUR, 300, None) == 10 * HOUR  # five usual gaps
    assert stale_threshold(60.0, 300, None) == HOUR  # never under an hour
    assert stale_threshold(60.0, 2 * HOUR, None) == 4 * HOUR  # nor under two poll intervals
    assert stale_threshold(None, 300, 3 * HOUR) == 3 * HOUR  # stale_after wins
    assert is_stale(0.0, 11 * HOUR, 10 * HOUR) and not is_stale(0.0, 9 * HOUR, 10 * HOUR)
    assert not is_stale(None, 11 * HOUR, 10 * HOUR) and not is_stale(0.0, 1e9, None)


def test_failing_after_is_configurable_per_feed_and_for_all(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"failing_after": "2h", "feeds": [
        {"url": "https://a.example/rss", "name": "a"},
        {"url": "https://b.example/rss", "name": "b", "failing_after": "30m",
         "stale_after": "2d"}]}))
    feeds = {f.name: f for f in load_config(tmp_path).config.feeds}
    assert (feeds["a"].failing_after, feeds["b"].failing_after) == (2 * HOUR, 1800.0)
    assert (feeds["a"].stale_after, feeds["b"].stale_after) == (None, 48 * HOUR)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"feeds": [{"url": "https://a.example/"}]}))
    assert load_config(tmp_path).config.feeds[0].failing_after == 6 * HOUR  # the default
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"failing_after": "1h"}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"failing_after": "3h"}))
    with pytest.raises(ConfigError, match="c.yaml: failing_after: already set"):
        load_config(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"feeds": [
        {"url": "https://c.example/", "failing_after": "soon"}]}))
    with pytest.raises(ConfigError, match=r"feeds\[0\].failing_after: expected a duration"):
        load_config(tmp_path)


# -- in the pipeline ------------------------------------------------------------------------
def make_service(tmp_path, redis_url, server, **feed_options) -> Service:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "c.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": server.url("/feed"), "name": "wire", "full_text": "never",
                   **feed_options}],
        "webhooks": {"ops": {"url": server.url("/ops"), "secret": SECRET}},
        "health_webhook": "ops"}))
    return Service(Settings.from_env({"NEWSMON_CONFIG": str(folder),
                                      "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                                      "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"}), redis_url)


def poll(service: Service, now: float) -> dict:
    service.store.sync_feeds(["wire"], now)  # a configured feed (its state is kept only then)
    return poll_feed(service.feed("wire"), service.store, service.fetcher, now,
                     lambda *_: None)


@pytest.mark.integration
def test_a_failing_feed_is_reported_once_and_its_recovery_too(tmp_path, redis_url, http_server,
                                                              caplog):
    http_server.routes["/feed"] = (500, {}, b"broken")
    http_server.routes["/ops"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url, http_server, failing_after="1h")
    start = time.time() - 3 * HOUR
    caplog.set_level(logging.INFO, logger="newsmon.pipeline")
    states = [poll(service, start + minutes * 60)["health"] for minutes in (0, 30, 61, 90, 120)]
    assert states == [DEGRADED, DEGRADED, FAILING, FAILING, FAILING]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "health=failing" in errors[0].getMessage()
    assert errors[0].feed == "wire"
    state = service.store.feed_state("wire")
    assert state["health"] == FAILING and float(state["failing_since"]) == start

    http_server.routes["/feed"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    assert poll(service, start + 150 * 60)["health"] == HEALTHY
    assert service.store.feed_state("wire")["failing_since"] == ""

    service.deliver_until_done(service.store.r.zrange(service.store.keys.outbox, 0, -1), timeout=10)
    events = sorted((verified(r) for r in posts(http_server, "/ops")), key=lambda e: e["timestamp"])
    assert [e["type"] for e in events] == ["feed.failing", "feed.recovered"]
    failing, recovered = events[0]["data"], events[1]["data"]
    assert failing["feed"] == "wire" and failing["state"] == FAILING
    assert failing["failures"] == 3 and "500" in failing["error"]
    assert failing["failing_since"] == datetime.fromtimestamp(start, UTC).isoformat()
    assert failing["last_success"] is None
    assert recovered["state"] == HEALTHY and recovered["error"] is None
    assert recovered["failing_since"] == failing["failing_since"]
    assert recovered["last_success"] is not None
    assert all(r["headers"]["webhook-id"].startswith("evt_") for r in posts(http_server, "/ops"))
    env = {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(tmp_path / "config")}
    shown = CliRunner().invoke(main, ["alerts", "show", posts(http_server, "/ops")[0]["headers"]
                                      ["webhook-id"]], env=env)
    assert json.loads(shown.output)["state"] == "delivered"


@pytest.mark.integration
def test_without_a_health_webhook_events_are_only_recorded(tmp_path, redis_url, http_server):
    http_server.routes["/feed"] = (503, {}, b"down")
    service = make_service(tmp_path, redis_url, http_server, failing_after="1s")
    text = (tmp_path / "config" / "c.yaml").read_text().replace("health_webhook: ops", "")
    (tmp_path / "config" / "c.yaml").write_text(text)
    now = time.time()
    poll(service, now - 10)
    poll(service, now)
    [event] = service.store.r.zrange(service.store.keys.outbox, 0, -1)
    assert service.deliver_until_done([event], timeout=5) == {"recorded": 1}
    assert posts(http_server, "/ops") == []


@pytest.mark.integration
def test_a_feed_silent_for_much_longer_than_its_rhythm_is_stale(tmp_path, redis_url,
                                                                 http_server, caplog):
    # items two hours apart, the newest a day old: five gaps are ten hours, so stale
    old = datetime.now(UTC) - timedelta(days=1)
    items = [{**item(n, f"Story {n}", LNG_STORY),
              "date": (old - timedelta(hours=2 * n)).strftime("%a, %d %b %Y %H:%M:%S +0000")}
             for n in range(5)]
    http_server.routes["/feed"] = (200, RSS, rss(items))
    service = make_service(tmp_path, redis_url, http_server)
    caplog.set_level(logging.INFO, logger="newsmon.pipeline")
    outcome = poll(service, time.time())
    assert outcome["stale"] == 1 and outcome["rhythm"] == 2 * HOUR
    assert any("stale" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    state = service.store.feed_state("wire")
    assert state["stale"] == "1" and state["health"] == HEALTHY
    http_server.routes["/feed"] = (304, {}, b"")
    assert poll(service, time.time())["stale"] == 1  # a 304 keeps what the last items said

    items.insert(0, {**item(9, "Fresh story", LNG_STORY),
                     "date": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")})
    http_server.routes["/feed"] = (200, RSS, rss(items))
    assert poll(service, time.time())["stale"] == 0
    assert service.store.feed_state("wire")["stale"] == "0"


@pytest.mark.integration
def test_status_shows_failing_and_stale_feeds(tmp_path, redis_url, http_server):
    http_server.routes["/feed"] = (500, {}, b"broken")
    service = make_service(tmp_path, redis_url, http_server, failing_after="1h")
    now = time.time()
    poll(service, now - 2 * HOUR)
    poll(service, now)
    env = {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(tmp_path / "config")}
    table = CliRunner().invoke(main, ["status"], env=env).output
    since = datetime.fromtimestamp(now - 2 * HOUR, UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f"failing since {since}" in table
    [wire] = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).output)["feeds"]
    assert (wire["health"], wire["failing_since"], wire["stale"]) == ("failing", now - 2 * HOUR,
                                                                      False)


# -- newsmon health ---------------------------------------------------------------------------
def health(procs, *args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "worker", "health", *args],
                          env={**procs.env, **env}, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip()


@pytest.mark.integration
def test_health_says_why_it_is_unhealthy_in_one_line(procs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    code, out = health(procs, REDIS_URL=f"redis://:pw@127.0.0.1:{closed}/0")
    assert (code, out) == (1, f"unhealthy: Redis at redis://***@127.0.0.1:{closed}/0 does not answer")
    code, out = health(procs)
    assert (code, out) == (1, "unhealthy: no recent beat tick (last: never; limit 30 s)")
    procs.redis.set(KEYS.beat, time.time() - 100)
    code, out = health(procs, "--max-beat-age", "120")
    assert (code, out) == (1, "unhealthy: no worker answered a ping within 2 s")
    code, out = health(procs)
    assert code == 1 and re.fullmatch(r"unhealthy: no recent beat tick \(last: 1\d\d s ago; "
                                      r"limit 30 s\)", out)


@pytest.mark.integration
def test_health_is_ok_with_a_worker_and_beat_running(procs):
    (procs.config / "c.yaml").write_text("feeds: []\n")
    procs.worker()
    procs.beat()
    wait_until(lambda: health(procs)[0] == 0, 30, "newsmon health to pass")
    code, out = health(procs)
    assert out.startswith("healthy: Redis answers, beat ") and "1 worker(s) answered" in out
    assert health(procs, "--component", "worker")[0] == 0  # this host's worker
    assert health(procs, "--component", "beat")[0] == 0
    procs.kill(procs.procs[0])  # the worker
    code, out = health(procs, "--component", "worker")
    assert (code, out) == (1, "unhealthy: no worker on this host answered a ping within 2 s")
