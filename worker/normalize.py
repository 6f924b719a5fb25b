"""Pipeline stage normalize: a parsed FeedEntry (and, optionally, its full page) to an Article.

HTML becomes paragraphs of one line each; the article gets its id, source, author and time.
Pure functions: the caller fetches pages and passes ``first_seen`` in.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import lxml.etree
import lxml.html

from worker.dedupe import canonical_url
from worker.errors import BadEntryError
from worker.models import Article, FeedEntry, ParsedFeed

log = logging.getLogger(__name__)

# Below this many characters of body, mode "auto" fetches the full page.
FULL_TEXT_THRESHOLD = 600
# An entry without a title is named after this many words of its first paragraph.
UNTITLED_WORDS = 12
UNTITLED = "(untitled)"
FULL_TEXT_MODES = ("auto", "always", "never")

# Each of these starts and ends a paragraph.
BLOCK_TAGS = frozenset({
    "address", "article", "aside", "blockquote", "caption", "center", "dd", "details", "dialog",
    "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hgroup", "hr", "li", "main", "menu", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul", "body", "html",
})
# Table cells are separated by a space even when the source has none between them.
CELL_TAGS = frozenset({"td", "th"})
# These contribute no text (their tail, the text after them, still counts).
SKIP_TAGS = frozenset({
    "script", "style", "iframe", "form", "img", "noscript", "svg", "math", "object", "embed",
    "video", "audio", "canvas", "template", "head", "title", "button", "select", "textarea",
    "input", "picture", "source", "map",
})

_TAG = re.compile(r"<[A-Za-z!/?]")
_ANY_TAG = re.compile(r"<[^>]*>")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v\xa0]*\n")
_SURROGATES = re.compile("[\ud800-\udfff]")
# Control and invisible characters that are no whitespace (whitespace is collapsed anyway).
# C0 and C1 controls (U+0080-U+009F too: windows-1252 bytes misread as Latin-1), DEL.
_UNWANTED = re.compile(
    "[\x00-\x08\x0e-\x1b\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u200b\ufeff\xad]")


@dataclass(frozen=True)
class PageText:
    """What the article's own web page adds: its main text, byline and date."""

    paragraphs: tuple[str, ...]
    author: str | None
    published: datetime | None


def normalize_entry(entry: FeedEntry, feed: ParsedFeed, *, feed_url: str, first_seen: datetime,
                    feed_name: str | None = None, timezone: str | None = None,
                    page: PageText | None = None) -> Article:
    """The Article for one feed entry.

    Paragraphs come from the page when it has more text than the feed. A first paragraph
    that repeats the title is dropped. An entry without a title is named after the first
    ``UNTITLED_WORDS`` words of its first paragraph (with "..." when cut), else "(untitled)".

    The entry boundary: whatever the entry holds, this returns an Article or raises
    BadEntryError with a one-line reason.
    """
    try:
        return _normalized(entry, feed, feed_url=feed_url, first_seen=first_seen,
                           feed_name=feed_name, timezone=timezone, page=page)
    except Exception as exc:  # one entry's data must never stop its feed's other entries
        log.debug("normalize failed", exc_info=True)
        which = entry.link or entry.guid or str(entry.title)[:80]
        raise BadEntryError(f"entry {which!r} cannot be normalized: {type(exc).__name__}: "
                            f"{str(exc)[:120]}") from exc


def _normalized(entry: FeedEntry, feed: ParsedFeed, *, feed_url: str, first_seen: datetime,
                feed_name: str | None, timezone: str | None, page: PageText | None) -> Article:
    paragraphs = html_to_paragraphs(entry.content_html)
    if page is not None and _length(page.paragraphs) > _length(paragraphs):
        paragraphs = list(page.paragraphs)
    title = clean_line(entry.title)
    if title:
        paragraphs = _without_title(paragraphs, title)
    else:
        title = _title_from(paragraphs)
    source = _one_line(feed.title) or _one_line(feed_name) or _host(feed_url)
    author = _one_line(entry.author) or _one_line(page and page.author) or source
    url = entry.link or ""
    canonical = canonical_url(url) if url else ""
    return Article(
        id=entry_article_id(entry, feed_url),
        canonical_url=canonical,
        url=url,
        guid=entry.guid,
        title=title,
        author=author,
        source=source,
        published=_published(entry, page, first_seen),
        paragraphs=tuple(paragraphs),
        feed=feed_url,
        timezone=timezone,
    )


