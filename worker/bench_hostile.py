"""``newsmon bench --only hostile``: hostile feeds, one class at a time, through parse, normalize
and the dump format, with the time and memory each costs (target: < 2 s and < 200 MB a feed).

``hostile_feeds()`` generates the inputs; the tests run the same set, so what is measured here
is what is checked there.
"""

from __future__ import annotations

import codecs
import json
import multiprocessing
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FEED_URL = "https://hostile.example/feed.xml"
FIRST_SEEN = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class HostileFeed:
    kind: str                   # the class of hostility: "entities", "charset", "date", ...
    name: str
    data: bytes
    content_type: str | None = None


def _rss(items: str, channel: str = "<title>Hostile</title>", decl: str = "",
         doctype: str = "") -> str:
    return (f"{decl}{doctype}<rss version=\"2.0\"><channel>{channel}"
            f"<link>https://hostile.example/</link>{items}</channel></rss>")


def _item(title: str = "Title", body: str = "Body text.", extra: str = "",
          link: str = "https://hostile.example/1") -> str:
    return (f"<item><title>{title}</title><link>{link}</link>"
            f"<description>{body}</description>{extra}</item>")


def _laughs(levels: int = 9) -> str:
    lines = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "' + f"&lol{i - 1 if i > 1 else ''};" * 10 + '">'
        for i in range(1, levels + 1)]
    return "<!DOCTYPE rss [" + "".join(lines) + "]>"


def _bomb(decl: str = "") -> str:
    return _rss(_item("&lol9; laughs", "&lol9;"), "<title>&lol9;</title>", decl, _laughs())


def _utf7(text: str) -> bytes:
    # Python's UTF-7 leaves "<" and ">" alone; a hostile encoder writes them as +ADw- and +AD4-.
    return text.replace("<", "+ADw-").replace(">", "+AD4-").replace(
        '+ADw-?xml version="1.0" encoding="utf-7"?+AD4-', '<?xml version="1.0" encoding="utf-7"?>'
    ).encode("ascii")


def entity_bombs() -> Iterator[HostileFeed]:
    yield HostileFeed("entities", "billion laughs, UTF-8", _bomb().encode())
    yield HostileFeed("entities", "billion laughs, UTF-16 with BOM", _bomb().encode("utf-16"))
    yield HostileFeed("entities", "billion laughs, UTF-16LE declared only by the header",
                      _bomb().encode("utf-16-le"), "application/xml; charset=utf16")
    yield HostileFeed("entities", "billion laughs, UTF-16BE by the header, no BOM",
                      _bomb().encode("utf-16-be"), "application/rss+xml; charset=UTF-16BE")
    yield HostileFeed("entities", "billion laughs, UTF-32", _bomb().encode("utf-32"))
    decl = '<?xml version="1.0" encoding="cp037"?>'
    yield HostileFeed("entities", "billion laughs, EBCDIC cp037 declared",
                      _bomb(decl).encode("cp037"))
    decl = '<?xml version="1.0" encoding="utf-7"?>'
    yield HostileFeed("entities", "billion laughs, UTF-7 declared", _utf7(_bomb(decl)))
    yield HostileFeed("entities", "billion laughs behind a comment and a PI",
                      ("<?xml version='1.0'?><!-- x --><?pi y?>" + _bomb()).encode())
    yield HostileFeed("entities", "billion laughs with a BOM and a header saying latin-1",
                      codecs.BOM_UTF8 + _bomb().encode(), "text/xml; charset=iso-8859-1")
    big = '<!DOCTYPE rss [<!ENTITY big "' + "x" * 30_000 + '">]>'
    yield HostileFeed("entities", "quadratic blowup", _rss(_item("&big;" * 2_000), doctype=big)
                      .encode())
    yield HostileFeed("entities", "parameter entities",
                      _rss(_item(), doctype='<!DOCTYPE rss [<!ENTITY % p "<!ENTITY x \'y\'>"> %p;]>')
                      .encode())
    yield HostileFeed("entities", "external entity",
                      _rss(_item("&ext;"), doctype='<!DOCTYPE rss [<!ENTITY ext SYSTEM '
                           '"file:///etc/passwd">]>').encode())


