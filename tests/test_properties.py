"""Property-based tests over the hostile edges (hypothesis; the budget is the "ci" profile in
conftest.py): arbitrary bytes and headers into the parser, arbitrary text into the dump format,
arbitrary addresses and URLs into the address guard and the configuration, arbitrary text and
URLs into the redaction, arbitrary header values into the header parsers."""

from __future__ import annotations

import ipaddress
import json
import string
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.config import url_problem
from worker.dump import _LINE_BREAK, parse_dump, render_dump
from worker.errors import DumpFormatError, NotAFeedError
from worker.fetch import (
    MAX_RETRY_AFTER,
    SPECIAL_PURPOSE_V4,
    SPECIAL_PURPOSE_V6,
    SocketGuard,
    address_refusal,
    header_int,
    header_text,
    parse_retry_after,
)
from worker.models import Dump
from worker.parse import parse_feed
from worker.redact import MASK, SECRET_NAME, redact

# --- the parser ------------------------------------------------------------------------------

CONTENT_TYPES = st.one_of(st.none(), st.text(max_size=60), st.sampled_from([
    "application/rss+xml", "application/atom+xml; charset=utf-8", "application/feed+json",
    "text/xml; charset=iso-8859-1", "text/html; charset=shift_jis", "application/json",
    "text/xml; charset=nonsense", "text/xml; charset=", "text/xml; charset=\"utf-16\""]))


def _no_crash(data: bytes, content_type: str | None) -> None:
    try:
        parsed = parse_feed(data, content_type)
    except NotAFeedError:
        return
    for entry in parsed.entries:  # what the parser hands on is text, whatever came in
        assert all(isinstance(v, str) for v in (entry.title, entry.content_html))


@given(st.binary(max_size=2048), CONTENT_TYPES)
def test_arbitrary_bytes_are_a_feed_or_not_a_feed_never_a_crash(data, content_type):
    _no_crash(data, content_type)


XML_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


@given(XML_TEXT, XML_TEXT, XML_TEXT, st.sampled_from(["utf-8", "iso-8859-1", "windows-1252",
                                                      "shift_jis", "utf-16"]), CONTENT_TYPES)
def test_feeds_holding_arbitrary_text_in_any_encoding_never_crash_the_parser(
        title, link, body, encoding, content_type):
    doc = (f"<?xml version='1.0' encoding='{encoding}'?><rss version='2.0'><channel>"
           f"<title>{title}</title><item><title>{title}</title><link>{link}</link>"
           f"<description>{body}</description><pubDate>{body[:30]}</pubDate>"
           f"<ttl>{title[:10]}</ttl></item></channel></rss>")
    _no_crash(doc.encode(encoding, "replace"), content_type)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=20)


@given(st.dictionaries(st.sampled_from(["version", "title", "items", "home_page_url", "feed_url"]),
                       JSON_VALUES), st.lists(st.dictionaries(st.sampled_from(
                           ["id", "url", "title", "content_html", "content_text",
                            "date_published", "authors", "summary"]), JSON_VALUES), max_size=3))
def test_arbitrary_json_feeds_never_crash_the_parser(top, items):
    document = {"version": "https://jsonfeed.org/version/1.1", **top, "items": items}
    _no_crash(json.dumps(document).encode(), "application/feed+json")


# --- the dump format ---------------------------------------------------------------------------

FIELD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60).map(
    lambda s: _LINE_BREAK.sub(" ", s))
WALL_TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)
                          ).map(lambda d: d.replace(second=0, microsecond=0))


@given(FIELD, FIELD, WALL_TIMES, st.lists(FIELD, max_size=5))
def test_any_dump_renders_to_text_that_parses_back_to_it(title, author, when, paragraphs):
    dump = Dump(title=title, author=author, published=when, paragraphs=tuple(paragraphs))
    text = render_dump(dump)
    assert parse_dump(text) == dump
    assert render_dump(parse_dump(text)) == text
    assert len(text.splitlines()) == 2 + len(paragraphs)  # no line break inside a field


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_arbitrary_text_is_a_dump_that_renders_back_exactly_or_a_format_error(text):
    try:
        dump = parse_dump(text)
    except DumpFormatError:
        return
    assert render_dump(dump) == text


@given(FIELD, FIELD, WALL_TIMES, st.lists(FIELD, max_size=3), st.text(max_size=40))
def test_text_around_a_valid_dump_is_an_error_or_renders_back(title, author, when, paras, noise):
    text = render_dump(Dump(title, author, when, tuple(paras))) + noise
    try:
        dump = parse_dump(text)
    except DumpFormatError:
        return
    assert render_dump(dump) == text


# --- the address guard -------------------------------------------------------------------------

