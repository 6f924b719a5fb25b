"""Pipeline stage parse: feed bytes to a typed ``ParsedFeed``. The only module importing feedparser.

RSS 0.9x/1.0/2.0 and Atom go through feedparser (its loose parser still yields the items of
malformed XML), with lxml's recovering parser as a second opinion for what feedparser loses
(see ``recover``); JSON Feed, which feedparser does not read, goes through our own code.

The bytes are decoded first, in the encoding feedparser would choose (header, byte order
mark, XML declaration, sniffing), and the decoded prolog is checked for entity declarations:
feedparser's loose parser expands them, and a "billion laughs" costs a minute of CPU, whatever
encoding hides the declarations from a scan of the raw bytes. feedparser then reads UTF-8.

``parse_feed`` is the boundary: whatever the bytes hold, it returns a ParsedFeed or raises
NotAFeedError with a one-line reason; an entry it cannot read is skipped with a warning.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import feedparser.encodings

from worker.dates import bounded, parse_date
from worker.dedupe import canonical_url
from worker.errors import NotAFeedError
from worker.models import FeedEntry, ParsedFeed
from worker.recover import Recovered, RecoveredEntry, plain, recover_document

log = logging.getLogger(__name__)

# Caps on what one entry may carry, whatever the document says (in characters).
MAX_TITLE = 2_000
MAX_AUTHOR = 500
MAX_URL = 4_096
MAX_BODY = 1_000_000
# An RSS <ttl> is honoured up to a day: a feed cannot push its next poll into next year.
MAX_TTL_MINUTES = 24 * 60

JSON_FEED_VERSION = re.compile(r"^https?://(?:www\.)?jsonfeed\.org/version/([0-9]+(?:\.[0-9]+)?)/?$",
                               re.I)
JSON_TYPES = frozenset({"application/feed+json", "application/json"})
UTF8 = "utf-8"
UTF8_DECLARATION = "<?xml version='1.0' encoding='utf-8'?>"
# What feedparser is told of the bytes it gets: always UTF-8 (we decoded them), always XML.
UTF8_XML = "application/xml; charset=utf-8"

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
_WIDE_STARTS = tuple(start for start, _ in _WIDE_ENCODINGS)
# Codecs that decode anything but text, or raise what feedparser does not catch.
_NOT_TEXT_CODECS = frozenset({"undefined", "mbcs", "oem"})
_XML_DECL_ENCODING = re.compile(rb"""^(\s*<\?xml[^>]*?\sencoding\s*=\s*)(["'])([^"']*)\2""")
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
_CHARSET_PARAM = re.compile(r";\s*charset\s*=\s*[\"']?([^\"';\s]*)[\"']?", re.I)

# The prolog: processing instructions, comments and whitespace before the DOCTYPE.
_PROLOG_ITEM = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)
# A DOCTYPE with an optional internal subset. Possessive quantifiers: on an unterminated
# subset, backtracking through every way to split a run of text would take minutes.
_DOCTYPE = re.compile(
    r"""<!DOCTYPE(?P<head>(?:[^\["'>]++|"[^"]*+"|'[^']*+')*+)"""
    r"""(?:\[(?P<subset>(?:[^\]"'<]++|"[^"]*+"|'[^']*+'|<!--.*?-->|<(?!!--))*+)\]\s*)?>""",
    re.I | re.S,
)
# Entities whose value is one character reference cannot amplify anything; keep them.
_CHAR_ENTITY = re.compile(
    r"""<!ENTITY\s+[A-Za-z_][\w.-]*\s+(["'])&#(?:x[0-9a-fA-F]+|[0-9]+);\1\s*>""")
_ENTITY_DECL = re.compile(r"<!ENTITY", re.I)
# feedparser reads entity declarations in everything before the first element.
_FIRST_ELEMENT = re.compile(r"<\w")
# A numeric character reference; more than 8 hex or 10 decimal digits is no character.
_CHAR_REF = re.compile(r"&#(?:[xX]0*([0-9a-fA-F]{1,8})|0*([0-9]{1,10}));|&#(?:[xX][0-9a-fA-F]+|[0-9]+);")
_ROOT_NAME = re.compile(rb"<([A-Za-z_][\w:.-]*)")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_PROLOG_ITEM_BYTES = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)
_EMAIL = r"[^\s@()<>]+@[^\s()<>]+"
_EMAIL_THEN_NAME = re.compile(rf"\s*{_EMAIL}\s*\((?P<name>[^()]+)\)\s*$")
_NAME_THEN_EMAIL = re.compile(rf"(?P<name>[^()<>]+?)\s*[(<]{_EMAIL}[)>]\s*$")