def character_references() -> Iterator[HostileFeed]:
    for ref in ("&#xD800;", "&#xDFFF;", "&#x110000;", "&#99999999999;", "&#0;", "&#x1F;",
                "&#x" + "F" * 40 + ";", "&#" + "9" * 5000 + ";"):
        everywhere = _item(f"a {ref} b", f"x {ref} y &amp;#xD800; z",
                           f"<author>{ref}</author><guid>g{ref}</guid>",
                           link=f"https://hostile.example/{ref}")
        yield HostileFeed("charrefs", f"character reference {ref[:12]}", _rss(everywhere).encode())


def charsets() -> Iterator[HostileFeed]:
    body = _rss(_item("Caf\u00e9")).encode()
    for charset in ("utf-16x", "utf16", "undefined", "base64", "rot13", "bogus", "", "mbcs",
                    "utf-8\x00", "x" * 300):
        yield HostileFeed("charset", f"charset={charset[:12]!r}", body,
                          f"application/rss+xml; charset={charset}")
    for enc in ("utf-16x", "undefined", "base64", "hex"):
        decl = f'<?xml version="1.0" encoding="{enc}"?>'
        yield HostileFeed("charset", f"declared encoding {enc}", _rss(_item(), decl=decl).encode())
    yield HostileFeed("charset", "invalid UTF-8 bytes", _rss(_item("a \xff\xfe b")).encode(
        "latin-1"), "application/rss+xml; charset=utf-8")


def dates() -> Iterator[HostileFeed]:
    for raw in ("Mon, 01 Jan 0001 00:00:00 +0100", "0001-01-01T00:00:00+05:00",
                "0001-01-01T00:30:00-14:00", "9999-12-31T23:59:59-12:00",
                "Fri, 31 Dec 9999 23:59:59 -1200", "0000-00-00T00:00:00", "31 Feb 2025",
                "99999999999999999999", "-1", "Seg, 24 Set 2018 10:00:00 -0300", "2018年9月24日",
                "x" * 10_000):
        items = _item(extra=f"<pubDate>{raw}</pubDate>") + _item(
            link="https://hostile.example/2", extra=f"<updated>{raw}</updated>")
        yield HostileFeed("date", f"date {raw[:30]!r}", _rss(items).encode())
        doc = {"version": "https://jsonfeed.org/version/1.1", "items": [
            {"id": "1", "title": "T", "date_published": raw, "date_modified": raw}]}
        yield HostileFeed("date", f"JSON date {raw[:30]!r}", json.dumps(doc).encode())


def bodies() -> Iterator[HostileFeed]:
    for markup in ("<!DOCTYPE html>", "<html><head></head></html>", "<html>", "<html><head>",
                   "<body></body><body></body>", "<?xml version='1.0'?>", "<![CDATA[x]]>",
                   "<" * 10_000, "<div>" * 50_000, "&" * 10_000, "\x00\x01\x02", "</p></div>",
                   "<svg><script>x</script></svg>", "<table><td>a<td>b"):
        escaped = markup.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        yield HostileFeed("body", f"body {markup[:24]!r}", _rss(_item(body=escaped)).encode(
            "utf-8", "replace"))


def broken_xml() -> Iterator[HostileFeed]:
    text = "A paragraph of the story. " * 2_000  # ~50 KB an item
    unclosed = "".join(f"<item><title>Item {i}</title><link>https://hostile.example/{i}</link>"
                       f"<description>{text}" for i in range(300))
    yield HostileFeed("broken", "300 items of 50 KB, none closed", _rss(unclosed).encode())
    unclosed = "".join(f"<item><title>Item {i}" for i in range(5_000))
    yield HostileFeed("broken", "5,000 unclosed titles", _rss(unclosed).encode())
    yield HostileFeed("broken", "10,000 unclosed elements", _rss("<item>" + "<x>" * 10_000).encode())


def numbers() -> Iterator[HostileFeed]:
    for ttl in ("999999999999999999999", "-5", "\u00b2", "\u0661\u0662", "1e9", "0x10",
                "9" * 5000):
        yield HostileFeed("number", f"ttl {ttl[:12]!r}",
                          _rss(_item(), f"<title>T</title><ttl>{ttl}</ttl>").encode())


