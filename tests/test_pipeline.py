"""The service's pipeline against a real Redis and real loopback feed servers (no Celery):
what ``newsmon run --once`` does, one feed at a time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from worker.service import Service, decode_batch, encode_batch
from worker.settings import Settings

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}
WATCHLISTS = [
    {"name": "japan", "entities": ["Japan"]},
    {"name": "lng", "entities": [{"name": "LNG", "aliases": ["liquefied natural gas"]}]},
    {"name": "rice", "entities": ["rice"], "exclude": ["Japan Airlines"]},
]


def make_service(tmp_path: Path, redis_url: str, feeds: list[dict], **env: str) -> Service:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "feeds.yaml").write_text(yaml.safe_dump({"feeds": feeds,
                                                       "watchlists": WATCHLISTS}))
    settings = Settings.from_env({"NEWSMON_CONFIG": str(folder),
                                  "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                                  "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", **env})
    return Service(settings, redis_url)


def feed(server, path: str, **extra) -> dict:
    return {"url": server.url(path), "name": path.strip("/"), "full_text": "never", **extra}


def dumps(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "dump").rglob("*.txt"))


def test_a_run_over_several_feeds_writes_stories_and_alerts(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY),
                                               item(2, "Rice harvest to grow", RICE_STORY)]))
    http_server.routes["/b"] = (200, RSS, rss([item(3, "Markets wrap", "Stocks rose. " * 30)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a"), feed(http_server, "/b")])
    summary = service.run_once()
    assert summary["failed"] == [] and summary["new_items"] == 3
    files = dumps(tmp_path)
    assert [f.parent.name for f in files] == ["2025-02-06"] * 3
    assert sorted(f.name[:4] for f in files) == ["000_", "001_", "002_"]
    first = files[0].read_text()
    assert first.startswith(" date 2025-02-06 ")
    alerts = service.store.alerts()
    assert sorted(a["watchlist"] for a in alerts) == ["japan", "lng", "rice"]
    lng = next(a for a in alerts if a["watchlist"] == "lng")
    assert lng["entities"] == ["LNG"]
    assert [(m["term"], m["field"]) for m in lng["matches"]] == [
        ("LNG", "title"), ("liquefied natural gas", "body")]
    assert lng["state"] == "recorded" and lng["article"]["title"] == "Japan LNG imports jump"
    assert service.store.stats() == {"articles": 3, "stories": 3, "duplicates": 0, "alerts": 3}
    stream = service.store.r.xrange(service.store.keys.articles)
    assert len(stream) == 3 and json.loads(stream[0][1]["article"])["file"].endswith(".txt")
    assert service.store.r.xlen(service.store.keys.alerts) == 3


def test_a_second_run_adds_nothing(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.run_once()
    before = (service.store.stats(), dumps(tmp_path))
    service.run_once()
    assert (service.store.stats(), dumps(tmp_path)) == before
    assert service.run_once()["new_items"] == 0


def test_the_same_story_in_two_feeds_alerts_once_per_watchlist(tmp_path, redis_url, http_server):
    http_server.routes["/wire"] = (200, RSS, rss([item(
        1, "Japan LNG imports jump", LNG_STORY, link="https://wire.example/lng")]))
    http_server.routes["/paper"] = (200, RSS, rss([item(
        2, "JAPAN LNG IMPORTS JUMP", "TOKYO (Reuters) - " + LNG_STORY
        + " Analysts expect imports to stay high through March.",
        link="https://paper.example/lng")]))
    http_server.routes["/mirror"] = (200, RSS, rss([item(
        3, "Japan LNG imports jump", LNG_STORY,
        link="https://wire.example/lng?utm_source=twitter&fbclid=abc")]))
    service = make_service(tmp_path, redis_url, [feed(http_server, p) for p in
                                                 ("/wire", "/paper", "/mirror")])
    for _ in range(2):  # a second run must not add anything either
        service.run_once(workers=3)
    alerts = service.store.alerts()
    assert sorted(a["watchlist"] for a in alerts) == ["japan", "lng"]
    # The mirror's link is the wire's URL plus tracking parameters: the same article, processed
    # once; the paper's reprint is a second copy of the story.
    assert service.store.stats() == {"articles": 2, "stories": 1, "duplicates": 1, "alerts": 2}
    assert len(dumps(tmp_path)) == 1
    assert service.store.story(alerts[0]["story"])["copies"] == "2"


def test_a_later_copy_can_fire_a_watchlist_the_first_did_not(tmp_path, redis_url, http_server):
    summary = LNG_STORY.replace("liquefied natural gas", "fuel")
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan imports", summary,
                                                    link="https://wire.example/x")]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.run_once()
    assert [a["watchlist"] for a in service.store.alerts()] == ["japan"]
    # Another outlet's copy of the same story names LNG: only the lng watchlist fires now.
    http_server.routes["/a"] = (200, RSS, rss([item(2, "Japan imports", LNG_STORY,
                                                    link="https://paper.example/y")]))
    service.run_once()
    alerts = service.store.alerts()
    assert sorted(a["watchlist"] for a in alerts) == ["japan", "lng"]
    assert len({a["story"] for a in alerts}) == 1


def test_conditional_get_answered_304_costs_no_parse(tmp_path, redis_url, http_server):
    body = rss([item(1, "Japan LNG imports jump", LNG_STORY)])

    def conditional(handler):
        if handler.headers.get("If-None-Match") == '"v1"':
            return 304, {"ETag": '"v1"'}, b""
        return 200, {**RSS, "ETag": '"v1"'}, body

    http_server.routes["/a"] = conditional
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.run_once()
    assert service.run_once()["new_items"] == 0
    assert http_server.requests[-1]["headers"].get("If-None-Match") == '"v1"'
    state = service.store.feed_state("a")
    assert (state["outcome"], state["status"]) == ("not modified", "304")


def test_fetch_failures_are_recorded_per_feed_and_never_stop_others(tmp_path, redis_url,
                                                                     http_server):
    http_server.routes["/ok"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    http_server.routes["/html"] = (200, {"Content-Type": "text/html"},
                                   b"<html><body><h1>Welcome</h1></body></html>")
    http_server.routes["/gone"] = (404, {}, b"no")
    http_server.routes["/busy"] = (503, {"Retry-After": "7200"}, b"later")
    http_server.routes["/big"] = (200, RSS, b"<rss>" + b" " * (16 * 1024 * 1024) + b"</rss>")
    feeds = [feed(http_server, p) for p in ("/ok", "/html", "/gone", "/busy", "/big")]
    feeds += [{"name": "dns", "url": "http://no-such-host.invalid/rss"},
              {"name": "tls", "url": f"https://127.0.0.1:{http_server.port}/ok"},
              {"name": "refused", "url": "http://10.255.255.1/rss"}]
    service = make_service(tmp_path, redis_url, feeds)
    now = time.time()
    summary = service.run_once()
    failed = dict(summary["failed"])
    assert summary["new_items"] == 1 and "ok" not in failed
    assert "HTML" in failed["html"] or "html" in failed["html"]
    assert "404" in failed["gone"]
    assert "503" in failed["busy"]
    assert "15 MiB" in failed["big"]
    assert "DNS" in failed["dns"]
    assert "TLS" in failed["tls"] or "SSL" in failed["tls"]
    assert "refused" in failed["refused"] and "10.255.255.1" in failed["refused"]
    due = service.store.due_times()
    assert due["busy"] >= now + 7200 - 5  # Retry-After is a minimum wait
    assert due["ok"] <= now + 300 + 5
    assert all(service.store.feed_state(n)["failures"] == "1" for n in failed)


def test_a_refused_address_receives_nothing(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan", LNG_STORY)]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")],
                           NEWSMON_ALLOW_NETWORKS="")
    failed = dict(service.run_once()["failed"])
    assert "refused" in failed["a"] and http_server.requests == []


def test_a_failing_feed_backs_off_and_returns_to_its_interval(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (500, {}, b"broken")
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a", every="60s")])
    waits = []
    for _ in range(3):
        start = time.time()
        service.run_once()
        waits.append(round(service.store.due_times()["a"] - start, -1))
    assert waits == [120, 240, 480]
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan", LNG_STORY)], ttl=30))
    start = time.time()
    service.run_once()
    assert round(service.store.due_times()["a"] - start, -1) == 1800  # <ttl> 30 min wins
    assert service.store.feed_state("a")["failures"] == "0"


def test_one_bad_entry_does_not_stop_the_others(tmp_path, redis_url, http_server):
    good = item(1, "Japan LNG imports jump", LNG_STORY)
    bad = {**item(2, "Broken", RICE_STORY), "date": "not a date at all"}
    http_server.routes["/a"] = (200, RSS, rss([bad, good]))
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.run_once()
    assert service.store.stats()["stories"] == 2


def test_batches_survive_the_trip_through_json(tmp_path, redis_url, http_server):
    from worker.parse import parse_feed
    from worker.pipeline import Fresh

    parsed = parse_feed(rss([item(1, "Japan LNG imports jump", LNG_STORY)]), None)
    items = [Fresh(e, None) for e in parsed.entries]
    back_parsed, back_items = decode_batch(json.loads(json.dumps(encode_batch(parsed, items))))
    assert back_items == items
    assert back_parsed.title == parsed.title