class _BadEntry(ValueError):
    """One entry cannot become a FeedEntry; the others still can."""


def parse_feed(data: bytes, content_type: str | None = None, *, url: str | None = None,
               timezone: str | None = None) -> ParsedFeed:
    """Parse RSS, Atom or JSON Feed bytes as fetched, with the response's Content-Type.

    ``url`` is the feed's address, against which relative links are resolved (after xml:base
    and the feed's own link); ``timezone`` the IANA zone a date without an offset is read in.
    Raises NotAFeedError when the bytes are no feed (saying what they look like instead),
    hold entity declarations that cannot be removed safely, or every entry is unusable; and
    also, as the last line of isolation, for anything else that goes wrong on these bytes.
    """
    if not isinstance(data, bytes):
        raise TypeError("parse_feed takes the fetched bytes (feedparser would open a str as a URL)")
    try:
        if _is_json(data, _mime(content_type)):
            return _parse_json_feed(data, content_type, url, timezone)
        return _parse_xml_feed(data, content_type, url, timezone)
    except NotAFeedError:
        raise
    except Exception as exc:  # a library's bug on hostile bytes must cost this feed only
        log.warning("could not parse a feed", exc_info=True, extra={"url": url})
        raise NotAFeedError(_expected(f"bytes the parser failed on ({type(exc).__name__}: "
                                      f"{str(exc)[:120]})", data, content_type)) from exc


def body_digest(data: bytes, content_type: str | None) -> str:
    """What identifies a response body for "same bytes as last time" (Content-Type included:
    its charset changes how the bytes read)."""
    digest = hashlib.sha256((content_type or "").encode("utf-8", "replace") + b"\n")
    digest.update(data)
    return digest.hexdigest()


# --- XML feeds (feedparser) -------------------------------------------------------------------

def _parse_xml_feed(data: bytes, content_type: str | None, url: str | None,
                    zone: str | None) -> ParsedFeed:
    text = _decoded(data, content_type)
    text = _without_entity_declarations(text, len(data), content_type)
    xml = _valid_char_refs(text).encode(UTF8)
    recovered = recover_document(xml, url)
    base = recovered.link or url
    headers = {"content-type": UTF8_XML}
    if base and urlsplit(base).scheme in ("http", "https"):
        headers["content-location"] = base  # feedparser resolves links and xml:base against it
    parsed = feedparser.parse(xml, response_headers=headers, sanitize_html=False,
                              resolve_relative_uris=False)
    if not parsed.get("version") and not parsed.entries and not recovered.entries:
        raise NotAFeedError(_not_a_feed_message(data, content_type))
    feed = parsed.feed
    feed_link = _absolute(_capped(feed.get("link"), MAX_URL), url)
    entries = _merged(parsed.entries, recovered, base)
    return ParsedFeed(
        format=parsed.get("version") or "unknown",
        title=_capped(_plain_text(feed.get("title_detail")), MAX_TITLE),
        link=feed_link,
        author=_capped(_author_name(feed), MAX_AUTHOR),
        ttl_minutes=_ttl(feed.get("ttl")),
        entries=_richest_per_id(_convert_entries(
            entries, lambda pair: _entry_from_feedparser(*pair, base=base, zone=zone))),
    )


