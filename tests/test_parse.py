"""parse: RSS, Atom and JSON Feed bytes to ParsedFeed, whatever their encoding or damage."""

from __future__ import annotations

import ast
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import worker
from worker import parse
from worker.bench_hostile import HostileFeed, entity_bombs, hostile_feeds, measure_in_child, render_all
from worker.dump import dump_problems
from worker.errors import NotAFeedError
from worker.parse import parse_feed

DATA = Path(__file__).parent / "data"
PLUS_5 = timezone(timedelta(hours=5))


def rss(items: str, channel: str = "<title>Feed</title>", decl: str = "") -> str:
    return (f'{decl}<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            f'xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>{channel}'
            f"{items}</channel></rss>")


def item(title: str = "Title", link: str = "https://news.example/1", extra: str = "") -> str:
    return f"<item><title>{title}</title><link>{link}</link>{extra}</item>"


def one(data: bytes | str, content_type: str | None = None):
    feed = parse_feed(data.encode() if isinstance(data, str) else data, content_type)
    assert len(feed.entries) == 1
    return feed.entries[0]


# --- RSS and Atom fields ---------------------------------------------------------------------

def test_rss_entry_fields() -> None:
    feed = parse_feed((DATA / "seed.xml").read_bytes(), "application/rss+xml")
    assert (feed.format, feed.title, feed.ttl_minutes) == ("rss20", "UrduPoint Network - World News",
                                                          15)
    entry = feed.entries[0]
    assert entry.guid == "urdupoint-1947362"
    assert entry.link.startswith("https://www.urdupoint.com/en/world/japan-pm-heads")
    assert entry.title == "Japan PM Heads To US For Trump Summit"
    assert entry.author == "Umer Jamshaid"
    assert entry.published == datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5)


def test_content_encoded_is_preferred_over_description() -> None:
    extra = ("<description>Short teaser.</description>"
             "<content:encoded><![CDATA[<p>The full <b>body</b> of the story.</p>]]></content:encoded>")
    assert one(rss(item(extra=extra))).content_html == "<p>The full <b>body</b> of the story.</p>"


def test_description_is_the_body_when_there_is_no_content() -> None:
    extra = "<description>&lt;p&gt;Only a description.&lt;/p&gt;</description>"
    assert one(rss(item(extra=extra))).content_html == "<p>Only a description.</p>"


def test_atom_content_is_preferred_over_summary() -> None:
    entry = parse_feed((DATA / "atom.xml").read_bytes()).entries[0]
    assert "The central bank <strong>held</strong>" in entry.content_html
    assert entry.author == "Maria González"
    assert entry.published == datetime(2025, 2, 28, 23, 45, tzinfo=timezone(-timedelta(hours=5)))


def test_atom_text_content_is_escaped_so_it_reads_as_text() -> None:
    entry = parse_feed((DATA / "atom.xml").read_bytes()).entries[1]
    assert entry.content_html.startswith("First line of a plain-text body &amp; more.")


def test_plain_text_title_is_escaped_for_normalize() -> None:
    assert one(rss(item(title="AT&amp;T &lt;b&gt;"))).title == "AT&amp;T &lt;b&gt;"


def test_rss_author_email_and_name_gives_the_name() -> None:
    entry = one(rss(item(extra="<author>jo@news.example (Jo Bloggs)</author>")))
    assert entry.author == "Jo Bloggs"


def test_rss_10_rdf_feed() -> None:
    feed = parse_feed((DATA / "rss10.xml").read_bytes())
    assert (feed.format, feed.title) == ("rss10", "Tokyo Wire")
    assert feed.entries[0].author == "Kenji Sato"
    assert feed.entries[0].published == datetime(2025, 3, 7, 9, 15,
                                                 tzinfo=timezone(timedelta(hours=9)))