def article_id(canonical_url: str, feed_url: str, guid: str | None,
               content: str | None = None) -> str:
    """16 lowercase hex digits: sha256 of the canonical URL, or of feed URL + newline + GUID
    for an entry without a link, or of feed URL + newline + "content:" + sha256 of its title
    and body for an entry with neither (stable while the feed repeats the entry unchanged)."""
    if canonical_url:
        key = canonical_url
    elif guid:
        key = f"{feed_url}\n{guid}"
    elif content:
        digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
        key = f"{feed_url}\ncontent:{digest}"
    else:
        raise ValueError("an article needs a link, a GUID or some content to have an id")
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def entry_article_id(entry: FeedEntry, feed_url: str) -> str:
    """The id the article of this entry gets (see article_id)."""
    canonical = canonical_url(entry.link) if entry.link else ""
    return article_id(canonical, feed_url, entry.guid, f"{entry.title}\n{entry.content_html}")


def html_to_paragraphs(markup: str) -> list[str]:
    """Block elements (and ``<br>``-separated runs) become paragraphs of one line each.

    Inline elements keep the spacing the source had, entities are decoded, whitespace runs
    become one space, and scripts, styles, images, forms and the like contribute no text.
    Text without any tag is split on blank lines instead.
    """
    markup = _parseable(markup)
    if not _TAG.search(markup):
        return _collapsed(html.unescape(part) for part in _BLANK_LINE.split(markup))
    try:
        # A document of our own around the markup: a fragment that is only a DOCTYPE, or an
        # <html> shell without <body>, makes lxml's fragment parser raise.
        root = lxml.html.document_fromstring(f"<html><body><div>{markup}</div></body></html>")
    except (lxml.etree.LxmlError, ValueError, AssertionError):
        log.warning("could not parse an entry's HTML; its tags are dropped as text")
        return _collapsed(html.unescape(_ANY_TAG.sub(" ", part))
                          for part in _BLANK_LINE.split(markup))
    paragraphs = _Paragraphs()
    # An explicit stack instead of recursion: feed HTML can be nested arbitrarily deep.
    todo: list[tuple[lxml.html.HtmlElement, bool]] = [(root, False)]
    while todo:
        element, closing = todo.pop()
        tag = element.tag if isinstance(element.tag, str) else None  # None: comment or PI
        if closing:
            if tag in BLOCK_TAGS:
                paragraphs.end()
            paragraphs.add(element.tail)
            continue
        if tag is None or tag in SKIP_TAGS:
            paragraphs.add(element.tail)
            continue
        if tag in BLOCK_TAGS or tag == "br":
            paragraphs.end()
        if tag in CELL_TAGS:
            paragraphs.add(" ")
        paragraphs.add(element.text)
        todo.append((element, True))
        todo.extend((child, False) for child in reversed(element))
    paragraphs.end()
    return paragraphs.done


def clean_line(markup: str) -> str:
    """One line of plain text from a title-like field: tags dropped, entities decoded."""
    return " ".join(html_to_paragraphs(markup))


def needs_full_text(mode: str, feed_paragraphs: list[str] | tuple[str, ...]) -> bool:
    """Whether to fetch the article's page: ``always``, ``never``, or ``auto`` when the feed
    gave fewer than FULL_TEXT_THRESHOLD characters of body."""
    if mode not in FULL_TEXT_MODES:
        raise ValueError(f"expected a full_text mode among {FULL_TEXT_MODES}, got {mode!r}")
    if mode == "auto":
        return _length(feed_paragraphs) < FULL_TEXT_THRESHOLD
    return mode == "always"