def _merged(entries: list[Any], recovered: Recovered,
            base: str | None) -> list[tuple[Any, RecoveredEntry | None]]:
    """feedparser's entries, each with lxml's reading of the same item, and the items only
    lxml found. Paired by position when both found as many, else by link or id; in lxml's
    document order when it found more (feedparser lost some), else in feedparser's."""
    theirs = list(recovered.entries)
    if len(theirs) == len(entries):
        return [(entry, rec if _agree(entry, rec, base) else None)
                for entry, rec in zip(entries, theirs, strict=True)]
    by_key: dict[str, Any] = {}
    for entry in entries:
        for key in (entry.get("link"), entry.get("id"), plain(entry.get("title"))):
            if key:
                by_key.setdefault(key, entry)
    matched = {id(rec): next((by_key[k] for k in _keys(rec, base) if k in by_key), None)
               for rec in theirs}
    if len(theirs) > len(entries):
        used = {id(e) for e in matched.values() if e is not None}
        pairs = [(matched[id(rec)], rec) for rec in theirs]
        return pairs + [(entry, None) for entry in entries if id(entry) not in used]
    by_entry = {id(e): rec for rec in theirs if (e := matched[id(rec)]) is not None}
    return [(entry, by_entry.get(id(entry))) for entry in entries]


def _agree(entry: Any, rec: RecoveredEntry, base: str | None) -> bool:
    """Whether two readings at the same position are one item: same link (or id) where both
    have one."""
    link = entry.get("link")
    if link and rec.link:
        return link in (rec.link, _absolute(rec.link, base))
    guid = entry.get("id")
    if guid and rec.guid:
        return guid in (rec.guid, _absolute(rec.guid, base))
    return True


def _keys(rec: RecoveredEntry, base: str | None) -> list[str]:
    """What may identify a recovered item among feedparser's: link, id, then its title."""
    keys = [_absolute(rec.link, base), rec.link, rec.guid, _absolute(rec.guid, base)]
    return [k for k in keys if k] + ([plain(rec.title)] if plain(rec.title) else [])


def _entry_from_feedparser(entry: Any, rec: RecoveredEntry | None, *, base: str | None,
                           zone: str | None) -> FeedEntry:
    if entry is None:  # an item only the recovering parse found
        entry = {"published": rec.published} if rec is not None else {}
    title = _own_title(entry, rec)
    body = _richest_body(entry)
    if rec is not None and not plain(body) and not plain(title):
        title, body = rec.title or "", rec.body
    elif rec is not None and not plain(body):
        body = rec.body
    link = _absolute(_capped(entry.get("link") or (rec and rec.link), MAX_URL), base)
    guid = _capped(entry.get("id") or (rec and rec.guid), MAX_URL)
    if not plain(title) and not plain(body):
        raise _BadEntry(f"{link or guid or 'an entry'}: it has neither a title nor any content")
    return FeedEntry(
        guid=guid,
        link=link,
        title=title[:MAX_TITLE],
        author=_capped(_author_name(entry), MAX_AUTHOR),
        published=_entry_date(entry, zone),
        content_html=body[:MAX_BODY],
    )


def _own_title(entry: Any, rec: RecoveredEntry | None) -> str:
    """The entry's title as HTML. feedparser's ``title_detail`` can hold the title of an element
    nested in the item (``<image><title>``, ``<author><title>``); then the item's own wins."""
    title = _as_html(entry.get("title_detail"))
    if rec is None or not title:
        return title
    text = plain(title)
    if text in rec.nested_titles and text != plain(rec.title):
        return rec.title or ""
    return title


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
    """A feed-level text construct (feed title) as one line of plain text, entities decoded."""
    if not detail or not detail.get("value"):
        return None
    value = str(detail["value"])
    if "html" in (detail.get("type") or ""):
        value = re.sub(r"<[^>]*>", "", value)
    return " ".join(html.unescape(value).split()) or None


def _author_name(node: Any) -> str | None:
    """The author's name: ``Jo Bloggs`` of ``jo@example.com (Jo Bloggs)`` or ``Jo Bloggs
    <jo@example.com>``, else the text as given; entities decoded.

    feedparser's own split cuts e-mail domains with long top-level domains in the wrong place.
    """
    raw = _capped(node.get("author"), MAX_AUTHOR)
    if raw:
        raw = html.unescape(raw)
        match = _EMAIL_THEN_NAME.match(raw) or _NAME_THEN_EMAIL.match(raw)
        if match:
            return match.group("name").strip()
        if "@" not in raw:
            return raw
    detail = node.get("author_detail") or {}
    name = detail.get("name")
    return html.unescape(str(name)) if name else raw or None