@pytest.mark.parametrize("version", ["0.91", "0.92"])
def test_old_rss_versions(version: str) -> None:
    data = (f'<rss version="{version}"><channel><title>Old</title><link>https://o.example/</link>'
            f"<description>d</description>{item()}</channel></rss>")
    feed = parse_feed(data.encode())
    assert feed.format.startswith("rss09")
    assert feed.entries[0].title == "Title"


def test_atom_03_feed() -> None:
    data = b"""<feed version="0.3" xmlns="http://purl.org/atom/ns#"><title>Old Atom</title>
      <entry><title>E</title><link rel="alternate" type="text/html" href="https://o.example/e"/>
      <id>tag:o,2004:1</id><issued>2004-05-01T10:00:00+02:00</issued>
      <content type="text/html" mode="escaped">&lt;p&gt;Hi&lt;/p&gt;</content></entry></feed>"""
    feed = parse_feed(data)
    assert feed.format == "atom03"
    assert feed.entries[0].content_html == "<p>Hi</p>"
    assert feed.entries[0].published == datetime(2004, 5, 1, 10, tzinfo=timezone(timedelta(hours=2)))


def test_ttl_that_is_not_a_positive_number_is_ignored() -> None:
    assert parse_feed(rss(item(), "<title>F</title><ttl>soon</ttl>").encode()).ttl_minutes is None
    assert parse_feed(rss(item(), "<title>F</title><ttl>0</ttl>").encode()).ttl_minutes is None


def test_parse_feed_refuses_a_str() -> None:
    with pytest.raises(TypeError, match="bytes"):
        parse_feed(rss(item()))  # type: ignore[arg-type]


# --- dates -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("Thu, 06 Feb 2025 16:30:00 +0500", datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5)),
    ("Thu, 06 Feb 2025 06:30:00 EST", datetime(2025, 2, 6, 6, 30,
                                               tzinfo=timezone(-timedelta(hours=5)))),
    ("Thu, 06 Feb 2025 11:30:00 GMT", datetime(2025, 2, 6, 11, 30, tzinfo=UTC)),
])
def test_published_keeps_the_offset_the_source_gave(raw: str, expected: datetime) -> None:
    published = one(rss(item(extra=f"<pubDate>{raw}</pubDate>"))).published
    assert published == expected
    assert published.utcoffset() == expected.utcoffset()


def test_iso_dates_keep_their_offset() -> None:
    published = one(rss(item(extra="<dc:date>2025-02-06T16:30:00+05:00</dc:date>"))).published
    assert published.utcoffset() == timedelta(hours=5)


def test_date_we_cannot_read_falls_back_to_feedparser_in_utc() -> None:
    # No offset: naive for us, so feedparser's reading (taken as UTC) is used.
    published = one(rss(item(extra="<pubDate>2025-02-06 16:30:00</pubDate>"))).published
    assert published == datetime(2025, 2, 6, 16, 30, tzinfo=UTC)
    assert published.utcoffset() == timedelta(0)


def test_missing_or_garbage_date_is_none() -> None:
    assert one(rss(item())).published is None
    assert one(rss(item(extra="<pubDate>yesterday-ish</pubDate>"))).published is None


# --- encodings -------------------------------------------------------------------------------

TITLES = {
    "cp1252": "Caf\u00e9 \u201cquoted\u201d \u2013 \u20ac5",
    "iso-8859-1": "Z\u00fcrich Stra\u00dfe \u00e0 la carte",
    "shift_jis": "\u65e5\u672c\u306e\u9996\u76f8\u304c\u7c73\u56fd\u3078\u51fa\u767a",
    "euc_jp": "\u65e5\u672c\u306e\u9996\u76f8\u304c\u7c73\u56fd\u3078\u51fa\u767a",
    "utf-16": "\u65e5\u672c \u00e9t\u00e9",
}
LABELS = {"cp1252": "windows-1252", "iso-8859-1": "ISO-8859-1", "shift_jis": "Shift_JIS",
          "euc_jp": "EUC-JP", "utf-16": "UTF-16"}