def json_feeds() -> Iterator[HostileFeed]:
    items: list[Any] = [
        {"id": "1", "title": "I&#039;m &amp; \u009d", "authors": [{"name": "A &amp; B"}]},
        {"title": "\ud800 lone surrogate", "content_text": "\x00\x1f text"},
        {"id": {"nested": True}, "url": ["not", "a", "string"], "title": 5},
        {"id": "3", "content_html": "<html><head></head></html>"},
        {"id": "s\udcff", "url": "https://hostile.example/\ud800p", "title": "t\udcff"},
        "not an object", None, [], {"id": "4"},
    ]
    for version in ("https://jsonfeed.org/version/1", "http://jsonfeed.org/version/1",
                    "https://jsonfeed.org/version/1.1/", "HTTPS://JSONFEED.ORG/VERSION/1.1"):
        doc = {"version": version, "title": "J &amp; K", "items": items}
        yield HostileFeed("json", f"JSON Feed {version}", json.dumps(doc).encode())
    yield HostileFeed("json", "JSON nested 100,000 deep", b"{" + b'"a":[' * 100_000)


def hostile_feeds() -> list[HostileFeed]:
    """Every generated hostile input, class by class."""
    return [*entity_bombs(), *character_references(), *charsets(), *dates(), *bodies(),
            *broken_xml(), *numbers(), *json_feeds()]


def render_all(feed: HostileFeed) -> tuple[str | None, list[str]]:
    """Parse, normalize and render one hostile feed: (the refusal reason or None, the dumps).

    Raises only if isolation failed: NotAFeedError and BadEntryError are the only outcomes
    the boundaries allow."""
    from worker.dump import dump_of, render_dump
    from worker.errors import BadEntryError, NotAFeedError
    from worker.normalize import normalize_entry
    from worker.parse import parse_feed

    try:
        parsed = parse_feed(feed.data, feed.content_type, url=FEED_URL)
    except NotAFeedError as exc:
        return str(exc), []
    dumps = []
    for entry in parsed.entries:
        try:
            article = normalize_entry(entry, parsed, feed_url=FEED_URL, first_seen=FIRST_SEEN)
        except BadEntryError:
            continue
        dumps.append(render_dump(dump_of(article)))
    return None, dumps


def measure_in_child(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the hostile feeds in a fresh process; per feed its CPU seconds and how far it
    raised the process's peak memory (MiB) above what the imports and earlier feeds used."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, (names,))


def _measure(names: list[str] | None) -> list[dict[str, Any]]:
    import logging

    logging.disable(logging.WARNING)
    feeds = [f for f in hostile_feeds() if names is None or f.name in names]
    render_all(HostileFeed("warm-up", "warm-up", _rss(_item(extra="<pubDate>Seg, 24 Set 2018"
                                                                  "</pubDate>")).encode()))
    baseline = _peak_mib()
    out = []
    for feed in feeds:
        before = _peak_mib()
        start = time.process_time()
        refused, dumps = render_all(feed)
        out.append({"kind": feed.kind, "name": feed.name, "seconds": time.process_time() - start,
                    "grew_mib": _peak_mib() - before, "above_baseline_mib": _peak_mib() - baseline,
                    "refused": refused, "dumps": len(dumps)})
    return out


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_hostile(quick: bool) -> None:
    results = measure_in_child()
    worst = max(results, key=lambda r: r["seconds"])
    print(f"hostile {len(results)} generated hostile feeds (entity bombs in 9 encodings, "
          "character references, charsets, dates, bodies, broken XML, numbers, JSON)")
    for kind in dict.fromkeys(r["kind"] for r in results):
        of_kind = [r for r in results if r["kind"] == kind]
        slowest = max(of_kind, key=lambda r: r["seconds"])
        grew = max(r["grew_mib"] for r in of_kind)
        print(f"        {kind:9s} {len(of_kind):3d} feeds  slowest "
              f"{slowest['seconds'] * 1000:7.1f} ms ({slowest['name'][:40]})  peak +{grew:.0f} MiB")
    peak = max(r["above_baseline_mib"] for r in results)
    print(f"        worst {worst['seconds']:.2f} s CPU; peak memory {peak:.0f} MiB above the "
          "imports (target: < 2 s and < 200 MB a feed)")