def _entry_date(entry: Any, zone: str | None) -> datetime | None:
    """Published (else updated) time in the offset the source wrote.

    feedparser's ``*_parsed`` values are converted to UTC and lose the offset, so the raw string
    is read first; feedparser's value is the fallback for formats we do not read.
    """
    for key in ("published", "updated"):
        # dict.get: FeedParserDict.get("updated") falls back to "published" with a warning.
        raw = dict.get(entry, key) if isinstance(entry, dict) else None
        parsed = dict.get(entry, f"{key}_parsed") if isinstance(entry, dict) else None
        if not raw and not parsed:
            continue
        if raw and (when := parse_date(str(raw), zone)) is not None:
            return when
        if parsed and (when := _from_struct(parsed)) is not None:
            return when
    return None


def _from_struct(parsed: Any) -> datetime | None:
    try:
        return bounded(datetime(*parsed[:6], tzinfo=UTC))
    except (TypeError, ValueError, OverflowError):
        return None


def _ttl(value: Any) -> int | None:
    """RSS <ttl> in minutes, at most MAX_TTL_MINUTES; None when absent or not a positive number."""
    text = str(value).strip() if value is not None else ""
    if not text.isascii() or not text.isdigit():
        return None
    minutes = int(text[:12]) if len(text) <= 12 else MAX_TTL_MINUTES
    return min(minutes, MAX_TTL_MINUTES) if minutes > 0 else None


def _absolute(link: str | None, base: str | None) -> str | None:
    """A link resolved against ``base`` when it is relative (feedparser resolves only against
    an http(s) base)."""
    if not link or not base or urlsplit(link).scheme:
        return link
    try:
        return urljoin(base, link)[:MAX_URL]
    except ValueError:  # a malformed IPv6 literal, for one
        return link


# --- JSON Feed --------------------------------------------------------------------------------

def _is_json(data: bytes, mime: str) -> bool:
    first = data.lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
    return first == b"{" or (mime in JSON_TYPES and first not in (b"<", b""))


def _parse_json_feed(data: bytes, content_type: str | None, url: str | None,
                     zone: str | None) -> ParsedFeed:
    """JSON Feed 1.0 and 1.1 (https://jsonfeed.org/version/1.1), with any spelling of the
    version URL (http or https, a trailing slash, "1" or "1.0")."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise NotAFeedError(_expected("invalid JSON", data, content_type)) from None
    version = doc.get("version") if isinstance(doc, dict) else None
    match = JSON_FEED_VERSION.match(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise NotAFeedError(_expected("JSON that is not a JSON Feed (no version "
                                      "https://jsonfeed.org/version/...)", data, content_type))
    items = doc.get("items") or []
    if not isinstance(items, list):
        raise NotAFeedError(_expected("a JSON Feed whose items are not a list", data, content_type))
    number = match.group(1).replace(".", "")
    home = _absolute(_capped(_json_str(doc.get("home_page_url")), MAX_URL), url)
    base = home or url
    return ParsedFeed(
        format="json" + (number + "0" if len(number) == 1 else number),
        title=_capped(_json_text(doc.get("title")), MAX_TITLE),
        link=home,
        author=_capped(_json_author(doc), MAX_AUTHOR),
        ttl_minutes=None,
        entries=_richest_per_id(_convert_entries(
            items, lambda item: _entry_from_json(item, base=base, zone=zone))),
    )


def _entry_from_json(item: Any, *, base: str | None, zone: str | None) -> FeedEntry:
    if not isinstance(item, dict):
        raise _BadEntry(f"an item is a {type(item).__name__}, not an object")
    link = _json_str(item.get("url")) or _json_str(item.get("external_url"))
    link = _absolute(_capped(link, MAX_URL), base)
    guid = _capped(_json_str(item.get("id")), MAX_URL)
    bodies = [_json_str(item.get("content_html")) or ""]
    bodies += [html.escape(_json_text(item.get(key)) or "", quote=False)
               for key in ("content_text", "summary")]
    body = max(bodies, key=len)
    title = html.escape(_json_text(item.get("title")) or "", quote=False)
    if not plain(title) and not plain(body):
        raise _BadEntry(f"{link or guid or 'an item'}: it has neither a title nor any content")
    raw_date = _json_str(item.get("date_published")) or _json_str(item.get("date_modified"))
    return FeedEntry(
        guid=guid,
        link=link,
        title=title[:MAX_TITLE],
        author=_capped(_json_author(item), MAX_AUTHOR),
        published=parse_date(raw_date, zone),
        content_html=body[:MAX_BODY],
    )


def _json_str(value: Any) -> str | None:
    """A JSON string (ids may be numbers) without lone surrogates (JSON can escape them, no
    UTF-8 can hold them); anything else counts as absent."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return _LONE_SURROGATE.sub("", str(value))