@pytest.mark.parametrize("codec", ["cp1252", "iso-8859-1", "shift_jis", "euc_jp", "utf-16"])
@pytest.mark.parametrize("declared", ["xml declaration", "http header", "both", "nowhere"])
def test_encodings_come_out_as_unicode(codec: str, declared: str) -> None:
    title = TITLES[codec]
    decl = ""
    if declared in ("xml declaration", "both"):
        decl = f'<?xml version="1.0" encoding="{LABELS[codec]}"?>'
    content_type = "application/rss+xml"
    if declared in ("http header", "both"):
        content_type += f"; charset={LABELS[codec]}"
    data = rss(item(title=title, extra=f"<description>{title} body</description>"),
               f"<title>{title}</title>", decl).encode(codec)
    feed = parse_feed(data, content_type)
    assert feed.title == title
    assert feed.entries[0].title == title
    assert feed.entries[0].content_html == f"{title} body"


def test_utf8_with_a_byte_order_mark() -> None:
    data = b"\xef\xbb\xbf" + rss(item(title="\u00e9t\u00e9")).encode()
    assert one(data).title == "\u00e9t\u00e9"


# --- damaged and hostile documents ----------------------------------------------------------

def test_malformed_xml_still_yields_its_items() -> None:
    data = ('<rss version="2.0"><channel><title>Fish & Chips</title>'
            '<item><title>A & B</title><link>https://news.example/1</link>'
            "<description><p>unclosed <b>bold</description></item>"
            "<item><title>Second</title><link>https://news.example/2</link></item>"
            "<item><title>Third, never closed</title><link>https://news.example/3</link>")
    feed = parse_feed(data.encode())
    assert [e.title for e in feed.entries] == ["A &amp; B", "Second", "Third, never closed"]
    assert feed.entries[0].content_html.startswith("<p>unclosed <b>bold")


def billion_laughs(levels: int = 9) -> str:
    lines = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "' + f"&lol{i - 1 if i > 1 else ''};" * 10 + '">'
        for i in range(1, levels + 1)]
    return ('<?xml version="1.0"?>\n<!DOCTYPE rss [\n' + "\n".join(lines) + "\n]>\n" +
            rss(item(title=f"&lol{levels}; laughs", extra=f"<description>&lol{levels};</description>"),
                f"<title>&lol{levels};</title>"))


@pytest.mark.parametrize("codec", ["utf-8", "utf-16"])
def test_billion_laughs_is_not_expanded(codec: str) -> None:
    # Unprotected, feedparser spends about a minute here: the per-test timeout would fail it.
    feed = parse_feed(billion_laughs().encode(codec))
    entry = feed.entries[0]
    assert "lollol" not in entry.title + entry.content_html + (feed.title or "")
    assert entry.title == "&amp;lol9; laughs"


def test_billion_laughs_on_one_line_is_not_expanded() -> None:
    feed = parse_feed(billion_laughs().replace("\n", "").encode())
    assert "lollol" not in feed.entries[0].title + feed.entries[0].content_html


@pytest.mark.parametrize("newline", ["\n", ""])
def test_quadratic_blowup_entity_is_not_expanded(newline: str) -> None:
    # One 30 KB entity used 2,000 times: unprotected, feedparser returns a 60 MB title.
    data = (f'<?xml version="1.0"?>{newline}<!DOCTYPE rss [{newline}<!ENTITY big "' + "x" * 30_000
            + f'">{newline}]>{newline}' + rss(item(title="&big;" * 2_000)))
    title = one(data).title
    assert "xxxxx" not in title
    assert len(title) <= parse.MAX_TITLE


def test_single_character_entities_in_the_doctype_still_work() -> None:
    data = '<!DOCTYPE rss [<!ENTITY nbsp "&#160;">]>' + rss(item(title="a&nbsp;b"))
    assert one(data).title == "a\xa0b"


