"""Alert shaping under ``newsmon run --once``, against a real Redis, real feeds and a real
receiver on 127.0.0.1: digests, throttles, breaking stories, updates, salience, and a digest
whose assembler is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.feeds import item, rss
from tests.stories import RSS, entry, events, of_type, serve, story, titles, write_config
from tests.test_lifetimes import rule_of
from worker.cli import main
from worker.config import FeedConfig
from worker.parse import parse_feed
from worker.pipeline import Fresh, process_entries
from worker.service import Service
from worker.settings import Settings
from worker.store import SHAPE_LIFETIMES, Store

pytestmark = pytest.mark.integration


def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(tmp_path / "config"),
            "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_DUMP_DIR": str(tmp_path / "dump")}


def newsmon(tmp_path: Path, redis_url: str, *args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=env(tmp_path, redis_url),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def run_once(tmp_path: Path, redis_url: str) -> Result:
    return newsmon(tmp_path, redis_url, "run", "--once", "--timeout", "20")


def service(tmp_path: Path, redis_url: str) -> Service:
    return Service(Settings.from_env(env(tmp_path, redis_url)), redis_url)


def test_a_digest_sends_every_story_of_its_window_once_and_an_empty_window_nothing(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in (1, 2, 3)]
          + [item(9, "Rice harvest", "Farmers expect more rice.")])
    serve(http_server, "/b", [entry(1, site="paper")])   # a copy of story 1: the same story
    write_config(tmp_path / "config", http_server, [{"name": "desk", "digest": "1h"}],
                 feeds=("/a", "/b"))
    run_once(tmp_path, redis_url)
    [digest] = events(http_server)
    assert digest["type"] == "digest.created"
    data = digest["data"]
    assert data["watchlist"] == "desk" and data["id"] == digest["webhook_id"]
    assert titles(data["alerts"]) == ["LNG story 1", "LNG story 2", "LNG story 3"]
    assert len({a["article"]["story"] for a in data["alerts"]}) == 3
    assert all(a["salience"] >= 0.5 for a in data["alerts"])   # named in every title
    start, end = (datetime.fromisoformat(data["window"][k]) for k in ("start", "end"))
    assert start <= end <= datetime.now(UTC)
    # Nothing new: the next window is empty, and an empty window sends nothing.
    run_once(tmp_path, redis_url)
    assert len(events(http_server)) == 1
    listing = newsmon(tmp_path, redis_url, "alerts", "list", "--json")
    views = json.loads(listing.output)
    assert sorted(v["type"] for v in views) == ["alert.created"] * 3 + ["digest.created"]
    assert {v["state"] for v in views if v["type"] == "alert.created"} == {"digest"}
    assert {v["digest"] for v in views if v["type"] == "alert.created"} == {data["id"]}
    shown = newsmon(tmp_path, redis_url, "alerts", "show", data["id"]).output
    assert "digest.created" in shown and "delivered" in shown and "LNG story 2" in shown
    table = newsmon(tmp_path, redis_url, "alerts", "list").output
    assert "digest.created (3 alerts)" in table and f"in {data['id']}" in table


def test_a_throttle_overflows_into_the_digest_and_loses_nothing(tmp_path, redis_url,
                                                                  http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in range(1, 6)])
    write_config(tmp_path / "config", http_server,
                 [{"name": "desk", "digest": "1h", "throttle": "2/h"}])
    run_once(tmp_path, redis_url)
    got = events(http_server)
    alerts = of_type(got, "alert.created")
    [digest] = of_type(got, "digest.created")
    assert len(alerts) == 2 and len(digest["data"]["alerts"]) == 3
    sent = [a["data"]["id"] for a in alerts] + [a["id"] for a in digest["data"]["alerts"]]
    recorded = [a["id"] for a in service(tmp_path, redis_url).store.alerts()
                if a["id"].startswith("alert_")]
    assert sorted(sent) == sorted(recorded) and len(recorded) == 5   # each once
    assert titles([a["data"] for a in alerts] + digest["data"]["alerts"]) == [
        f"LNG story {n}" for n in range(1, 6)]


def test_without_a_digest_the_throttle_sends_what_it_held_when_it_reopens(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in range(1, 5)])
    write_config(tmp_path / "config", http_server, [{"name": "desk", "throttle": "2/3s"}])
    run_once(tmp_path, redis_url)
    first = events(http_server)
    assert [e["type"] for e in first] == ["alert.created"] * 2
    run_once(tmp_path, redis_url)    # still full: what it holds waits
    assert len(events(http_server)) == 2
    time.sleep(3.2)
    run_once(tmp_path, redis_url)
    got = events(http_server)
    [digest] = of_type(got, "digest.created")
    assert len(got) == 3
    held = titles(digest["data"]["alerts"])
    assert sorted(held + titles([e["data"] for e in first])) == [
        f"LNG story {n}" for n in range(1, 5)]


def test_a_story_fires_breaking_once_it_reaches_the_bar(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(1), entry(2)], title="Wire A")
    serve(http_server, "/b", [], title="Paper B")
    serve(http_server, "/c", [], title="Site C")
    write_config(tmp_path / "config", http_server,
                 [{"name": "desk", "breaking": {"outlets": 3, "within": "30m"}}],
                 feeds=("/a", "/b", "/c"))
    run_once(tmp_path, redis_url)
    serve(http_server, "/b", [entry(1, site="paper"), entry(2, site="paper")], title="Paper B")
    run_once(tmp_path, redis_url)
    assert events(http_server) == []        # two outlets: below the bar
    serve(http_server, "/c", [entry(1, site="site")], title="Site C")
    run_once(tmp_path, redis_url)
    run_once(tmp_path, redis_url)
    [breaking] = events(http_server)         # story 2 never reaches 3 outlets: never fires
    assert breaking["type"] == "story.breaking"
    data = breaking["data"]
    assert data["outlets"] == 3 and data["article"]["title"] == "LNG story 1"
    assert sorted(c["source"] for c in data["copies"]) == ["Paper B", "Site C", "Wire A"]
    assert {c["url"] for c in data["copies"]} == {
        f"https://{s}.example/story/1" for s in ("wire", "paper", "site")}


def test_copies_after_the_breaking_window_do_not_count(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(1)])
    serve(http_server, "/b", [])
    write_config(tmp_path / "config", http_server,
                 [{"name": "desk", "breaking": {"outlets": 2, "within": "1s"}}],
                 feeds=("/a", "/b"))
    run_once(tmp_path, redis_url)
    time.sleep(1.5)
    serve(http_server, "/b", [entry(1, site="paper")])
    run_once(tmp_path, redis_url)
    assert events(http_server) == []
    assert service(tmp_path, redis_url).store.stats()["duplicates"] == 1   # it was a copy


def test_a_new_outlet_sends_an_update(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(1)], title="Wire A")
    serve(http_server, "/b", [], title="Paper B")
    write_config(tmp_path / "config", http_server, [{"name": "desk", "updates": True}],
                 feeds=("/a", "/b"))
    run_once(tmp_path, redis_url)
    [created] = events(http_server)
    serve(http_server, "/b", [entry(1, site="paper")], title="Paper B")
    run_once(tmp_path, redis_url)
    run_once(tmp_path, redis_url)
    [_, updated] = events(http_server)
    assert updated["type"] == "alert.updated"
    data = updated["data"]
    assert data["alert"] == created["data"]["id"] and data["reason"] == "outlet"
    assert data["changed"] == ["outlets"] and data["outlets"] == 2
    assert data["copy"]["source"] == "Paper B"
    assert data["copy"]["url"] == "https://paper.example/story/1"


def dumps_of(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "dump").rglob("*.txt"))


def test_a_corrected_text_sends_an_update_and_writes_a_new_dump_only_when_it_changed(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    original = story(1)
    serve(http_server, "/a", [entry(1, body=original)])
    write_config(tmp_path / "config", http_server, [{"name": "desk", "updates": True}])
    run_once(tmp_path, redis_url)
    [created] = events(http_server)
    assert len(dumps_of(tmp_path)) == 1
    # Markup only (the same text once normalized): no update, no dump.
    http_server.routes["/a"] = (200, RSS, rss([entry(1, body=original)]).replace(
        b"<p>Officials", b"<p> <span>Officials</span>").replace(b"</span> said", b" said"))
    run_once(tmp_path, redis_url)
    assert len(events(http_server)) == 1 and len(dumps_of(tmp_path)) == 1
    corrected = original.replace("Officials said", "Officials denied", 1)
    serve(http_server, "/a", [entry(1, body=corrected)])
    run_once(tmp_path, redis_url)
    run_once(tmp_path, redis_url)            # the same corrected text again: nothing new
    [_, updated] = events(http_server)
    data = updated["data"]
    assert data["reason"] == "correction" and data["changed"] == ["text"]
    assert data["outlets"] == 1
    assert data["alert"] == created["data"]["id"]
    assert "Officials denied" in data["article"]["dump"]
    files = dumps_of(tmp_path)
    assert len(files) == 2
    assert len({f.name.split("_", 1)[1] for f in files}) == 1    # one article, two texts
    assert "Officials denied" in files[1].read_text() and "Officials said" in files[0].read_text()


def test_min_salience_drops_passing_mentions(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    passing = story(7, lead="") + "\nLater, an official said LNG was not discussed."
    serve(http_server, "/a", [entry(7, "Harbour dredging starts", passing),
                              entry(8, "Harbour dredging ends", story(8)),
                              entry(1)])
    write_config(tmp_path / "config", http_server,
                 [{"name": "strict", "min_salience": 0.3}, {"name": "any"}])
    run_once(tmp_path, redis_url)
    got = {(e["data"]["watchlist"], e["data"]["article"]["title"]): e["data"]["salience"]
           for e in events(http_server)}
    assert got == {("any", "Harbour dredging starts"): 0.04,
                   ("any", "Harbour dredging ends"): 0.34,
                   ("strict", "Harbour dredging ends"): 0.34,
                   ("any", "LNG story 1"): 0.84, ("strict", "LNG story 1"): 0.84}


def test_updates_of_one_story_leave_at_most_every_ten_minutes_merged(tmp_path, redis_url,
                                                                      http_server):
    """Time is passed in: the pipeline runs at chosen times against the real store."""
    write_config(tmp_path / "config", http_server, [{"name": "desk", "updates": True}],
                 feeds=("/a", "/b", "/c"))
    svc = service(tmp_path, redis_url)
    t0 = time.time()

    def copy_at(site: str, when: float) -> list[str]:
        feed = FeedConfig(url=f"https://{site}.example/rss", name=site, full_text="never")
        parsed = parse_feed(rss([entry(1, site=site)], title=site.title()), "application/rss+xml")
        return process_entries(feed, parsed, [Fresh(e, None) for e in parsed.entries],
                               svc.store, svc.matcher(), tmp_path / "dump", when, svc.shaper())

    [alert] = copy_at("wire", t0)
    [update] = copy_at("paper", t0 + 60)
    assert update.startswith("update_")
    assert copy_at("site", t0 + 120) == [] and copy_at("blog", t0 + 180) == []
    assert svc.close_shaping(t0 + 600) == []                     # not yet ten minutes
    [merged] = svc.close_shaping(t0 + 661)
    assert svc.close_shaping(t0 + 700) == []
    record = svc.store.alert(merged)
    assert record["type"] == "alert.updated" and record["data"]["outlets"] == 4
    assert record["data"]["alert"] == alert and record["data"]["copy"]["source"] == "Blog"


ASSEMBLER = """
import os, signal, sys, time
from worker.service import Service
from worker.settings import Settings
from worker.store import ShapingStore