def _json_text(value: Any) -> str | None:
    """A plain-text field: JSON Feed's are text, but feeds in the wild write entities in them."""
    text = _json_str(value)
    return html.unescape(text) if text else text


def _json_author(node: dict[str, Any]) -> str | None:
    """``authors`` (1.1) or ``author`` (1.0): the first name given."""
    authors = node.get("authors")
    candidates = authors if isinstance(authors, list) else []
    candidates = [*candidates, node.get("author")]
    for author in candidates:
        if isinstance(author, dict) and (name := _json_text(author.get("name"))):
            return name
    return None


# --- entries, shared --------------------------------------------------------------------------

def _convert_entries(raw_entries: Iterable[Any],
                     convert: Callable[[Any], FeedEntry]) -> tuple[FeedEntry, ...]:
    """Convert each entry; skip a bad one with a warning; fail only if every one is bad."""
    entries: list[FeedEntry] = []
    failures: list[str] = []
    for index, raw in enumerate(raw_entries):
        try:
            entries.append(convert(raw))
        except Exception as exc:  # the entry boundary: whatever this entry holds, the rest go on
            failures.append(f"entry {index}: {exc}")
            log.warning("skipped a feed entry: %s", exc,
                        extra={"entry_index": index, "reason": str(exc)})
    if failures and not entries:
        raise NotAFeedError(f"every one of the feed's {len(failures)} entries is unusable "
                            f"(first: {failures[0]})")
    return tuple(entries)


def _richest_per_id(entries: tuple[FeedEntry, ...]) -> tuple[FeedEntry, ...]:
    """One entry per identity (canonical link, else id): the one with the most text, in the
    place of the first. A feed that lists one URL twice should not lose the copy with text."""
    kept: dict[str, FeedEntry] = {}
    order: list[FeedEntry | str] = []
    for entry in entries:
        key = canonical_url(entry.link) if entry.link else entry.guid
        if not key:
            order.append(entry)
            continue
        if key not in kept:
            order.append(key)
            kept[key] = entry
        elif _richness(entry) > _richness(kept[key]):
            kept[key] = entry
    return tuple(kept[item] if isinstance(item, str) else item for item in order)


def _richness(entry: FeedEntry) -> tuple[int, int]:
    return len(plain(entry.content_html)), len(plain(entry.title))


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


def _is_text_codec(name: str) -> bool:
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return False
    return info._is_text_encoding and info.name not in _NOT_TEXT_CODECS  # type: ignore[attr-defined]


def _decoded(data: bytes, content_type: str | None) -> str:
    """The document as text, decoded as feedparser would (header charset, XML declaration,
    byte order mark, then UTF-8, windows-1252...), with an XML declaration saying UTF-8.

    A charset no codec knows (``utf-16x``) or one that decodes no text is treated as absent.
    """
    text = _decoded_wide(data)
    if text is not None:
        return _XML_DECL.sub(UTF8_DECLARATION, text, count=1)
    declared = _declared_charset(content_type)
    if declared and not _is_text_codec(declared):
        content_type = _mime(content_type) or None
    content_type = _with_guessed_charset(data, content_type)
    result: dict[str, Any] = {}
    try:
        utf8 = feedparser.encodings.convert_to_utf8(
            {"content-type": content_type} if content_type else {}, data, result)
    except (LookupError, UnicodeError):  # a declared codec feedparser does not guard against
        utf8 = data
    text = utf8.decode(UTF8, "replace")
    if _XML_DECL.match(text):
        return _XML_DECL.sub(UTF8_DECLARATION, text, count=1)
    return text