def test_external_doctype_is_kept() -> None:
    data = ('<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
            '"http://my.netscape.com/publish/formats/rss-0.91.dtd">'
            '<rss version="0.91"><channel><title>T</title><link>https://o.example/</link>'
            f"<description>d</description>{item()}</channel></rss>")
    feed = parse_feed(data.encode())
    assert feed.format == "rss091n"
    assert feed.entries[0].title == "Title"


@pytest.mark.parametrize("data", [
    '<!-- <!DOCTYPE x [ --><!ENTITY lol "lol"><rss version="2.0"/>',
    '<!DOCTYPE rss [ <!ENTITY lol "lol"> <rss version="2.0"/>',
    '<?xml version="1.0"?>\n<!ENTITY lol "lol">\n<rss version="2.0"/>',
])
def test_entity_declarations_that_cannot_be_removed_are_refused(data: str) -> None:
    with pytest.raises(NotAFeedError, match="refused"):
        parse_feed(data.encode())


@pytest.mark.parametrize("subset", ["a " * 200_000, "<!-- " * 50_000, "'x' \"y\" " * 50_000])
def test_hostile_unterminated_doctype_is_refused_quickly(subset: str) -> None:
    # A regex that backtracks here runs for minutes: the per-test timeout would fail it.
    with pytest.raises(NotAFeedError, match="refused"):
        parse_feed(f"<!DOCTYPE rss [{subset}<rss/>".encode())


def test_entity_declarations_quoted_inside_the_content_are_harmless() -> None:
    text = "Beware &lt;!ENTITY lol &quot;lol&quot;&gt; in untrusted XML"
    extra = f"<description>{text}</description>"
    assert "<!ENTITY" in one(rss(item(extra=extra))).content_html


def test_long_fields_are_capped() -> None:
    entry = one(rss(item(title="t" * 50_000, extra="<description>" + "b" * 2_000_000 +
                         "</description><author>" + "a" * 5_000 + "</author>")))
    assert len(entry.title) == parse.MAX_TITLE
    assert len(entry.content_html) == parse.MAX_BODY
    assert len(entry.author) == parse.MAX_AUTHOR


# --- not a feed ------------------------------------------------------------------------------

HTML_PAGE = b"<!DOCTYPE html><html><head><title>Hi</title></head><body><p>x</p></body></html>"


@pytest.mark.parametrize(("data", "content_type", "says"), [
    (b"", None, "got an empty response (no content type, 0 bytes)"),
    (b"  \n", "text/xml", "got an empty response (text/xml, 3 bytes)"),
    (HTML_PAGE, "text/html; charset=utf-8",
     f"got an HTML page (text/html; charset=utf-8, {len(HTML_PAGE)} bytes)"),
    (b"<html><body>no doctype</body></html>", None, "got an HTML page"),
    (bytes(range(256)) * 4, "application/octet-stream", "got data that is neither XML nor JSON"),
    (b'{"hello": "world"}', "application/json", "got JSON that is not a JSON Feed"),
    (b"[1, 2, 3]", "application/json", "got JSON that is not a JSON Feed"),
    (b"{not json", None, "got invalid JSON"),
    (b'<?xml version="1.0"?><urlset><url><loc>https://x/</loc></url></urlset>',
     "application/xml", "got an XML document whose root element is <urlset>"),
    (b"%PDF-1.7 binary", "application/pdf", "got a PDF file"),
])
def test_not_a_feed_says_what_was_received(data: bytes, content_type: str | None,
                                           says: str) -> None:
    with pytest.raises(NotAFeedError) as caught:
        parse_feed(data, content_type)
    message = str(caught.value)
    assert message.startswith("expected an RSS, Atom or JSON feed, ")
    assert says in message


def test_feed_served_as_html_is_still_a_feed() -> None:
    assert one(rss(item()), "text/html").title == "Title"


def test_feed_without_items_is_an_empty_feed() -> None:
    assert parse_feed(rss("").encode()).entries == ()


