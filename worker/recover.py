"""Pipeline stage parse, second opinion: the items of a feed document read with lxml's
recovering XML parser.

feedparser's loose parser gives up on some damage that lxml recovers from (an item whose
``</description>`` is missing loses its text, and the items after it are gone), and it lets a
nested ``<title>`` (of an ``<image>`` or an ``<author>``) stand for the item's own. ``parse``
uses what this module reads to fill what feedparser lost; it never replaces what it found.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urljoin

import lxml.etree as etree

ENTRY_TAGS = frozenset({"item", "entry"})
BODY_TAGS = ("encoded", "content", "description", "summary", "body")
DATE_TAGS = ("pubdate", "published", "date", "issued", "updated", "modified")
_SPACE = re.compile(r"\s+")
_MARKUP = re.compile(r"<[^>]*>")
# Namespaces whose children are the item's own fields (RSS 0.9x/2.0 have none).
_CORE = frozenset({None, "http://purl.org/rss/1.0/", "http://www.w3.org/2005/Atom",
                   "http://purl.org/atom/ns#", "http://backend.userland.com/rss2",
                   "http://my.netscape.com/rdf/simple/0.9/"})


@dataclass(frozen=True)
class RecoveredEntry:
    """One item as lxml read it: HTML title and body (plain text escaped), link and id."""

    title: str | None               # None: the item has no title element of its own
    nested_titles: frozenset[str]   # plain text of the title elements deeper inside it
    body: str
    link: str | None                # as written, resolved against xml:base only
    guid: str | None
    published: str | None = None    # the date as written (pubDate, published, updated, dc:date)


@dataclass(frozen=True)
class Recovered:
    link: str | None                # the channel's (feed's) own link, resolved
    entries: tuple[RecoveredEntry, ...]


NOTHING = Recovered(link=None, entries=())


def recover_document(data: bytes, base: str | None) -> Recovered:
    """The feed link (resolved against ``base``) and the items lxml finds in UTF-8 bytes
    (entity declarations already gone); NOTHING when it finds no root element."""
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True,
                             load_dtd=False, huge_tree=False, remove_comments=True,
                             remove_pis=True)
    try:
        # No base URL for the document: item links stay relative unless xml:base makes them
        # absolute; parse resolves the rest against the feed's link, which is known only now.
        root = etree.fromstring(data, parser)
    except (etree.Error, ValueError):
        return NOTHING
    if root is None:
        return NOTHING
    entries = tuple(_entry(el) for el in root.iter(etree.Element) if _local(el) in ENTRY_TAGS)
    return Recovered(link=_feed_link(root, base), entries=entries)


def plain(markup: str | None) -> str:
    """Markup as comparable plain text: tags dropped, entities decoded, spaces collapsed."""
    if not markup:
        return ""
    return _SPACE.sub(" ", html.unescape(_MARKUP.sub("", markup))).strip()


def _entry(item: etree._Element) -> RecoveredEntry:
    own = [child for child in item if isinstance(child.tag, str)]
    title_el = _first(own, "title")
    nested = frozenset(plain(_markup(el)) for el in _inside(item)
                       if _local(el) == "title" and el.getparent() is not item)
    bodies = [_markup(el) for el in own if _local(el) in BODY_TAGS]
    guid_el = _first(own, "guid")
    if guid_el is None:
        guid_el = _first(own, "id")
    guid = (guid_el.text or "").strip() or None if guid_el is not None else None
    return RecoveredEntry(title=_markup(title_el) if title_el is not None else None,
                          nested_titles=nested, body=max(bodies, key=len, default=""),
                          link=_link(own, None), guid=guid, published=_date(own))


def _date(children: list[etree._Element]) -> str | None:
    for name in DATE_TAGS:
        el = _first(children, name)
        if el is not None and (el.text or "").strip():
            return el.text.strip()
    return None


def _first(children: list[etree._Element], name: str) -> etree._Element | None:
    """The first child of that local name, one in a core namespace before any other."""
    named = [c for c in children if _local(c) == name]
    core = [c for c in named if _namespace(c) in _CORE]
    return (core or named or [None])[0]


def _markup(el: etree._Element) -> str:
    """An element's content as HTML: escaped text as written, child elements serialized, up
    to the first item swallowed by a missing closing tag (that one is an item of its own)."""
    kind = (el.get("type") or "").lower()
    if len(el) == 0:
        text = el.text or ""
        return html.escape(text, quote=False) if kind in ("text", "text/plain") else text
    parts = [html.escape(el.text or "", quote=False)]
    for child in el:
        if _local(child) in ENTRY_TAGS:
            break
        parts.append(etree.tostring(child, encoding="unicode", with_tail=True))
    return "".join(parts)


def _inside(item: etree._Element) -> list[etree._Element]:
    """The elements inside an item, without those of the items nested in it by broken XML
    (walking them from every enclosing item would cost the square of their number)."""
    out: list[etree._Element] = []
    todo = [child for child in reversed(item) if isinstance(child.tag, str)]
    while todo:
        el = todo.pop()
        if _local(el) in ENTRY_TAGS:
            continue
        out.append(el)
        todo.extend(child for child in reversed(el) if isinstance(child.tag, str))
    return out


def _feed_link(root: etree._Element, base: str | None) -> str | None:
    channel = next((c for c in root if _local(c) == "channel"), root)
    return _link([c for c in channel if isinstance(c.tag, str)], base)


def _link(children: list[etree._Element], base: str | None) -> str | None:
    """The first alternate link (RSS text or Atom href), resolved against xml:base and base."""
    for child in children:
        if _local(child) != "link" or child.get("rel") not in (None, "alternate"):
            continue
        href = child.get("href") or (child.text or "").strip()
        if href:
            return urljoin(child.base or base or "", href)
    return None


def _local(el: etree._Element) -> str:
    """The lower-case local name ("" for comments); an undeclared prefix stays in it."""
    return _split(el.tag)[1].lower() if isinstance(el.tag, str) else ""


def _namespace(el: etree._Element) -> str | None:
    return _split(el.tag)[0] if isinstance(el.tag, str) else None


def _split(tag: str) -> tuple[str | None, str]:
    # By hand: etree.QName raises on the "prefix:name" tags of undeclared namespaces.
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return None, tag
