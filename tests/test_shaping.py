"""The pure decisions of alert shaping: salience, digest windows, routes, the breaking bar,
update gaps, corrections; and the watchlist options that feed them."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.crc import key_slot

import worker.shaping
from worker.config import BreakingConfig, WatchlistConfig, load_config
from worker.deliver import notification_text
from worker.errors import ConfigError
from worker.models import Article, Match
from worker.shaping import (
    Copy,
    body_digest,
    breaking_reached,
    digest_window,
    event_id,
    merge_updates,
    outlets_within,
    route,
    salience,
    text_changes,
    update_due,
)
from worker.store import Store

LEAD = "Japan's LNG imports rose in January."
LATER = "Prices eased. Traders said LNG cargoes were plentiful. Storage was full."


def article(title: str = "Imports rise", paragraphs: tuple[str, ...] = (LEAD, LATER)) -> Article:
    return Article(id="0" * 16, canonical_url="", url="", guid=None, title=title, author="",
                   source="Wire", published=datetime(2025, 2, 6, tzinfo=UTC),
                   paragraphs=paragraphs, feed="https://wire.example/rss")


def body_match(art: Article, term: str, nth: int = 0) -> Match:
    start = -1
    for _ in range(nth + 1):
        start = art.body.index(term, start + 1)
    return Match("LNG", term, "body", start, start + len(term), "")


def test_a_title_mention_weighs_most_then_the_first_paragraph_then_the_body_count():
    art = article("LNG imports rise")
    title = Match("LNG", "LNG", "title", 0, 3, "")
    lead, later = body_match(art, "LNG", 0), body_match(art, "LNG", 1)
    assert salience([title], art) == 0.5
    assert salience([lead], art) == pytest.approx(0.3 + 0.2 / 5)
    assert salience([later], art) == pytest.approx(0.2 / 5)
    assert salience([title], art) > salience([lead, later], art) > salience([later], art)
    assert salience([title, lead, later], art) == pytest.approx(0.5 + 0.3 + 0.4 / 5)


def test_body_mentions_count_up_to_five_and_salience_never_passes_one():
    text = "LNG " * 9
    art = article("LNG", (text, text))
    matches = [Match("LNG", "LNG", "title", 0, 3, "")]
    matches += [Match("LNG", "LNG", "body", i * 4, i * 4 + 3, "") for i in range(9)]
    assert salience(matches, art) == 1.0
    five = [Match("LNG", "LNG", "body", 100 + i * 4, 103 + i * 4, "") for i in range(5)]
    six = [*five, Match("LNG", "LNG", "body", 200, 203, "")]
    assert salience(five, art) == salience(six, art) == pytest.approx(0.2)


def test_two_entities_on_the_same_words_count_once():
    art = article()
    lead = body_match(art, "LNG")
    twin = Match("Gas", "LNG", "body", lead.start, lead.end, "")
    assert salience([lead, twin], art) == salience([lead], art)


def test_digest_windows_are_aligned_to_the_epoch():
    assert digest_window(7200 + 59, 3600).start == 7200
    assert digest_window(7200 + 59, 3600).end == 10800
    assert digest_window(10800, 3600).start == 10800   # the end belongs to the next window
    day = digest_window(datetime(2025, 2, 6, 13, tzinfo=UTC).timestamp(), 86400)
    assert datetime.fromtimestamp(day.start, UTC) == datetime(2025, 2, 6, tzinfo=UTC)


def wl(**options) -> WatchlistConfig:
    return WatchlistConfig(name="w", entities=["LNG"], **options)


def test_routes_follow_digest_and_throttle():
    assert route(wl()) == "now"
    assert route(wl(digest="1h")) == "digest"
    assert route(wl(throttle="20/h")) == "throttle"
    assert route(wl(digest="1h", throttle="20/h")) == "both"
    assert not wl(breaking={"outlets": 3, "within": "30m"}).shaped


def copy(feed: str, at: float) -> Copy:
    return Copy(feed=feed, source=feed, url=f"https://{feed}/x", first_seen=at)


def test_breaking_needs_distinct_feeds_within_the_window_of_the_first_copy():
    rule = BreakingConfig(outlets=3, within=1800)
    assert not breaking_reached([], rule)
    assert not breaking_reached([copy("a", 0), copy("a", 10), copy("b", 20)], rule)
    assert breaking_reached([copy("b", 100), copy("a", 0), copy("c", 1800)], rule)
    assert not breaking_reached([copy("a", 0), copy("b", 10), copy("c", 1801)], rule)
    assert [c.feed for c in outlets_within([copy("c", 5000), copy("b", 9), copy("a", 0)], rule)
            ] == ["a", "b"]


def test_an_update_may_leave_ten_minutes_after_the_last():
    assert update_due(None, 0)
    assert not update_due(1000, 1599)
    assert update_due(1000, 1600)


def test_a_correction_says_what_changed_and_markup_alone_changes_nothing():
    art = article("Imports rise")
    same = {"title": "Imports rise", "body": body_digest(art)}
    assert text_changes(same, art) == []
    assert text_changes({**same, "title": "Imports fall"}, art) == ["title"]
    assert text_changes({**same, "body": "x"}, art) == ["text"]


def test_merged_updates_keep_the_latest_copy_and_every_change():
    first = {"id": "u1", "outlets": 2, "created": "2025-01-01T00:00:00+00:00",
             "changed": ["outlets"], "copy": {"feed": "b"}}
    second = {"id": "u2", "outlets": 2, "created": "2025-01-01T00:05:00+00:00",
              "changed": ["text"], "copy": {"feed": "a"}}
    merged = merge_updates([first, second])
    assert merged["changed"] == ["outlets", "text"] and merged["copy"] == {"feed": "a"}


def test_event_ids_are_deterministic_and_distinct():
    assert event_id("digest", "w", "d|1|2") == event_id("digest", "w", "d|1|2")
    assert event_id("digest", "w", "d|1|2") != event_id("digest", "w", "d|1|3")
    assert event_id("digest", "a", "b|c") != event_id("digest", "a|b", "c")


@pytest.mark.parametrize(("value", "count", "per"), [
    ("20/h", 20, 3600.0), ("5/10m", 5, 600.0), ("1 / 2s", 1, 2.0), ("3/1d", 3, 86400.0),
    ({"count": 4, "per": "30m"}, 4, 1800.0)])
def test_throttle_rates(value, count, per):
    throttle = wl(throttle=value).throttle
    assert (throttle.count, throttle.per) == (count, per)


def test_shaping_options_are_checked(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "watchlists:\n  - name: w\n    entities: [LNG]\n    throttle: 20/hour\n"
        "    breaking: {outlets: 0, within: 30m}\n    min_salience: 1.5\n    digest: soon\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    text = str(err.value)
    for key in ("watchlists[0].throttle", "watchlists[0].breaking.outlets",
                "watchlists[0].min_salience", "watchlists[0].digest"):
        assert key in text


def test_the_shaping_decisions_import_no_redis_celery_or_network():
    tree = ast.parse(Path(worker.shaping.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"redis", "celery", "httpx", "kombu"}


@pytest.mark.parametrize("name", ["desk", "a{b}c", "}{", "{}", "日本-energy", "x" * 300])
def test_every_key_of_a_watchlist_or_a_story_shares_one_cluster_slot(redis_url, name):
    """Redis Cluster runs a script only when all its KEYS are in one slot."""
    shaping = Store.from_url(redis_url).shaping
    keys = shaping._wl(name, "window", "items", "sealed", "recent", "sent", "held", "upd",
                       "upd:held", "upd:due", "upd:seen")
    assert len({key_slot(k.encode()) for k in keys}) == 1
    story = "0123456789abcdef"
    assert key_slot(f"newsmon:{{c:{story}}}:copies".encode()) == \
        key_slot(f"newsmon:{{c:{story}}}:breaking".encode())
    other = shaping._wl(name + "2", "window")[0]
    assert other != keys[0]


def test_notifications_of_digests_and_updates_say_what_they_carry():
    art = {"title": "LNG imports rise", "url": "https://wire.example/1"}
    digest = {"type": "digest.created", "data": {"watchlist": "desk", "alerts": [
        {"article": art}, {"article": {**art, "title": "LNG prices fall"}}]}}
    title, body = notification_text(digest)
    assert title == "[desk] digest: 2 stories"
    assert "LNG prices fall" in body and "https://wire.example/1" in body
    update = {"type": "alert.updated", "data": {"watchlist": "desk", "article": art,
                                                 "changed": ["title", "text"], "outlets": 3}}
    title, body = notification_text(update)
    assert title == "[desk] updated: LNG imports rise"
    assert "title, text" in body and "3 outlets" in body