def test_bad_entry_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = rss("<item><link>https://news.example/0</link></item>" + item(title="Good"))
    with caplog.at_level(logging.WARNING, logger="worker.parse"):
        feed = parse_feed(data.encode())
    assert [e.title for e in feed.entries] == ["Good"]
    assert "neither a title nor any content" in caplog.text


def test_entry_without_link_or_id_is_kept() -> None:
    data = rss("<item><title>No link, no guid</title></item>" + item(title="Good"))
    feed = parse_feed(data.encode())
    assert [(e.title, e.link, e.guid) for e in feed.entries] == [
        ("No link, no guid", None, None), ("Good", "https://news.example/1", None)]


def test_entry_without_title_or_content_is_skipped() -> None:
    feed = parse_feed(rss("<item><link>https://news.example/0</link></item>" + item()).encode())
    assert [e.link for e in feed.entries] == ["https://news.example/1"]


def test_feed_whose_every_entry_fails_is_an_error() -> None:
    data = rss("<item><link>https://news.example/0</link></item><item><guid>b</guid></item>")
    with pytest.raises(NotAFeedError, match="every one of the feed's 2 entries is unusable"):
        parse_feed(data.encode())


# --- JSON Feed -------------------------------------------------------------------------------

def json_feed(version: str = "1.1", **item: object) -> bytes:
    base = {"id": "1", "url": "https://j.example/1", "title": "T", "content_html": "<p>x</p>"}
    return json.dumps({"version": f"https://jsonfeed.org/version/{version}", "title": "J",
                       "items": [{**base, **item}]}).encode()


def test_json_feed_11() -> None:
    feed = parse_feed((DATA / "json11.json").read_bytes(), "application/feed+json")
    assert (feed.format, feed.title, feed.author) == ("json11", "Open Data Daily", "The Editors")
    first, second = feed.entries
    assert (first.guid, first.link, first.author) == (
        "https://data.example.com/p/7", "https://data.example.com/p/7", "Ana Souza")
    assert first.title == "Census release delayed to &lt;April&gt;"
    assert first.published == datetime(2025, 3, 10, 14, tzinfo=timezone(-timedelta(hours=3)))
    assert (second.link, second.guid, second.title) == (None, "note-2025-03-11", "")
    assert second.content_html.startswith("No title on this one")


def test_json_feed_10_author_object() -> None:
    feed = parse_feed(json_feed("1", author={"name": "Old Style"}))
    assert feed.format == "json10"
    assert feed.entries[0].author == "Old Style"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json",
                                          "application/feed+json; charset=utf-8"])
def test_json_feed_is_detected_by_content_or_content_type(content_type: str | None) -> None:
    assert parse_feed(json_feed(), content_type).format == "json11"


def test_xml_served_as_json_is_still_parsed_as_xml() -> None:
    assert one(rss(item()), "application/json").title == "Title"


def test_json_feed_text_content_is_escaped() -> None:
    entry = parse_feed(json_feed(content_html=None, content_text="a < b & c")).entries[0]
    assert entry.content_html == "a &lt; b &amp; c"


def test_json_feed_date_keeps_its_offset() -> None:
    entry = parse_feed(json_feed(date_published="2025-02-06T16:30:00+05:00")).entries[0]
    assert entry.published == datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5)
    assert entry.published.utcoffset() == timedelta(hours=5)


def test_bad_json_feed_item_is_skipped() -> None:
    data = json.dumps({"version": "https://jsonfeed.org/version/1.1",
                       "items": ["not an object", {"title": "no id"}, {"id": 7, "title": "ok"}]})
    feed = parse_feed(data.encode())
    assert [(e.guid, e.title) for e in feed.entries] == [(None, "no id"), ("7", "ok")]


def test_deeply_nested_json_is_not_a_feed() -> None:
    with pytest.raises(NotAFeedError, match="invalid JSON"):
        parse_feed(b"{" + b'"a":[' * 100_000)


