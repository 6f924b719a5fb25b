"""Feeds as they are in the wild, end to end: one feed's bytes or headers never stop the run,
byte-identical 200s cost no parse, naive times are read in the configured zone."""

from __future__ import annotations

import json
import time

import pytest

from tests.feeds import LNG_STORY, item, rss
from tests.test_pipeline import RSS, dumps, feed, make_service

pytestmark = pytest.mark.integration


def rss_text(items: str, channel: str = "") -> bytes:
    return (f'<rss version="2.0"><channel><title>Wild</title><link>https://wild.example/</link>'
            f"{channel}{items}</channel></rss>").encode()


def wild_item(n: int, extra: str) -> str:
    return (f"<item><title>Item {n}</title><link>https://wild.example/{n}</link>"
            f"<description>Text of item {n}.</description>{extra}</item>")


HOSTILE = {
    "/charrefs": (200, RSS, rss_text(wild_item(1, "<author>&#xD800;&#x110000;&#99999999999;</author>")
                                     .replace("Item 1", "Item &#xD800;1"))),
    "/utf16x": (200, {"Content-Type": "application/rss+xml; charset=utf-16x"}, rss_text(wild_item(2, ""))),
    "/retry": (503, {"Retry-After": "\u00b2"}, b"later"),
    "/retry-ok": (200, {**RSS, "Retry-After": "\u00b2"}, rss_text(wild_item(3, ""))),
    "/year1": (200, RSS, rss_text(wild_item(4, "<pubDate>0001-01-01T00:30:00-14:00</pubDate>")
                                  + wild_item(5, "<pubDate>Mon, 01 Jan 0001 00:00:00 +0100</pubDate>"))),
    "/doctype": (200, RSS, rss_text(wild_item(6, "").replace("Text of item 6.",
                                                             "&lt;!DOCTYPE html&gt;"))),
    "/shell": (200, RSS, rss_text(wild_item(7, "").replace(
        "Text of item 7.", "&lt;html&gt;&lt;head&gt;&lt;/head&gt;&lt;/html&gt;"))),
    "/ttl": (200, RSS, rss_text(wild_item(8, ""), "<ttl>99999999999999999999</ttl>")),
    "/bomb": (200, {"Content-Type": "application/xml; charset=utf16"},
              ('<!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
               '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>').encode("utf-16-le")
              + rss_text(wild_item(9, "").replace("Item 9", "&c;")).decode().encode("utf-16-le")),
    "/json": (200, {"Content-Type": "application/feed+json"}, json.dumps({
        "version": "http://jsonfeed.org/version/1", "items": [
            {"id": "s\udcff", "url": "https://wild.example/\ud800p", "title": "I&#039;m \udcff"}]})
        .encode()),
}


def test_no_feeds_bytes_or_headers_stop_the_run_or_the_other_feeds(tmp_path, redis_url,
                                                                 http_server):
    http_server.routes["/good"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    http_server.routes.update(HOSTILE)
    names = ["/good", *HOSTILE]
    service = make_service(tmp_path, redis_url, [feed(http_server, p) for p in names])
    now = time.time()
    summary = service.run_once()  # raises if isolation fails anywhere
    failed = dict(summary["failed"])
    assert set(failed) == {"retry"}  # a 503 is a failure, its unreadable Retry-After no crash
    assert "\n" not in failed["retry"]
    assert sorted(a["watchlist"] for a in service.store.alerts()) == ["japan", "lng"]
    due = service.store.due_times()
    assert all(now < when < now + 2 * 86400 for when in due.values())  # numbers clamped
    assert due["ttl"] >= now + 86400 - 60  # a <ttl> is honoured up to a day
    texts = [path.read_text(encoding="utf-8") for path in dumps(tmp_path)]
    assert len(texts) == 1 + 10  # every hostile item with a title or text became a dump
    assert not any("aaaaaaaaaa" in text for text in texts)


def test_a_byte_identical_200_costs_no_parse(tmp_path, redis_url, http_server, monkeypatch):
    body = rss([item(1, "Japan LNG imports jump", LNG_STORY)])
    http_server.routes["/a"] = (200, RSS, body)  # no ETag, no Last-Modified: always a 200
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    parses = []
    real_parse = service.parse  # parse_feed, bounded (Service.parse)
    monkeypatch.setattr(service, "parse",
                        lambda *args, **kwargs: parses.append(1) or real_parse(*args, **kwargs))
    assert service.run_once()["new_items"] == 1
    assert service.run_once()["new_items"] == 0
    state = service.store.feed_state("a")
    assert (len(parses), state["outcome"], state["status"]) == (1, "unchanged", "200")
    assert state["health"] == "healthy" and state["failures"] == "0"
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY),
                                               item(2, "Second story", "More text here.")]))
    assert service.run_once()["new_items"] == 1
    assert len(parses) == 2 and service.store.feed_state("a")["outcome"] == "ok"


def test_the_same_bytes_under_another_charset_are_parsed_again(tmp_path, redis_url, http_server):
    body = rss([item(1, "Japan LNG imports jump", LNG_STORY)])
    http_server.routes["/a"] = (200, RSS, body)
    service = make_service(tmp_path, redis_url, [feed(http_server, "/a")])
    service.run_once()
    http_server.routes["/a"] = (200, {"Content-Type": "application/rss+xml; charset=latin-1"}, body)
    service.run_once()
    assert service.store.feed_state("a")["outcome"] == "ok"


def test_a_time_without_offset_is_dumped_in_the_feeds_zone(tmp_path, redis_url, http_server):
    http_server.routes["/a"] = (200, RSS, rss_text(wild_item(1, "<pubDate>2025-02-06 16:30:00"
                                                                "</pubDate>")))
    service = make_service(tmp_path, redis_url,
                           [feed(http_server, "/a", timezone="Asia/Tokyo")])
    service.run_once()
    (path,) = dumps(tmp_path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == " date 2025-02-06 Item 1"
    assert lines[1] == "Wild Published February 06, 2025 | 04:30 PM"
