"""normalize: HTML to paragraphs, article identity and fallbacks, full-text page extraction.

The golden files ``tests/data/<case>.(xml|json)`` hold a feed; ``tests/data/<case>.txt`` the
dumps of its entries, one after another. Regenerate after a deliberate change with
``NEWSMON_REGENERATE_GOLDEN=1 pytest tests/test_normalize.py`` and check the diff by eye.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker import normalize
from worker.dump import dump_of, dump_problems, render_dump
from worker.errors import BadEntryError
from worker.models import FeedEntry, ParsedFeed
from worker.normalize import (
    FULL_TEXT_THRESHOLD,
    PageText,
    article_id,
    clean_line,
    entry_article_id,
    extract_page,
    html_to_paragraphs,
    needs_full_text,
    normalize_entry,
)
from worker.parse import parse_feed

DATA = Path(__file__).parent / "data"
FIRST_SEEN = datetime(2025, 3, 12, 6, 0, tzinfo=UTC)
SEED = Path(os.environ.get("NEWSMON_SHARED", "/work/shared")) / "seed" / "000_d2c0166b2a2dd97c.txt"

# case: (feed file, Content-Type, feed URL, configured time zone)
GOLDEN = {
    "seed": ("seed.xml", "application/rss+xml; charset=utf-8",
             "https://www.urdupoint.com/en/rss/world.rss", None),
    "atom": ("atom.xml", "application/atom+xml", "https://news.example.org/atom.xml", "Asia/Tokyo"),
    "rss10": ("rss10.xml", "application/rdf+xml", "https://jp.example.net/index.rdf", None),
    "json11": ("json11.json", "application/feed+json", "https://data.example.com/feed.json", None),
    # The charset is declared only in the XML declaration.
    "cp1252": ("cp1252.xml", "application/rss+xml", "https://journal.example.fr/rss", None),
    # Feeds as they are in the wild: RSS 0.92 items with neither link nor id.
    "wild-rss092": ("wild-rss092.xml", "text/xml", "http://scripting.com/rss.xml", None),
    # A missing </description>, a nested <image><title>, one link twice, invalid references.
    "wild-broken": ("wild-broken.xml", "application/rss+xml", "https://broken.example/rss",
                    None),
    # The original JSON Feed version URL, entities in plain text, naive times in the zone.
    "wild-json10": ("wild-json10.json", "application/json", "https://diario.example/feed.json",
                    "Europe/Lisbon"),
    # Dates in European languages and CJK; times without an offset in the feed's zone.
    "wild-dates": ("wild-dates.xml", "application/rss+xml", "https://dates.example/rss",
                   "Europe/Paris"),
    # A billion laughs in UTF-16LE without a byte order mark, declared only by the header.
    "wild-entities-utf16": ("wild-entities-utf16.xml", "application/xml; charset=utf-16",
                            "https://hostile.example/rss", None),
    # From feedparser's test suite (see data/feedparser/README.md).
    "feedparser-incomplete-cdata": ("feedparser/rss_incomplete_cdata.xml", None,
                                    "http://adcdefgh.com/rss", None),
    "feedparser-euc-kr-item": ("feedparser/euc-kr-item.xml", None,
                               "https://kr.example/rss", "Asia/Seoul"),
    "feedparser-large-atom": ("feedparser/large_atom_feed.xml", "application/atom+xml",
                              "https://ipod.example/atom", "Europe/Moscow"),
}


def golden_dumps(case: str) -> str:
    name, content_type, feed_url, zone = GOLDEN[case]
    feed = parse_feed((DATA / name).read_bytes(), content_type, url=feed_url, timezone=zone)
    return "".join(
        render_dump(dump_of(normalize_entry(entry, feed, feed_url=feed_url, first_seen=FIRST_SEEN,
                                            timezone=zone)))
        for entry in feed.entries)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_feed_gives_its_expected_dumps(case: str) -> None:
    expected = DATA / f"{case}.txt"
    if os.environ.get("NEWSMON_REGENERATE_GOLDEN") and case != "seed":
        expected.write_bytes(golden_dumps(case).encode("utf-8"))
    text = golden_dumps(case)
    assert text.encode("utf-8") == expected.read_bytes()
    for dump in re.split(r"(?= date \d{4}-\d{2}-\d{2} )", text)[1:]:
        assert dump_problems(dump, had_text=False) == []


def test_seed_feed_reproduces_the_reference_dump_byte_for_byte() -> None:
    if not SEED.exists():
        pytest.skip(f"{SEED} is not on this machine (tests/data/seed.txt is its copy)")
    assert (DATA / "seed.txt").read_bytes() == SEED.read_bytes()
    assert golden_dumps("seed").encode("utf-8") == SEED.read_bytes()


# --- html_to_paragraphs ----------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["p", "div", "li", "blockquote", "h1", "h3", "h6", "pre", "tr",
                                 "figcaption", "dd", "section", "article"])
def test_each_block_element_is_a_paragraph(tag: str) -> None:
    assert html_to_paragraphs(f"before<{tag}>inside</{tag}>after") == ["before", "inside", "after"]


def test_inline_elements_keep_the_spacing_of_the_source() -> None:
    markup = ('<p><strong>Tokyo,</strong> the <a href="/x">prime <em>minister</em></a>\'s '
              'visit (<abbr>AP</abbr>)<span>ok</span>.</p>')
    assert html_to_paragraphs(markup) == ["Tokyo, the prime minister's visit (AP)ok."]


def test_br_separated_runs_are_paragraphs() -> None:
    assert html_to_paragraphs("one<br>two<br/><br />three") == ["one", "two", "three"]


def test_entities_are_decoded() -> None:
    markup = "<p>&quot;A&quot; &amp; &#39;B&#39; &#8220;C&#8221; &eacute; &#x2014; &lt;tag&gt;</p>"
    assert html_to_paragraphs(markup) == ["\"A\" & 'B' \u201cC\u201d \u00e9 \u2014 <tag>"]


def test_whitespace_runs_become_one_space() -> None:
    markup = "<p>  a\n\n b\t\tc&nbsp;&nbsp;d\u2009e\u3000f \r\n</p>"
    assert html_to_paragraphs(markup) == ["a b c d e f"]


@pytest.mark.parametrize("markup", [
    "<script>var x = '<p>no</p>';</script>",
    "<style>p { color: red }</style>",
    "<iframe src='https://ads.example/'>no</iframe>",
    "<form><label>no</label><input value='no'><button>no</button></form>",
    "<img src='x.jpg' alt='no'>",
    "<noscript>no</noscript>",
    "<svg><text>no</text></svg>",
])
def test_non_text_elements_contribute_nothing_but_their_tail_counts(markup: str) -> None:
    assert html_to_paragraphs(f"<div>yes {markup}and yes</div>") == ["yes and yes"]


def test_empty_paragraphs_are_dropped() -> None:
    assert html_to_paragraphs("<p>&nbsp;</p><p> </p><div><img src=x></div><p>text</p>") == ["text"]


def test_comments_vanish_but_the_text_after_them_stays() -> None:
    assert html_to_paragraphs("<p>a<!-- hidden -->b</p>") == ["ab"]


def test_table_cells_are_separated_by_a_space() -> None:
    markup = "<table><tr><th>Index</th><th>Change</th></tr><tr><td>A</td><td>+1</td></tr></table>"
    assert html_to_paragraphs(markup) == ["Index Change", "A +1"]


def test_plain_text_is_split_on_blank_lines() -> None:
    text = "First line\ncontinues here.\n\n  Second &amp; last \n \n"
    assert html_to_paragraphs(text) == ["First line continues here.", "Second & last"]


def test_a_less_than_sign_in_plain_text_is_not_a_tag() -> None:
    assert html_to_paragraphs("a < b and c > d") == ["a < b and c > d"]


def test_control_characters_and_lone_surrogates_are_removed() -> None:
    assert html_to_paragraphs("<p>a\x00b\x1fc\x0cd\ud800e\u200bf</p>") == ["ab c def"]


def test_xml_declaration_in_content_is_ignored() -> None:
    assert html_to_paragraphs('<?xml version="1.0" encoding="utf-8"?><p>x</p>') == ["x"]


def test_deeply_nested_markup_does_not_overflow_the_stack() -> None:
    html_to_paragraphs("<div>" * 50_000 + "deep" + "</div>" * 50_000)
    assert html_to_paragraphs("<span>" * 200 + "deep" + "</span>" * 200) == ["deep"]


def test_title_is_cleaned_to_one_line() -> None:
    assert clean_line("  AT&amp;T <b>beats</b>\n estimates&nbsp;") == "AT&T beats estimates"


# --- article_id --------------------------------------------------------------------------------

def test_article_id_is_16_hex_digits_of_sha256_of_the_canonical_url() -> None:
    url = "https://news.example/a?b=1"
    assert article_id(url, "https://news.example/rss", "g") == \
        hashlib.sha256(url.encode()).hexdigest()[:16]


def test_article_id_without_a_link_hashes_feed_url_and_guid() -> None:
    expected = hashlib.sha256(b"https://news.example/rss\nguid-7").hexdigest()[:16]
    assert article_id("", "https://news.example/rss", "guid-7") == expected


def test_article_id_needs_a_link_or_a_guid() -> None:
    with pytest.raises(ValueError, match="a link, a GUID or some content"):
        article_id("", "https://news.example/rss", None)


# --- normalize_entry ----------------------------------------------------------------------------

FEED_URL = "https://www.news.example/rss.xml"


def entry(**changes: object) -> FeedEntry:
    base = FeedEntry(guid="g-1", link="https://news.example/story?utm_source=rss", title="A title",
                     author="Reporter", published=datetime(2025, 2, 6, 16, 30,
                                                           tzinfo=timezone(timedelta(hours=5))),
                     content_html="<p>Body text.</p>")
    return replace(base, **changes)


def feed(title: str | None = "The Feed") -> ParsedFeed:
    return ParsedFeed(format="rss20", title=title, link=None, author=None, ttl_minutes=None,
                      entries=())


def norm(e: FeedEntry, f: ParsedFeed | None = None, **kwargs: object):
    return normalize_entry(e, f or feed(), feed_url=FEED_URL, first_seen=FIRST_SEEN, **kwargs)


def test_article_fields_come_from_the_entry() -> None:
    article = norm(entry(), timezone="Europe/Paris")
    assert article.canonical_url == "https://news.example/story"
    assert article.url == "https://news.example/story?utm_source=rss"
    assert article.id == article_id(article.canonical_url, FEED_URL, "g-1")
    assert (article.title, article.author, article.source) == ("A title", "Reporter", "The Feed")
    assert article.paragraphs == ("Body text.",)
    assert article.published.utcoffset() == timedelta(hours=5)
    assert (article.feed, article.timezone) == (FEED_URL, "Europe/Paris")


def test_first_paragraph_equal_to_title_is_dropped() -> None:
    e = entry(title="Japan PM  Heads to US",
              content_html="<h1>japan pm heads TO us</h1><p>Body.</p>")
    assert norm(e).paragraphs == ("Body.",)


def test_first_paragraph_different_from_title_is_kept() -> None:
    e = entry(title="Japan PM heads to US", content_html="<p>Japan PM heads to US today.</p>")
    assert norm(e).paragraphs == ("Japan PM heads to US today.",)


def test_entry_without_a_link_gets_an_id_from_feed_url_and_guid() -> None:
    article = norm(entry(link=None))
    assert (article.url, article.canonical_url) == ("", "")
    assert article.id == article_id("", FEED_URL, "g-1")


def test_source_falls_back_to_feed_name_then_host() -> None:
    assert norm(entry(), feed(None), feed_name="Configured").source == "Configured"
    assert norm(entry(), feed(None)).source == "news.example"


def test_author_falls_back_to_page_author_then_source() -> None:
    page = PageText(paragraphs=("x",), author="Page Author", published=None)
    assert norm(entry(author=None), page=page).author == "Page Author"
    assert norm(entry(author=None)).author == "The Feed"


def test_published_falls_back_to_page_date_then_first_seen_in_utc() -> None:
    page_time = datetime(2025, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-3)))
    page = PageText(paragraphs=("x",), author=None, published=page_time)
    assert norm(entry(published=None), page=page).published == page_time
    assert norm(entry(published=None)).published == FIRST_SEEN
    assert norm(entry(published=None)).published.tzinfo == UTC
    naive = normalize_entry(entry(published=None), feed(), feed_url=FEED_URL,
                            first_seen=datetime(2025, 3, 12, 6, 0))
    assert naive.published == FIRST_SEEN


def test_page_paragraphs_replace_the_feed_text_when_longer() -> None:
    page = PageText(paragraphs=("A title", "Full first paragraph.", "Full second paragraph."),
                    author=None, published=None)
    assert norm(entry(), page=page).paragraphs == ("Full first paragraph.",
                                                   "Full second paragraph.")


def test_feed_paragraphs_are_kept_when_the_page_has_less_text() -> None:
    page = PageText(paragraphs=("Short.",), author=None, published=None)
    e = entry(content_html="<p>A much longer body from the feed itself.</p>")
    assert norm(e, page=page).paragraphs == ("A much longer body from the feed itself.",)


def test_empty_title_is_made_of_the_first_words_of_the_first_paragraph() -> None:
    words = " ".join(f"w{i}" for i in range(20))
    article = norm(entry(title=" ", content_html=f"<p>{words}</p>"))
    assert article.title == " ".join(f"w{i}" for i in range(normalize.UNTITLED_WORDS)) + "..."
    assert article.paragraphs == (words,)
    short = norm(entry(title="", content_html="<p>Only four words here.</p>"))
    assert (short.title, short.paragraphs) == ("Only four words here.", ("Only four words here.",))


def test_entry_without_title_or_text_is_untitled() -> None:
    assert norm(entry(title="", content_html="<img src=x>")).title == "(untitled)"


def test_title_markup_and_entities_are_cleaned() -> None:
    assert norm(entry(title="AT&amp;T &lt;b&gt; <em>now</em>\n")).title == "AT&T <b> now"


# --- full text -----------------------------------------------------------------------------------

def test_full_text_modes() -> None:
    short = ["x" * (FULL_TEXT_THRESHOLD - 1)]
    long = ["x" * 300, "y" * 300]
    assert needs_full_text("always", long) is True
    assert needs_full_text("never", short) is False
    assert needs_full_text("auto", short) is True
    assert needs_full_text("auto", long) is False
    assert needs_full_text("auto", []) is True


def test_unknown_full_text_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="full_text mode"):
        needs_full_text("sometimes", [])


PAGE = """<html><head><title>Big story - Site</title>
<meta name="author" content="Jane Reporter">
<meta property="article:published_time" content="2025-02-06T16:30:00+05:00">
</head><body><nav><a href="/">Home</a> <a href="/world">World</a></nav>
<article><h1>Big story</h1>
<p>First paragraph of the article, with a <a href="/l">link</a> inside and enough words.</p>
<p>Second paragraph: more text goes here to make it long enough for the extractor.</p>
<p>Third   paragraph
 with a line break in the source and&nbsp;a non-breaking space.</p>