# --- ownership --------------------------------------------------------------------------------

def test_only_parse_imports_feedparser() -> None:
    # bench.py and corpus.py use feedparser alone, as the baseline parse_feed is compared with.
    importers = []
    for path in Path(worker.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        if any(name.split(".")[0] == "feedparser" for name in names):
            importers.append(path.name)
    assert sorted(set(importers) - {"bench.py", "corpus.py"}) == ["parse.py"]


# --- feeds as they are in the wild: isolation, encodings, entries, clean fields ----------------

@pytest.mark.parametrize("feed", hostile_feeds(), ids=lambda f: f"{f.kind}: {f.name}"[:70])
def test_hostile_feed_ends_as_strict_dumps_or_a_one_line_reason(feed: HostileFeed) -> None:
    refused, dumps = render_all(feed)  # raises if anything escapes the boundaries
    if refused is not None:
        assert "\n" not in refused and len(refused) < 400
    for text in dumps:
        assert dump_problems(text, had_text=False) == []
        assert "lollol" not in text and "xxxxxxxxxx" not in text


def test_hostile_feeds_cost_less_than_200_mb_each() -> None:
    # Measured in a fresh process: peak RSS growth over the imports, all feeds one after another.
    results = measure_in_child()
    worst = max(results, key=lambda r: r["above_baseline_mib"])
    print(f"worst peak growth {worst['above_baseline_mib']:.0f} MiB ({worst['name']}), "
          f"slowest {max(r['seconds'] for r in results):.2f} s CPU")
    assert worst["above_baseline_mib"] < 200


@pytest.mark.parametrize("name", [f.name for f in entity_bombs() if "laughs" in f.name])
def test_entity_declarations_are_found_in_the_encoding_the_document_is_read_in(name: str) -> None:
    # UTF-7, EBCDIC and header-only UTF-16 hide "<!ENTITY" from a scan of the raw bytes.
    feed = next(f for f in entity_bombs() if f.name == name)
    parsed = parse_feed(feed.data, feed.content_type)
    assert parsed.entries[0].title == "&amp;lol9; laughs"
    assert parsed.title == "&lol9;"


def test_an_entity_declaration_outside_the_doctype_is_refused_in_utf7() -> None:
    data = ('<?xml version="1.0" encoding="utf-7"?>+ADw-!ENTITY lol "lol"+AD4-'
            '<rss version="2.0"/>').encode("ascii")
    with pytest.raises(NotAFeedError, match="refused"):
        parse_feed(data)


@pytest.mark.parametrize("charset", ["utf-16x", "undefined", "base64", "bogus"])
def test_a_charset_no_codec_reads_is_treated_as_absent(charset: str) -> None:
    data = rss(item(title="Caf\u00e9 \u65e5\u672c")).encode()
    assert one(data, f"application/rss+xml; charset={charset}").title == "Caf\u00e9 \u65e5\u672c"


@pytest.mark.parametrize("ref", ["&#xD800;", "&#x110000;", "&#99999999999;", "&#0;"])
def test_character_references_to_no_character_are_dropped(ref: str) -> None:
    entry = one(rss(item(title=f"a{ref}b", extra=f"<description>c{ref}d</description>")))
    assert (entry.title, entry.content_html) == ("ab", "cd")


@pytest.mark.parametrize("ttl", ["999999999999999999", "9" * 5000])
def test_a_huge_ttl_is_clamped_to_a_day(ttl: str) -> None:
    feed = parse_feed(rss(item(), f"<title>F</title><ttl>{ttl}</ttl>").encode())
    assert feed.ttl_minutes == parse.MAX_TTL_MINUTES == 1440


@pytest.mark.parametrize("ttl", ["\u00b2", "\u0661\u0662", "-5", "1e9"])
def test_a_ttl_that_is_no_ascii_number_is_ignored(ttl: str) -> None:
    assert parse_feed(rss(item(), f"<title>F</title><ttl>{ttl}</ttl>").encode()).ttl_minutes is None


def test_rss_092_items_without_link_or_guid_are_all_kept() -> None:
    items = "".join(f"<item><description>Note {i} of the day.</description></item>"
                    for i in range(22))
    data = f'<rss version="0.92"><channel><title>Scripting News</title>{items}</channel></rss>'
    feed = parse_feed(data.encode())
    assert len(feed.entries) == 22
    assert feed.entries[3].content_html == "Note 3 of the day."


@pytest.mark.parametrize(("version", "fmt"), [
    ("https://jsonfeed.org/version/1", "json10"), ("http://jsonfeed.org/version/1", "json10"),
    ("https://jsonfeed.org/version/1.0", "json10"), ("https://jsonfeed.org/version/1.1/", "json11"),
    (" HTTPS://JSONFEED.ORG/VERSION/1.1 ", "json11"),
])
def test_every_spelling_of_the_json_feed_version_is_read(version: str, fmt: str) -> None:
    data = json.dumps({"version": version, "items": [{"id": "1", "title": "T"}]}).encode()
    assert parse_feed(data).format == fmt


def test_entities_are_decoded_in_json_feed_plain_text_fields() -> None:
    data = json.dumps({"version": "https://jsonfeed.org/version/1", "title": "J &amp; K",
                       "items": [{"id": "1", "title": "I&#039;m &lt;here&gt;",
                                  "content_text": "Fish &amp; chips",
                                  "author": {"name": "A &amp; B"}}]}).encode()
    feed = parse_feed(data)
    entry = feed.entries[0]
    assert feed.title == "J & K"
    assert entry.title == "I'm &lt;here&gt;"  # decoded, then escaped as text for normalize
    assert (entry.author, entry.content_html) == ("A & B", "Fish &amp; chips")


def test_rss_author_entities_are_decoded() -> None:
    assert one(rss(item(extra="<author>AT&amp;amp;T Press</author>"))).author == "AT&T Press"


def test_a_title_nested_in_the_item_never_replaces_its_own() -> None:
    extra = "<image><title>Logo</title><url>https://x.example/l.png</url></image>"
    assert one(rss(item(title="Own title", extra=extra))).title == "Own title"
    data = rss("<item><author><title>Boss</title></author><link>https://news.example/1</link>"
               "<description>The text.</description></item>")
    entry = one(data)
    assert (entry.title, entry.content_html) == ("", "The text.")


def test_of_two_entries_with_one_link_the_one_with_text_is_kept() -> None:
    bare = item(title="Story")
    full = item(title="Story", extra="<description>The whole story, with text.</description>")
    feed = parse_feed(rss(bare + item(title="Other", link="https://news.example/2") + full).encode())
    assert [e.title for e in feed.entries] == ["Story", "Other"]
    assert feed.entries[0].content_html == "The whole story, with text."


def test_text_after_a_missing_closing_tag_is_recovered_from_the_bytes() -> None:
    data = ('<rss version="2.0"><channel><title>T</title>'
            "<item><title>A</title><link>https://news.example/1</link>"
            "<description>The text of A is here &amp; more</item>"
            "<item><title>B</title><link>https://news.example/2</link>"
            "<description>B text</description></item></channel></rss>")
    feed = parse_feed(data.encode())
    assert [(e.title, e.content_html) for e in feed.entries] == [
        ("A", "The text of A is here & more"), ("B", "B text")]


@pytest.mark.parametrize(("link", "channel_link", "base", "expected"), [
    ("story/1", "https://site.example/news/", None, "https://site.example/news/story/1"),
    ("/story/1", None, None, "https://feeds.example/story/1"),
    ("story/1", "https://site.example/", "https://base.example/dir/", "https://base.example/dir/story/1"),
    ("story/1", "/news/", None, "https://feeds.example/news/story/1"),
    ("https://abs.example/x", "https://site.example/", None, "https://abs.example/x"),
])
def test_relative_links_are_resolved_against_xml_base_feed_link_and_feed_url(
        link: str, channel_link: str | None, base: str | None, expected: str) -> None:
    channel = "<title>F</title>" + (f"<link>{channel_link}</link>" if channel_link else "")
    attribute = f' xml:base="{base}"' if base else ""
    data = rss(f"<item{attribute}><title>T</title><link>{link}</link>"
               f"<guid>{link}</guid></item>", channel)
    entry = parse_feed(data.encode(), url="https://feeds.example/rss/feed.xml").entries[0]
    assert entry.link == expected
    assert entry.guid == expected  # a permalink guid is a link too


def test_relative_json_feed_links_are_resolved() -> None:
    data = json.dumps({"version": "https://jsonfeed.org/version/1.1",
                       "home_page_url": "https://site.example/blog/",
                       "items": [{"id": "1", "url": "post-1", "title": "T"}]}).encode()
    assert parse_feed(data, url="https://feeds.example/f.json").entries[0].link == \
        "https://site.example/blog/post-1"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Seg, 24 Set 2018 10:00:00 -0300", datetime(2018, 9, 24, 10, tzinfo=timezone(-timedelta(hours=3)))),
    ("Mo, 24 Sep 2018 10:00:00 +0200", datetime(2018, 9, 24, 10, tzinfo=timezone(timedelta(hours=2)))),
    ("lundi 24 septembre 2018 10:00 +0200", datetime(2018, 9, 24, 10, tzinfo=timezone(timedelta(hours=2)))),
    ("martes, 25 de septiembre de 2018 14:30:00 GMT", datetime(2018, 9, 25, 14, 30, tzinfo=UTC)),
    ("24 сентября 2018 10:00 +0300", datetime(2018, 9, 24, 10, tzinfo=timezone(timedelta(hours=3)))),
    ("2018年9月24日 10:00", datetime(2018, 9, 24, 10, tzinfo=UTC)),
    ("2018년 9월 24일 10:00", datetime(2018, 9, 24, 10, tzinfo=UTC)),
])
def test_dates_in_european_languages_and_cjk_are_read(raw: str, expected: datetime) -> None:
    published = one(rss(item(extra=f"<pubDate>{raw}</pubDate>"))).published
    assert published == expected
    assert published.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("raw", ["2025-02-06 16:30:00", "Thu, 06 Feb 2025 16:30:00 -0000",
                                 "2025年2月6日 16:30"])