def extract_page(page: str | bytes, url: str) -> PageText | None:
    """The main text, author and date of an article's web page (trafilatura), or None when
    nothing usable comes out. Never raises: a page we cannot read just keeps the feed's text."""
    # Imported here: trafilatura takes most of a second to import, and most runs never need it.
    import trafilatura

    try:
        document = trafilatura.bare_extraction(
            page, url=url, with_metadata=True, include_comments=False, include_tables=True,
            date_extraction_params={"outputformat": "%Y-%m-%dT%H:%M:%S%z",
                                    "original_date": True, "extensive_search": False},
        )
    except Exception:  # trafilatura and its parsers raise many kinds; none may stop the feed
        log.warning("could not extract the page's text", exc_info=True, extra={"url": url})
        return None
    text = getattr(document, "text", None) if document is not None else None
    if not text:
        return None
    paragraphs = _collapsed(_parseable(text).split("\n"))
    if not paragraphs:
        return None
    author = _one_line(document.author) or None
    return PageText(paragraphs=tuple(paragraphs), author=author,
                    published=_page_date(document.date))


class _Paragraphs:
    """Collects text pieces; ``end()`` closes the current paragraph."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self._pieces: list[str] = []

    def add(self, text: str | None) -> None:
        if text:
            self._pieces.append(text)

    def end(self) -> None:
        if self._pieces:
            self.done.extend(_collapsed(["".join(self._pieces)]))
            self._pieces = []


def _one_line(text: str | None) -> str:
    """Plain text on one line: whitespace runs become one space, invisible characters go."""
    lines = _collapsed([text]) if text else []
    return lines[0] if lines else ""


def _collapsed(texts: Iterable[str]) -> list[str]:
    """Each text on one line with single spaces (str.split knows every Unicode space, nbsp
    and line separators included), control and invisible characters removed, empties dropped.
    """
    out = []
    for text in texts:
        line = " ".join(text.split())
        if not line.isprintable():  # rare: the fast check spares a regex over every line
            line = " ".join(_UNWANTED.sub("", line).split())
        if line:
            out.append(line)
    return out


def _parseable(markup: str) -> str:
    """Without what lxml mishandles: it cuts text at a lone surrogate and keeps NULs."""
    if "\x00" in markup:
        markup = markup.replace("\x00", "")
    if not markup.isascii():
        try:
            markup.encode("utf-8")
        except UnicodeEncodeError:
            markup = _SURROGATES.sub("", markup)
    return markup


def _length(paragraphs: Iterable[str]) -> int:
    return sum(len(p) for p in paragraphs)


def _comparable(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _without_title(paragraphs: list[str], title: str) -> list[str]:
    if paragraphs and _comparable(paragraphs[0]) == _comparable(title):
        return paragraphs[1:]
    return paragraphs


def _title_from(paragraphs: list[str]) -> str:
    if not paragraphs:
        return UNTITLED
    words = paragraphs[0].split()
    if len(words) <= UNTITLED_WORDS:
        return " ".join(words)
    return " ".join(words[:UNTITLED_WORDS]) + "..."


def _host(url: str) -> str:
    return (urlsplit(url).hostname or url).removeprefix("www.")


def _published(entry: FeedEntry, page: PageText | None, first_seen: datetime) -> datetime:
    if entry.published is not None:
        return entry.published
    if page is not None and page.published is not None:
        return page.published
    if first_seen.tzinfo is None:
        return first_seen.replace(tzinfo=UTC)
    return first_seen.astimezone(UTC)


def _page_date(raw: str | None) -> datetime | None:
    """trafilatura's date string; a date without a time zone is taken as UTC."""
    if not raw:
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            when = datetime.strptime(raw.strip(), pattern)
        except ValueError:
            continue
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return None
