"""Pipeline stage parse: feed bytes to a typed ``ParsedFeed``. The only module importing feedparser.

RSS 0.9x/1.0/2.0 and Atom go through feedparser (its loose parser still yields the items of
malformed XML); JSON Feed 1.0/1.1, which feedparser does not read, goes through our own code.
Before feedparser sees any bytes, entity declarations are removed from the DOCTYPE: its loose
parser expands them, and a "billion laughs" document costs a minute of CPU.
"""

from __future__ import annotations

import codecs
import html
import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import feedparser

from worker.errors import NotAFeedError
from worker.models import FeedEntry, ParsedFeed

log = logging.getLogger(__name__)

# Caps on what one entry may carry, whatever the document says (in characters).
MAX_TITLE = 2_000
MAX_AUTHOR = 500
MAX_URL = 4_096
MAX_BODY = 1_000_000

JSON_FEED_VERSION_PREFIX = "https://jsonfeed.org/version/"
JSON_TYPES = frozenset({"application/feed+json", "application/json"})
UTF8 = "utf-8"

# Byte order marks and the first bytes of "<?xml" in encodings that are not ASCII-compatible
# (XML 1.0, appendix F). UTF-32 comes first: its little-endian BOM starts like UTF-16's.
_WIDE_ENCODINGS = (
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00?", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
)
_XML_DECL_ENCODING = re.compile(rb"""^(\s*<\?xml[^>]*?\sencoding\s*=\s*)(["'])([^"']*)\2""")
_CHARSET_PARAM = re.compile(r";\s*charset\s*=\s*[\"']?([^\"';\s]*)[\"']?", re.I)

# The prolog: processing instructions, comments and whitespace before the DOCTYPE.
_PROLOG_ITEM = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)
# A DOCTYPE with an optional internal subset. Possessive quantifiers: on an unterminated
# subset, backtracking through every way to split a run of text would take minutes.
_DOCTYPE = re.compile(
    rb"""<!DOCTYPE(?P<head>(?:[^\["'>]++|"[^"]*+"|'[^']*+')*+)"""
    rb"""(?:\[(?P<subset>(?:[^\]"'<]++|"[^"]*+"|'[^']*+'|<!--.*?-->|<(?!!--))*+)\]\s*)?>""",
    re.I | re.S,
)
# Entities whose value is one character reference cannot amplify anything; keep them.
_CHAR_ENTITY = re.compile(
    rb"""<!ENTITY\s+[A-Za-z_][\w.-]*\s+(["'])&#(?:x[0-9a-fA-F]+|[0-9]+);\1\s*>""")
_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
# feedparser reads entity declarations in everything before the first element.
_FIRST_ELEMENT = re.compile(rb"<\w")
_ROOT_NAME = re.compile(rb"<([A-Za-z_][\w:.-]*)")
_EMAIL = r"[^\s@()<>]+@[^\s()<>]+"
_EMAIL_THEN_NAME = re.compile(rf"\s*{_EMAIL}\s*\((?P<name>[^()]+)\)\s*$")
_NAME_THEN_EMAIL = re.compile(rf"(?P<name>[^()<>]+?)\s*[(<]{_EMAIL}[)>]\s*$")


class _BadEntry(ValueError):
    """One entry cannot become a FeedEntry; the others still can."""


def parse_feed(data: bytes, content_type: str | None = None) -> ParsedFeed:
    """Parse RSS, Atom or JSON Feed bytes as fetched, with the response's Content-Type.

    Raises NotAFeedError when the bytes are no feed (saying what they look like instead),
    hold entity declarations that cannot be removed safely, or every entry is unusable.
    """
    if not isinstance(data, bytes):
        raise TypeError("parse_feed takes the fetched bytes (feedparser would open a str as a URL)")
    if _is_json(data, _mime(content_type)):
        return _parse_json_feed(data, content_type)
    return _parse_xml_feed(data, content_type)


# --- XML feeds (feedparser) -------------------------------------------------------------------