def test_a_time_without_offset_is_read_in_the_feeds_zone(raw: str) -> None:
    data = rss(item(extra=f"<pubDate>{raw}</pubDate>")).encode()
    published = parse_feed(data, timezone="Asia/Tokyo").entries[0].published
    assert published == datetime(2025, 2, 6, 16, 30, tzinfo=timezone(timedelta(hours=9)))
    json_data = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
        {"id": "1", "title": "T", "date_published": "2025-02-06T16:30:00"}]}).encode()
    assert parse_feed(json_data, timezone="Asia/Tokyo").entries[0].published.utcoffset() == \
        timedelta(hours=9)


@pytest.mark.parametrize("raw", ["0001-01-01T00:30:00+05:00", "Mon, 01 Jan 0001 00:00:00 +0100",
                                 "9999-12-31T23:59:59-12:00", "1899-12-31T00:00:00Z"])
def test_dates_outside_1900_to_2200_count_as_absent(raw: str) -> None:
    assert one(rss(item(extra=f"<pubDate>{raw}</pubDate>"))).published is None


def test_anything_a_library_raises_on_the_bytes_is_this_feeds_one_line_reason(monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bug deep in a library")

    monkeypatch.setattr(parse.feedparser, "parse", broken)
    with pytest.raises(NotAFeedError, match="AssertionError: a bug deep in a library"):
        parse_feed(rss(item()).encode())