</article><footer>Copyright 2025 Site. All rights reserved.</footer></body></html>"""


def test_extract_page_gives_main_text_author_and_date() -> None:
    page = extract_page(PAGE.encode(), "https://site.example/big-story")
    assert page is not None
    assert "First paragraph of the article, with a link inside and enough words." in page.paragraphs
    assert "Third paragraph with a line break in the source and a non-breaking space." \
        in page.paragraphs
    assert not any("Copyright" in p for p in page.paragraphs)
    assert page.author == "Jane Reporter"
    assert page.published == datetime(2025, 2, 6, 16, 30, tzinfo=timezone(timedelta(hours=5)))


def test_extract_page_of_nothing_useful_is_none() -> None:
    assert extract_page("", "https://site.example/") is None
    assert extract_page(b"\x00\xff garbage", "https://site.example/") is None


def test_extract_page_returns_none_when_the_extractor_raises(monkeypatch, caplog) -> None:
    import trafilatura

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(trafilatura, "bare_extraction", broken)
    assert extract_page(PAGE, "https://site.example/") is None
    assert "could not extract" in caplog.text


# --- module boundaries ------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["parse", "normalize", "dump"])
def test_pure_modules_import_no_network_queue_or_store(module: str) -> None:
    source = (Path(normalize.__file__).parent / f"{module}.py").read_text()
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"httpx", "redis", "celery", "requests", "urllib3"}


# --- feeds as they are in the wild -----------------------------------------------------------

def test_an_entry_without_link_or_guid_gets_a_stable_id_from_its_content() -> None:
    bare = entry(link=None, guid=None, title="Note", content_html="<p>Some text.</p>")
    first, again = norm(bare), norm(replace(bare))
    other = norm(replace(bare, content_html="<p>Other text.</p>"))
    assert first.id == again.id != other.id
    assert first.id == entry_article_id(bare, FEED_URL)
    digest = hashlib.sha256(b"Note\n<p>Some text.</p>").hexdigest()
    assert first.id == hashlib.sha256(f"{FEED_URL}\ncontent:{digest}".encode()).hexdigest()[:16]


@pytest.mark.parametrize("markup", ["<!DOCTYPE html>", "<html><head></head></html>", "<html>",
                                    "<body></body><body>x</body>", "</div></p>text"])
def test_html_that_lxml_cannot_take_as_a_fragment_still_gives_its_text(markup: str) -> None:
    expected = ["x"] if ">x<" in markup else (["text"] if "text" in markup else [])
    assert html_to_paragraphs(markup) == expected


@pytest.mark.parametrize("control", ["\x9d", "\x85\x80", "\x1f", "\x00", "\ud800", "\x7f"])
def test_c0_and_c1_controls_and_lone_surrogates_are_removed_everywhere(control: str) -> None:
    article = norm(entry(title=f"a{control}b", author=f"c{control}d",
                         content_html=f"<p>e{control}f</p>"), feed(f"g{control}h"))
    fields = [article.title, article.author, article.source, *article.paragraphs]
    assert [f.replace(" ", "") for f in fields] == ["ab", "cd", "gh", "ef"]


def test_an_entry_that_cannot_be_normalized_is_a_bad_entry_error() -> None:
    broken = entry(title=None)  # what no parser gives: the boundary still holds
    with pytest.raises(BadEntryError, match="cannot be normalized"):
        norm(broken)  # type: ignore[arg-type]


def test_two_sites_with_the_same_relative_path_give_two_articles() -> None:
    def article_of(site: str):
        data = (f'<rss version="2.0"><channel><title>S</title><link>https://{site}/</link>'
                "<item><title>T</title><link>/story/1</link></item></channel></rss>").encode()
        parsed = parse_feed(data, url=f"https://{site}/feed.xml")
        return normalize_entry(parsed.entries[0], parsed, feed_url=f"https://{site}/feed.xml",
                               first_seen=FIRST_SEEN)

    a, b = article_of("one.example"), article_of("two.example")
    assert (a.url, b.url) == ("https://one.example/story/1", "https://two.example/story/1")
    assert a.id != b.id