def _parse_xml_feed(data: bytes, content_type: str | None) -> ParsedFeed:
    xml, as_sent = _as_ascii_compatible(data, content_type)
    xml = _without_entity_declarations(xml, len(data), content_type)
    as_sent = _with_guessed_charset(xml, as_sent)
    headers = {"content-type": as_sent} if as_sent else {}
    parsed = feedparser.parse(xml, response_headers=headers, sanitize_html=False,
                              resolve_relative_uris=False)
    if not parsed.get("version") and not parsed.entries:
        raise NotAFeedError(_not_a_feed_message(data, content_type))
    feed = parsed.feed
    return ParsedFeed(
        format=parsed.get("version") or "unknown",
        title=_capped(_plain_text(feed.get("title_detail")), MAX_TITLE),
        link=_capped(feed.get("link"), MAX_URL),
        author=_capped(_author_name(feed), MAX_AUTHOR),
        ttl_minutes=_ttl(feed.get("ttl")),
        entries=_convert_entries(parsed.entries, _entry_from_feedparser),
    )


def _entry_from_feedparser(entry: Any) -> FeedEntry:
    link = _capped(entry.get("link"), MAX_URL)
    guid = _capped(entry.get("id"), MAX_URL)
    if not link and not guid:
        raise _BadEntry("it has neither a link nor an id")
    title = _as_html(entry.get("title_detail"))
    body = _richest_body(entry)
    if not title.strip() and not body.strip():
        raise _BadEntry(f"{link or guid}: it has neither a title nor any content")
    return FeedEntry(
        guid=guid,
        link=link,
        title=title[:MAX_TITLE],
        author=_capped(_author_name(entry), MAX_AUTHOR),
        published=_entry_date(entry),
        content_html=body[:MAX_BODY],
    )


def _richest_body(entry: Any) -> str:
    """The longest of the entry's contents (content:encoded, atom:content) and its summary."""
    bodies = [_as_html(content) for content in entry.get("content") or ()]
    bodies.append(_as_html(entry.get("summary_detail")))
    return max(bodies, key=len)


def _as_html(detail: Any) -> str:
    """A feedparser text construct as HTML: plain text is escaped, so normalize parses one kind."""
    if not detail or not detail.get("value"):
        return ""
    value = str(detail["value"])
    return value if "html" in (detail.get("type") or "") else html.escape(value, quote=False)


def _plain_text(detail: Any) -> str | None:
    """A feed-level text construct (feed title) as one line of plain text."""
    if not detail or not detail.get("value"):
        return None
    value = str(detail["value"])
    if "html" in (detail.get("type") or ""):
        value = html.unescape(re.sub(r"<[^>]*>", "", value))
    return " ".join(value.split()) or None


def _author_name(node: Any) -> str | None:
    """The author's name: ``Jo Bloggs`` of ``jo@example.com (Jo Bloggs)`` or ``Jo Bloggs
    <jo@example.com>``, else the text as given.

    feedparser's own split cuts e-mail domains with long top-level domains in the wrong place.
    """
    raw = _capped(node.get("author"), MAX_AUTHOR)
    if raw:
        match = _EMAIL_THEN_NAME.match(raw) or _NAME_THEN_EMAIL.match(raw)
        if match:
            return match.group("name").strip()
        if "@" not in raw:
            return raw
    detail = node.get("author_detail") or {}
    return detail.get("name") or raw or None


def _entry_date(entry: Any) -> datetime | None:
    """Published (else updated) time in the offset the source wrote.

    feedparser's ``*_parsed`` values are converted to UTC and lose the offset, so the raw string
    is read first; feedparser's value is the fallback for formats we do not read.
    """
    for key in ("published", "updated"):
        # dict.get: FeedParserDict.get("updated") falls back to "published" with a warning.
        raw = dict.get(entry, key)
        parsed = dict.get(entry, f"{key}_parsed")
        if not raw and not parsed:
            continue
        if raw and (when := _date_from_string(str(raw))) is not None:
            return when
        if parsed:
            return datetime(*parsed[:6], tzinfo=UTC)
    return None


