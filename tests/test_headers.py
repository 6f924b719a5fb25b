"""Headers from peers are data: a bad Retry-After, Content-Length, Location, ETag is treated
as absent, never as an error of newsmon's (worker/fetch.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.deliveries import hook, make_alert, make_service, posts
from tests.test_fetch import LOOPBACK, LocalServer
from worker.errors import PermanentFetchError, TransientFetchError
from worker.fetch import MAX_RETRY_AFTER, Fetcher, header_int, header_text, parse_retry_after

NOW = datetime(2024, 1, 1, tzinfo=UTC)
GARBAGE = ["²", "٣", "1e3", "-5", "+5", "0x10", "12.5", " ", "soon", "Mon, 99 Foo 2024",
           "Tue, 31 Feb 2024 00:00:00 GMT", "9" * 40, "\x00", "Thu, 01 Jan 99999 00:00:00 GMT"]


@pytest.mark.parametrize("value", GARBAGE)
def test_a_retry_after_that_is_not_a_number_or_a_date_is_absent(value):
    assert parse_retry_after(value, NOW) is None


def test_retry_after_is_bounded():
    assert parse_retry_after("0", NOW) == 0.0
    assert parse_retry_after("999999999999", NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT", NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", NOW) == 0.0  # in the past


@pytest.mark.parametrize(("value", "number"), [("42", 42), (" 7 ", 7), ("²", None), ("-1", None),
                                               ("1,2", None), ("", None), (None, None),
                                               ("9" * 16, None)])
def test_header_integers_are_ascii_digits_or_absent(value, number):
    assert header_int(value) == number


def test_header_text_drops_controls_and_overlong_values():
    assert header_text('"abc"') == '"abc"'
    assert header_text("W/\"a\tb\"") == "W/\"a\tb\""
    assert header_text("a\x01b") is None and header_text("x" * 9000) is None


@pytest.fixture
def server():
    srv = LocalServer()
    import threading

    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fetcher():
    with Fetcher(LOOPBACK, total_timeout=5) as f:
        yield f


def test_a_503_with_a_garbage_retry_after_is_transient_without_one(server, fetcher):
    server.routes["/"] = lambda h: h.reply(503, b"busy", {"Retry-After": "²"})
    with pytest.raises(TransientFetchError) as caught:
        fetcher.get(server.url("/"))
    assert caught.value.retry_after is None


def test_a_garbage_content_length_is_absent_and_the_body_still_capped(server):
    def reply(h):
        h.send_response(200)
        h.send_header("Content-Length", "²")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"<rss></rss>")
    server.routes["/"] = reply
    with Fetcher(LOOPBACK, total_timeout=5) as f:
        try:
            result = f.get(server.url("/"))
        except (TransientFetchError, PermanentFetchError) as exc:  # h11 may refuse the framing
            assert "²" not in exc.reason or "connection" in exc.reason
        else:
            assert result.content in (b"", b"<rss></rss>")


@pytest.mark.parametrize("location", ["http://[::1", "http://a b.example/", "\x7f", "//:99999/x",
                                      "http://" + "a" * 9000])
def test_a_redirect_with_an_unusable_location_is_a_permanent_failure(server, fetcher, location):
    server.routes["/"] = lambda h: h.reply(302, b"", {"Location": location})
    with pytest.raises(PermanentFetchError, match="redirect|invalid URL|http and https"):
        fetcher.get(server.url("/"))


def test_an_etag_with_control_characters_is_not_kept_or_sent_back(server, fetcher):
    server.routes["/"] = lambda h: h.reply(200, b"<rss/>", {"ETag": '"a\x01b"',
                                                           "Last-Modified": "x" * 9000})
    result = fetcher.get(server.url("/"))
    assert result.etag is None and result.last_modified is None


@pytest.mark.integration
def test_a_2xx_with_retry_after_superscript_two_counts_as_delivered_once(
        tmp_path, redis_url, http_server):
    """The issue's case: 5 alerts to a receiver answering 200 with Retry-After: ²."""
    http_server.routes["/hook"] = (200, {"Retry-After": "²"}, b"ok")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alerts = [make_alert(service.store, "energy", n) for n in range(1, 6)]
    assert service.deliver_until_done(alerts, timeout=10) == {"delivered": 5}
    assert len(posts(http_server, "/hook")) == 5
    for alert_id in alerts:
        [attempt] = service.store.alert(alert_id)["attempts"]
        assert (attempt["status"], attempt["outcome"]) == (200, "delivered")