SPECIAL = [ipaddress.ip_network(n) for n, _, _ in SPECIAL_PURPOSE_V4 + SPECIAL_PURPOSE_V6]
TRANSLATION = [ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16")]


@given(st.ip_addresses())
def test_an_allowed_address_is_global_unicast_and_in_no_special_purpose_block(ip):
    refusal = address_refusal(ip)
    assert refusal is None or isinstance(refusal, str)
    if refusal is None and not any(ip in t for t in TRANSLATION):
        assert ip.is_global and not ip.is_multicast
        assert not any(ip.version == n.version and ip in n for n in SPECIAL)


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_and_its_ipv6_forms_get_one_verdict(ip):
    verdict = address_refusal(ip)
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ip))
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80) | 1)
    assert address_refusal(mapped) == address_refusal(nat64) == address_refusal(sixtofour) == verdict


SOCKET_ADDRESSES = st.one_of(
    st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    st.tuples(st.text(max_size=30), st.integers(-5, 70000)),
    st.text(max_size=30), st.binary(max_size=30), st.none(), st.integers(),
    st.tuples(st.integers(), st.integers()))


@given(SOCKET_ADDRESSES)
def test_the_socket_guard_judges_any_socket_address_without_raising(address):
    if isinstance(address, tuple) and isinstance(address[0], str):
        try:
            ipaddress.ip_address(address[0])
        except ValueError:
            assume(False)  # a name would be resolved: no DNS from property tests
    refusal = SocketGuard(()).refusal(address)
    assert refusal is None or isinstance(refusal, str)
    if not (isinstance(address, tuple) and isinstance(address[0], str)):
        assert refusal  # unix sockets and other families are refused


URL_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
              st.sampled_from(["http", "https", "HTTP", "ftp", "file", "javascript", ""]),
              st.one_of(st.text(max_size=20), st.ip_addresses().map(
                  lambda ip: f"[{ip}]" if ip.version == 6 else str(ip))),
              st.one_of(st.just(""), st.integers(-10, 200000).map(lambda p: f":{p}"),
                        st.text(max_size=6).map(lambda p: f":{p}")),
              st.text(max_size=30)))


@given(URL_TEXT)
def test_url_validation_never_raises_and_what_it_accepts_is_usable(url):
    problem = url_problem(url)
    if problem is not None:
        assert isinstance(problem, str)
        return
    parts = urlsplit(url)
    assert parts.scheme.lower() in ("http", "https") and parts.hostname
    assert parts.port is None or 1 <= parts.port <= 65535
    httpx.URL(url)  # the fetcher can build a request for it


# --- the redaction -----------------------------------------------------------------------------

SECRETISH = st.text(string.ascii_letters + string.digits + "-._~!$'()*+,;:%", min_size=6,
                    max_size=24).filter(lambda s: "%" not in s[-2:])
PARAM_NAMES = st.sampled_from(["token", "key", "apikey", "api_key", "secret", "password",
                               "passwd", "sig", "signature", "auth", "access_token",
                               "X-Amz-Signature", "client_secret", "code", "session_id"])


@given(st.sampled_from(["http", "https", "json", "mailto", "ntfys"]), st.text(
    string.ascii_lowercase, min_size=1, max_size=10), SECRETISH, SECRETISH,
    PARAM_NAMES, SECRETISH, st.text(string.ascii_letters + " :=/", max_size=30))
def test_userinfo_and_secret_parameters_never_survive_redaction(
        scheme, host, user, password, name, value, around):
    url = f"{scheme}://{user}:{password}@{host}.example/path?page=2&{name}={value}&x=1"
    text = f"{around} {url} {around}"
    out = redact(text)
    assume(password not in text.replace(password, "", 1) and value not in text.replace(value, "", 1))
    assert password not in out and value not in out
    assert f"{host}.example/path" in out and "page=2" in out and f"{name}={MASK}" in out


@given(st.text(max_size=200))
def test_redaction_is_idempotent_and_never_raises(text):
    once = redact(text)
    assert redact(once) == once


@given(st.text(string.ascii_lowercase + "_-", min_size=1, max_size=15), st.text(
    string.ascii_letters + string.digits, min_size=1, max_size=15))
def test_a_parameter_is_masked_exactly_when_its_name_looks_secret(name, value):
    out = redact(f"https://h.example/p?{name}={value}")
    assert (out.endswith(f"{name}={MASK}")) == bool(SECRET_NAME.search(name))


# --- headers from peers ------------------------------------------------------------------------

@given(st.one_of(st.none(), st.text(max_size=80)))
def test_header_values_are_parsed_with_bounds_or_absent(value):
    seconds = parse_retry_after(value)
    assert seconds is None or 0 <= seconds <= MAX_RETRY_AFTER
    number = header_int(value)
    assert number is None or (number >= 0 and value is not None and value.strip().isascii())
    kept = header_text(value)
    assert kept is None or kept == value
