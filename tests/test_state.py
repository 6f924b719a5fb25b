"""State that lasts, against a real Redis and loopback feeds: lifetimes that follow the story,
idempotent processing, alert retention, failures in their place."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from tests.test_pipeline import RSS, dumps, feed, make_service
from worker.cli import main
from worker.dump import dump_of, render_dump
from worker.models import Article
from worker.pipeline import poll_feed, process_article
from worker.settings import Settings

pytestmark = pytest.mark.integration


def undated(n: int, title: str, body: str, link: str) -> dict:
    it = item(n, title, body, link=link)
    it["date"] = ""
    return it


def rss_undated(items: list[dict]) -> bytes:
    return rss(items).replace(b"<pubDate></pubDate>", b"")


# -- lifetimes that follow the story ------------------------------------------------------------

def test_an_item_that_stays_in_its_feed_is_never_processed_again(tmp_path, redis_url,
                                                                 http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")],
                           NEWSMON_RETENTION_DAYS=str(1.5 / 86400))  # 1.5 s
    assert service.run_once()["new_items"] == 1
    alerts = len(service.store.alerts())
    for _ in range(2):
        time.sleep(1.6)  # the story, its keys and its alerts' markers have all expired
        assert service.run_once()["new_items"] == 0
    assert len(service.store.alerts()) == alerts and len(dumps(tmp_path)) == 1
    # it left the feed and came back after the window: that is news again
    http_server.routes["/a"] = (200, RSS, rss([item(2, "Rice harvest to grow", RICE_STORY)]))
    service.run_once()
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    assert service.run_once()["new_items"] == 1


def test_copies_that_keep_arriving_keep_the_story_its_keys_and_its_alerts(tmp_path, redis_url,
                                                                         http_server):
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")],
                           NEWSMON_RETENTION_DAYS=str(2 / 86400))  # 2 s
    for n in range(4):  # a copy every 1.2 s, at a new URL: 4.8 s, more than twice the window
        http_server.routes["/a"] = (200, RSS, rss([item(
            n, "Japan LNG imports jump", LNG_STORY, link=f"https://site{n}.example/lng")]))
        service.run_once()
        time.sleep(1.2)
    stats = service.store.stats()
    assert (stats["stories"], stats["duplicates"]) == (1, 3)
    assert sorted(a["watchlist"] for a in service.store.alerts()) == ["japan", "lng"]


# -- idempotent processing ----------------------------------------------------------------------

def article(aid: str, body: str, url: str = "https://news.example/x", day: int = 6) -> Article:
    from datetime import UTC, datetime

    return Article(id=aid, canonical_url=url, url=url, guid=None, title="Japan LNG imports jump",
                   author="Staff", source="Wire", published=datetime(2025, 2, day, tzinfo=UTC),
                   paragraphs=(body,), feed="https://news.example/rss")


def stream_ids(service) -> list[str]:
    return [json.loads(e[1]["article"])["id"]
            for e in service.store.r.xrange(service.store.keys.articles)]


def test_processing_an_article_twice_with_another_text_writes_one_dump_and_one_entry(
        tmp_path, redis_url):
    service = make_service(tmp_path, redis_url, [])
    first = article("a" * 16, LNG_STORY)
    # the second run saw another text and another time (an undated item, full text once)
    second = article("a" * 16, RICE_STORY, day=7)
    now = time.time()
    process_article(first, service.store, service.matcher(), tmp_path / "dump", now)
    process_article(second, service.store, service.matcher(), tmp_path / "dump", now + 5)
    files = dumps(tmp_path)
    assert len(files) == 1 and files[0].read_text() == render_dump(dump_of(first))
    assert stream_ids(service) == ["a" * 16]


def test_a_crash_after_the_claim_keeps_the_first_text(tmp_path, redis_url):
    service = make_service(tmp_path, redis_url, [])
    first, second = article("b" * 16, LNG_STORY), article("b" * 16, RICE_STORY, day=9)
    now = time.time()
    from worker.dedupe import story_keys

    claim = service.store.claim_story(first.id, story_keys(first), now)  # then the worker died
    service.store.first_text(first.id, render_dump(dump_of(first)))
    assert claim.is_new
    process_article(second, service.store, service.matcher(), tmp_path / "dump", now + 1)
    files = dumps(tmp_path)
    assert [f.read_text() for f in files] == [render_dump(dump_of(first))]
    assert files[0].parent.name == "2025-02-06"  # the first run's day, not the retry's


def test_two_feeds_with_one_url_and_an_item_listed_twice_give_one_file(tmp_path, redis_url,
                                                                       http_server):
    link = "https://wire.example/lng"
    http_server.routes["/a"] = (200, RSS, rss_undated([
        undated(1, "Japan LNG imports jump", LNG_STORY, link),
        undated(1, "Japan LNG imports jump", LNG_STORY + " Updated.", link)]))
    http_server.routes["/b"] = (200, RSS, rss_undated([
        undated(2, "Japan LNG imports jump", "TOKYO - " + LNG_STORY + " More text here.", link)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a"), feed(http_server, "/b")])
    service.run_once(workers=2)
    service.run_once(workers=2)
    assert len(dumps(tmp_path)) == 1
    assert len(stream_ids(service)) == 1
    assert service.store.stats()["articles"] == 1


# -- alert records with a retention -------------------------------------------------------------

def test_finished_alerts_age_out_and_pending_ones_stay(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")],
                           NEWSMON_ALERT_RETENTION_DAYS=str(1 / 86400))  # 1 s
    service.run_once()
    alerts = service.store.alerts()
    assert {a["state"] for a in alerts} == {"recorded"}  # no destination: finished at once
    pending = service.store.claim_alert("s" * 16, "japan", "alert_pending",
                                        {"id": "alert_pending", "article": {"id": "c" * 16}},
                                        time.time())[0]
    # the stream entry holds no dump text: it is stored once, in the alert
    entry = json.loads(service.store.r.xrange(service.store.keys.alerts)[-1][1]["alert"])
    assert "dump" not in entry["article"]
    time.sleep(1.2)
    service.store.forget_alerts(time.time())
    assert [a["id"] for a in service.store.alerts()] == [pending]
    gone = alerts[0]["id"]
    assert service.store.alert(gone) is None and service.store.alert_gone(gone)
    assert service.store.r.xlen(service.store.keys.alerts) == 0  # trimmed by time (MINID)
    env = {"NEWSMON_CONFIG": str(tmp_path / "config"), "REDIS_URL": redis_url,
           "NEWSMON_ALERT_RETENTION_DAYS": str(1 / 86400)}
    out = CliRunner().invoke(main, ["alerts", "show", gone], env=env)
    assert out.exit_code != 0 and "aged out" in out.output
    out = CliRunner().invoke(main, ["alerts", "show", "alert_never"], env=env)
    assert "no alert alert_never" in out.output


def test_alert_retention_accepts_fractions_of_days():
    assert Settings.from_env({"NEWSMON_ALERT_RETENTION_DAYS": "0.5"}).alert_retention_days == 0.5
    assert Settings.from_env({}).alert_retention_days == 30.0


# -- failures in their place --------------------------------------------------------------------

def test_a_feed_answering_html_saves_no_validators(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, {"Content-Type": "text/html", "ETag": '"page"'},
                                b"<html><body>Welcome</body></html>")
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    for _ in range(2):
        service.run_once()
    state = service.store.feed_state("a")
    assert state["outcome"] == "failed" and state["failures"] == "2"
    assert not state.get("etag")
    assert "If-None-Match" not in http_server.requests[-1]["headers"]


def test_an_unexpected_error_is_recorded_on_its_feed(tmp_path, redis_url, http_server,
                                                     monkeypatch):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])

    def broken(*_args, **_kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(service, "parse", broken)  # the service's parse_feed (bounded)
    service.run_once()
    service.store.set_due("a", 0)
    service.run_once()
    state = service.store.feed_state("a")
    assert state["outcome"] == "failed" and state["failures"] == "2"
    assert "unexpected error: ValueError: a bug" in state["error"]
    assert state["health"] == "degraded" and float(state["next_due"]) > time.time() + 300


def test_a_redis_error_while_processing_fails_the_poll_and_saves_no_validators(
        tmp_path, redis_url, http_server, monkeypatch):
    body = rss([item(1, "Japan LNG imports jump", LNG_STORY)])
    http_server.routes["/a"] = (200, {**RSS, "ETag": '"v1"'}, body)
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.store.sync_feeds(["a"], time.time())

    def out_of_memory(*_args, **_kwargs):
        raise redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    def submit(f, parsed, items):
        monkeypatch.setattr(service.store, "claim_story", out_of_memory)
        service.process(f, parsed, items)

    with pytest.raises(redis.ResponseError):
        poll_feed(service.feed("a"), service.store, service.fetcher, time.time(), submit)
    assert not service.store.feed_state("a").get("etag")
    assert service.store.feed_ids("a") == set()
    monkeypatch.undo()
    service.poll(service.feed("a"), lambda f, p, i: service.process(f, p, i))
    assert len(dumps(tmp_path)) == 1 and service.store.feed_state("a")["etag"] == '"v1"'


def test_dump_folder_errors_fail_the_task_too(tmp_path, redis_url):
    service = make_service(tmp_path, redis_url, [])
    blocked = tmp_path / "dump"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(OSError):
        process_article(article("d" * 16, LNG_STORY), service.store, service.matcher(),
                        Path(blocked), time.time())