def _decoded_wide(data: bytes) -> str | None:
    """A UTF-16 or UTF-32 document (by its byte order mark or its first characters) as text.

    Ahead of feedparser's order: it tries a header's or the default UTF-8 before the byte
    order mark, and UTF-16 without an encoding in its declaration is valid UTF-8 by chance.
    """
    encoding = next((enc for start, enc in _WIDE_ENCODINGS if data.startswith(start)), None)
    if encoding is None:
        return None
    try:
        return data.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError:
        return None


def _valid_char_refs(text: str) -> str:
    """Character references to what no XML document may hold (surrogates, NUL, beyond
    U+10FFFF, 99999999999) removed: feedparser would raise on them."""
    if "&#" not in text:
        return text
    return _CHAR_REF.sub(_char_ref_or_nothing, text)


def _char_ref_or_nothing(match: re.Match[str]) -> str:
    hexa, decimal = match.group(1), match.group(2)
    if hexa is None and decimal is None:
        return ""
    code = int(hexa, 16) if hexa is not None else int(decimal)
    allowed = (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
               or 0x10000 <= code <= 0x10FFFF)
    return match.group(0) if allowed else ""


def _without_entity_declarations(text: str, size: int, content_type: str | None) -> str:
    """Remove the DOCTYPE's internal subset (keeping single-character entities); refuse the
    document if an entity declaration is still left where feedparser would read it."""
    pos = 1 if text.startswith("\ufeff") else 0
    while match := _PROLOG_ITEM.match(text, pos):
        pos = match.end()
    while text[pos:pos + 1].isspace():
        pos += 1
    doctype = None
    if text[pos:pos + 9].upper() == "<!DOCTYPE":
        doctype = _DOCTYPE.match(text, pos)
        if doctype is None:
            raise NotAFeedError(_refused("an unterminated DOCTYPE", size, content_type))
    if doctype and doctype.group("subset") is not None:
        kept = "".join(m.group(0) for m in _CHAR_ENTITY.finditer(doctype.group("subset")))
        replacement = "<!DOCTYPE" + doctype.group("head") + ("[" + kept + "]" if kept else "")
        text = text[:pos] + replacement + ">" + text[doctype.end():]
    first = _FIRST_ELEMENT.search(text)
    head = text[: first.start() if first else len(text)]
    if _ENTITY_DECL.search(_CHAR_ENTITY.sub("", head)):
        raise NotAFeedError(_refused("entity declarations that cannot be removed safely", size,
                                     content_type))
    return text


def _refused(what: str, size: int, content_type: str | None) -> str:
    return f"refused a document with {what} ({content_type or 'no content type'}, {size} bytes)"


def _with_guessed_charset(data: bytes, content_type: str | None) -> str | None:
    """The content type, plus a charset when none is declared and the bytes are Japanese.

    feedparser falls back to windows-1252 for undeclared non-UTF-8 bytes, right for most
    Western feeds but mojibake for undeclared Shift_JIS or EUC-JP, which we recognise here.
    """
    if (_declared_charset(content_type) or _XML_DECL_ENCODING.match(data[:512])
            or data.startswith(_WIDE_STARTS)):
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
        while match := _PROLOG_ITEM_BYTES.match(start, pos):
            pos = match.end()
        root = _ROOT_NAME.search(start, pos)
        if root is None:
            return "an XML document without elements"
        return f"an XML document whose root element is <{root.group(1).decode('ascii', 'replace')}>"
    if start.startswith(b"%PDF"):
        return "a PDF file"
    return "data that is neither XML nor JSON"