def _date_from_string(raw: str) -> datetime | None:
    """An aware datetime from an RFC 822 or ISO 8601 string, or None (naive counts as unknown)."""
    raw = raw.strip()
    for read in (parsedate_to_datetime, datetime.fromisoformat):
        try:
            when = read(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
        if when is not None and when.tzinfo is not None:
            return when
    return None


def _ttl(value: Any) -> int | None:
    try:
        minutes = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return minutes if minutes > 0 else None


# --- JSON Feed --------------------------------------------------------------------------------

def _is_json(data: bytes, mime: str) -> bool:
    first = data.lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
    return first == b"{" or (mime in JSON_TYPES and first not in (b"<", b""))


def _parse_json_feed(data: bytes, content_type: str | None) -> ParsedFeed:
    """JSON Feed 1.0 and 1.1 (https://jsonfeed.org/version/1.1)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise NotAFeedError(_expected("invalid JSON", data, content_type)) from None
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not version.startswith(JSON_FEED_VERSION_PREFIX):
        raise NotAFeedError(_expected("JSON that is not a JSON Feed (no version "
                                      f"{JSON_FEED_VERSION_PREFIX}...)", data, content_type))
    items = doc.get("items") or []
    if not isinstance(items, list):
        raise NotAFeedError(_expected("a JSON Feed whose items are not a list", data, content_type))
    number = version.removeprefix(JSON_FEED_VERSION_PREFIX).replace(".", "")
    return ParsedFeed(
        format="json" + (number + "0" if len(number) == 1 else number),
        title=_capped(_json_str(doc.get("title")), MAX_TITLE),
        link=_capped(_json_str(doc.get("home_page_url")), MAX_URL),
        author=_capped(_json_author(doc), MAX_AUTHOR),
        ttl_minutes=None,
        entries=_convert_entries(items, _entry_from_json),
    )


def _entry_from_json(item: Any) -> FeedEntry:
    if not isinstance(item, dict):
        raise _BadEntry(f"an item is a {type(item).__name__}, not an object")
    link = _capped(_json_str(item.get("url")) or _json_str(item.get("external_url")), MAX_URL)
    guid = _capped(_json_str(item.get("id")), MAX_URL)
    if not link and not guid:
        raise _BadEntry("it has neither a url nor an id")
    bodies = [_json_str(item.get("content_html")) or ""]
    bodies += [html.escape(_json_str(item.get(key)) or "", quote=False)
               for key in ("content_text", "summary")]
    body = max(bodies, key=len)
    title = html.escape(_json_str(item.get("title")) or "", quote=False)
    if not title.strip() and not body.strip():
        raise _BadEntry(f"{link or guid}: it has neither a title nor any content")
    raw_date = _json_str(item.get("date_published")) or _json_str(item.get("date_modified"))
    return FeedEntry(
        guid=guid,
        link=link,
        title=title[:MAX_TITLE],
        author=_capped(_json_author(item), MAX_AUTHOR),
        published=_json_date(raw_date),
        content_html=body[:MAX_BODY],
    )


def _json_str(value: Any) -> str | None:
    """A JSON string (ids may be numbers); anything else counts as absent."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return str(value)


def _json_author(node: dict[str, Any]) -> str | None:
    """``authors`` (1.1) or ``author`` (1.0): the first name given."""
    authors = node.get("authors")
    candidates = authors if isinstance(authors, list) else []
    candidates = [*candidates, node.get("author")]
    for author in candidates:
        if isinstance(author, dict) and (name := _json_str(author.get("name"))):
            return name
    return None


def _json_date(raw: str | None) -> datetime | None:
    """RFC 3339; a time without an offset (not allowed by the spec) is taken as UTC."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# --- entries, shared --------------------------------------------------------------------------

def _convert_entries(raw_entries: Iterable[Any],
                     convert: Callable[[Any], FeedEntry]) -> tuple[FeedEntry, ...]:
    """Convert each entry; skip a bad one with a warning; fail only if every one is bad."""
    entries: list[FeedEntry] = []
    failures: list[str] = []
    for index, raw in enumerate(raw_entries):
        try:
            entries.append(convert(raw))
        except (_BadEntry, TypeError, ValueError, KeyError, AttributeError) as exc:
            failures.append(f"entry {index}: {exc}")
            log.warning("skipped a feed entry: %s", exc,
                        extra={"entry_index": index, "reason": str(exc)})
    if failures and not entries:
        raise NotAFeedError(f"every one of the feed's {len(failures)} entries is unusable "
                            f"(first: {failures[0]})")
    return tuple(entries)


def _capped(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text[:limit] or None


# --- bytes before feedparser: encodings and entity declarations -------------------------------

def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _declared_charset(content_type: str | None) -> str | None:
    match = _CHARSET_PARAM.search(content_type or "")
    return match.group(1).lower() if match and match.group(1) else None


def _with_charset(content_type: str | None, charset: str) -> str:
    mime = _mime(content_type) or "application/xml"
    return f"{mime}; charset={charset}"


def _as_ascii_compatible(data: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """UTF-16/32 documents re-encoded as UTF-8, so entity declarations can be found in bytes.

    The XML declaration and the content type are rewritten to say utf-8 to match.
    """
    declared = _declared_charset(content_type) or ""
    encoding = next((enc for prefix, enc in _WIDE_ENCODINGS if data.startswith(prefix)), None)
    if encoding is None and declared.startswith(("utf-16", "utf-32")):
        encoding = declared
    if encoding is None:
        return data, content_type
    text = data.decode(encoding, errors="replace").lstrip("\ufeff")
    utf8 = _XML_DECL_ENCODING.sub(rb"\1\2utf-8\2", text.encode(UTF8), count=1)
    return utf8, _with_charset(content_type, UTF8)


def _without_entity_declarations(data: bytes, size: int, content_type: str | None) -> bytes:
    """Remove the DOCTYPE's internal subset (keeping single-character entities); refuse the
    document if an entity declaration is still left where feedparser would read it."""
    pos = data.startswith(codecs.BOM_UTF8) and len(codecs.BOM_UTF8) or 0
    while match := _PROLOG_ITEM.match(data, pos):
        pos = match.end()
    while data[pos:pos + 1].isspace():
        pos += 1
    doctype = None
    if data[pos:pos + 9].upper() == b"<!DOCTYPE":
        doctype = _DOCTYPE.match(data, pos)
        if doctype is None:
            raise NotAFeedError(_refused("an unterminated DOCTYPE", size, content_type))
    if doctype and doctype.group("subset") is not None:
        kept = b"".join(m.group(0) for m in _CHAR_ENTITY.finditer(doctype.group("subset")))
        replacement = b"<!DOCTYPE" + doctype.group("head") + (b"[" + kept + b"]" if kept else b"")
        data = data[:pos] + replacement + b">" + data[doctype.end():]
    first = _FIRST_ELEMENT.search(data)
    head = data[: first.start() if first else len(data)]
    without_kept = _CHAR_ENTITY.sub(b"", head)
    if _ENTITY_DECL.search(without_kept):
        raise NotAFeedError(_refused("entity declarations that cannot be removed safely", size,
                                     content_type))
    return data


def _refused(what: str, size: int, content_type: str | None) -> str:
    return f"refused a document with {what} ({content_type or 'no content type'}, {size} bytes)"


def _with_guessed_charset(data: bytes, content_type: str | None) -> str | None:
    """The content type, plus a charset when none is declared and the bytes are Japanese.

    feedparser falls back to windows-1252 for undeclared non-UTF-8 bytes, right for most
    Western feeds but mojibake for undeclared Shift_JIS or EUC-JP, which we recognise here.
    """
    if _declared_charset(content_type) or _XML_DECL_ENCODING.match(data[:512]):
        return content_type
    try:
        data.decode(UTF8)
        return content_type
    except UnicodeDecodeError:
        pass
    for encoding in ("cp932", "euc_jp"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if _mostly_japanese(text):
            return _with_charset(content_type, encoding)
    return content_type


def _mostly_japanese(text: str) -> bool:
    """True when nine in ten non-ASCII characters are kana, CJK ideographs or CJK punctuation
    (half-width katakana do not count: they are what other encodings decode to by chance)."""
    wide = [c for c in text if ord(c) > 0x7F]
    japanese = sum(1 for c in wide if "\u3000" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff"
                   or "\uff01" <= c <= "\uff5e")
    return bool(wide) and japanese >= 0.9 * len(wide)


# --- saying what we got instead of a feed ------------------------------------------------------

def _expected(what: str, data: bytes, content_type: str | None) -> str:
    return (f"expected an RSS, Atom or JSON feed, got {what} "
            f"({content_type or 'no content type'}, {len(data)} bytes)")


def _not_a_feed_message(data: bytes, content_type: str | None) -> str:
    return _expected(_describe(data, content_type), data, content_type)


def _describe(data: bytes, content_type: str | None) -> str:
    start = data[:4096].lstrip(codecs.BOM_UTF8 + b" \t\r\n")
    lowered = start.lower()
    if not data.strip():
        return "an empty response"
    if lowered.startswith(b"<!doctype html") or b"<html" in lowered or _mime(content_type) in (
            "text/html", "application/xhtml+xml"):
        return "an HTML page"
    if start.startswith(b"<"):
        pos = 0
        while match := _PROLOG_ITEM.match(start, pos):
            pos = match.end()
        root = _ROOT_NAME.search(start, pos)
        if root is None:
            return "an XML document without elements"
        return f"an XML document whose root element is <{root.group(1).decode('ascii', 'replace')}>"
    if start.startswith(b"%PDF"):
        return "a PDF file"
    return "data that is neither XML nor JSON"