def die(*_args, **_kw):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "before-queue":
    ShapingStore.add_event = die
else:
    real = ShapingStore.add_event
    def queue_then_die(self, record, now):
        real(self, record, now)
        die()
    ShapingStore.add_event = queue_then_die
service = Service(Settings.from_env(), os.environ["REDIS_URL"])
service.close_shaping(time.time(), force=True)
"""


@pytest.mark.parametrize("point", ["before-queue", "after-queue"])
def test_a_digest_whose_assembler_is_killed_still_goes_out_once(tmp_path, redis_url,
                                                                 http_server, point):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in (1, 2, 3)])
    write_config(tmp_path / "config", http_server, [{"name": "desk", "digest": "1h"}])
    svc = service(tmp_path, redis_url)
    feed = svc.config().feeds[0]
    svc.poll(feed, lambda f, parsed, items: svc.process(f, parsed, items))   # fills the window
    killed = subprocess.run([sys.executable, "-c", ASSEMBLER, point],
                            env={**os.environ, **env(tmp_path, redis_url)}, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert events(http_server) == []
    assert svc.store.shaping.pending_counts("desk")["sealed"] == 1   # sealed, not yet sent
    run_once(tmp_path, redis_url)
    run_once(tmp_path, redis_url)
    [digest] = events(http_server)
    assert titles(digest["data"]["alerts"]) == ["LNG story 1", "LNG story 2", "LNG story 3"]
    assert svc.store.shaping.pending_counts("desk") == {"window": 0, "held": 0, "sealed": 0}


def test_closing_digests_concurrently_queues_each_digest_once(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in (1, 2)])
    write_config(tmp_path / "config", http_server, [{"name": "desk", "digest": "1h"}])
    svc = service(tmp_path, redis_url)
    svc.poll(svc.config().feeds[0], lambda f, parsed, items: svc.process(f, parsed, items))
    now = time.time()
    with ThreadPoolExecutor(8) as pool:
        queued = list(pool.map(lambda _: service(tmp_path, redis_url).close_shaping(now, True),
                               range(8)))
    digests = [r for r in svc.store.alerts() if r.get("type") == "digest.created"]
    assert len(digests) == 1 and len(digests[0]["data"]["alerts"]) == 2
    assert {i for ids in queued for i in ids} == {digests[0]["id"]}


def test_a_breaking_story_is_updated_only_by_copies_after_it_broke(tmp_path, redis_url,
                                                                    http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    for path in ("/a", "/b", "/c"):
        serve(http_server, path, [], title=path.strip("/").upper())
    write_config(tmp_path / "config", http_server,
                 [{"name": "desk", "updates": True, "breaking": {"outlets": 2, "within": "1h"}}],
                 feeds=("/a", "/b", "/c"))
    serve(http_server, "/a", [entry(1)], title="A")
    run_once(tmp_path, redis_url)
    serve(http_server, "/b", [entry(1, site="b")], title="B")
    run_once(tmp_path, redis_url)
    assert [e["type"] for e in events(http_server)] == ["story.breaking"]
    serve(http_server, "/c", [entry(1, site="c")], title="C")
    run_once(tmp_path, redis_url)
    [breaking, updated] = events(http_server)
    assert updated["type"] == "alert.updated" and updated["data"]["outlets"] == 3
    assert updated["data"]["alert"] == breaking["data"]["id"]


def test_every_shaping_key_has_a_lifetime_row_and_its_expiry(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in (1, 2, 3)])
    serve(http_server, "/b", [entry(1, site="paper")])
    write_config(tmp_path / "config", http_server, [
        {"name": "digest", "digest": "1h", "throttle": "1/h"},
        {"name": "held", "throttle": "1/h"},
        {"name": "breaking", "breaking": {"outlets": 2, "within": "1h"}, "updates": True},
        {"name": "updates", "updates": True}], feeds=("/a", "/b"))
    svc = service(tmp_path, redis_url)
    for feed in svc.config().feeds:     # without closing the windows: every family is filled
        svc.poll(feed, lambda f, parsed, items: svc.process(f, parsed, items))
    serve(http_server, "/a", [entry(1, body=story(1).replace("said", "denied", 1))])
    svc.poll(svc.config().feeds[0], lambda f, parsed, items: svc.process(f, parsed, items))
    svc.close_shaping(time.time())
    # every key, the shaping families' and the others', matches one row of store.LIFETIMES
    keys = [k for k in svc.store.r.scan_iter("newsmon:*")]
    families = set()
    for key in keys:
        row = rule_of(key)
        assert row is not None, f"{key} has no lifetime row"
        assert svc.store.r.type(key) == row.type, (key, row)
        if row in SHAPE_LIFETIMES:
            families.add(row.pattern)
        if row.rule == "ttl":
            assert svc.store.r.pttl(key) > 0, f"{key} never expires"
        else:
            assert svc.store.r.pttl(key) == -1, f"{key}: rule {row.rule} but it has a TTL"
    assert len(families) >= 10   # the paths above reach nearly every family


def test_the_alert_retention_keeps_an_unrouted_alert_and_ends_one_that_left_in_a_digest(
        redis_url):
    store = Store.from_url(redis_url, alert_retention_days=1)
    now = time.time()
    record = {"id": "alert_" + "a" * 32, "watchlist": "desk", "story": "0123456789abcdef",
              "article": {"id": "00000000000000aa"}}
    aid, new = store.claim_alert(record["story"], "desk", record["id"], record, now, shaped=True)
    assert new and store.alert(aid)["state"] == "shaping"
    assert store.outbox_next() is None                     # shaping routes it, not the outbox
    assert store.forget_alerts(now + 10 * store.alert_ttl) == 0 and store.alert(aid)
    store.shaping.set_route(aid, "digest", now)
    assert store.alert(aid)["state"] == "digest" and store.outbox_next() is None
    assert store.forget_alerts(now + store.alert_ttl - 1) == 0 and store.alert(aid)
    assert store.forget_alerts(now + store.alert_ttl + 1) == 1 and store.alert(aid) is None
    assert store.alert_gone(aid) is not None
