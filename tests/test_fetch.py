"""worker/fetch.py against real HTTP servers on loopback (allowed with 127.0.0.0/8)."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker import USER_AGENT
from worker.errors import PermanentFetchError, TransientFetchError
from worker.fetch import Fetcher, parse_retry_after

LOOPBACK = ["127.0.0.0/8"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections end on their own
    server: LocalServer

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        self.server.record(self)
        route = self.server.routes.get(self.path)
        if route is None:
            self.reply(404, b"not found")
        else:
            route(self)

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


class LocalServer(ThreadingHTTPServer):
    """A loopback server that counts connections and records requests; tests add routes."""

    def __init__(self, host: str = "127.0.0.1"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Handler)
        self.routes: dict[str, Callable[[Handler], None]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.active = self.max_active = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"

    def verify_request(self, request: object, client_address: object) -> bool:
        with self.lock:
            self.connections += 1
        return True

    def record(self, handler: Handler) -> None:
        with self.lock:
            self.requests.append((handler.command, handler.path, dict(handler.headers)))

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on purpose (caps, timeouts) are not errors here


@pytest.fixture
def server() -> Iterator[LocalServer]:
    yield from _running(LocalServer())


def _running(server: LocalServer) -> Iterator[LocalServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()  # joins the handler threads
        thread.join()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(LOOPBACK, connect_timeout=1, total_timeout=3) as fetcher:
        yield fetcher


def trickle(handler: Handler, head: bytes, interval: float = 0.2) -> None:
    """Write ``head`` at once, then a byte every ``interval`` until the client gives up."""
    handler.wfile.write(head)
    while not handler.server.stopping.wait(interval):
        handler.wfile.write(b"x")


# --- Bodies and conditional GET ----------------------------------------------------------------

def test_etag_and_last_modified_make_the_next_get_a_304(server, fetcher):
    def feed(h: Handler) -> None:
        if h.headers.get("If-None-Match") == '"v1"':
            h.reply(304, headers={"ETag": '"v1"'})
        else:
            h.reply(200, b"<rss/>", {"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                                     "Content-Type": "application/rss+xml"})

    server.routes["/feed"] = feed
    first = fetcher.get(server.url("/feed"))
    assert (first.status, first.content, first.not_modified) == (200, b"<rss/>", False)
    assert first.content_type == "application/rss+xml"
    second = fetcher.get(server.url("/feed"), etag=first.etag, last_modified=first.last_modified)
    assert (second.status, second.content, second.not_modified) == (304, b"", True)
    assert (second.etag, second.last_modified) == ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    assert server.requests[1][2]["If-Modified-Since"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert server.connections == 1  # one pooled connection served both


def test_user_agent_names_the_project_and_only_decodable_encodings_are_offered(server, fetcher):
    server.routes["/"] = lambda h: h.reply(200, b"ok")
    fetcher.get(server.url("/"))
    headers = server.requests[0][2]
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_bodies_are_decoded(server, fetcher, encoding, compress):
    body = b"<rss>" + b"news " * 10_000 + b"</rss>"
    server.routes["/"] = lambda h: h.reply(200, compress(body), {"Content-Encoding": encoding})
    assert fetcher.get(server.url("/")).content == body


def test_gzip_bomb_is_stopped_at_the_cap_quickly_and_in_little_memory(server):
    bomb = gzip.compress(bytes(50 * 1024 * 1024), compresslevel=9)  # ~50 KiB on the wire
    server.routes["/bomb"] = lambda h: h.reply(200, bomb, {"Content-Encoding": "gzip"})
    with Fetcher(LOOPBACK, max_bytes=1024 * 1024) as fetcher:
        tracemalloc.start()
        started = time.monotonic()
        with pytest.raises(PermanentFetchError, match="larger than 1 MiB after decompression"):
            fetcher.get(server.url("/bomb"))
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1
    assert peak < 8 * 1024 * 1024


def test_endless_body_is_aborted_once_past_the_cap(server):
    def endless(h: Handler) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")  # no length: the body ends when the server hangs up
        h.end_headers()
        while not h.server.stopping.is_set():
            h.wfile.write(bytes(64 * 1024))

    server.routes["/endless"] = endless
    with (
        Fetcher(LOOPBACK, max_bytes=256 * 1024) as fetcher,
        pytest.raises(PermanentFetchError, match="^response larger than 256 KiB$") as caught,
    ):
        fetcher.get(server.url("/endless"))
    assert caught.value.url == server.url("/endless")


def test_declared_length_over_the_cap_is_refused_before_reading(server):
    server.routes["/big"] = lambda h: trickle(h, b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n")
    with Fetcher(LOOPBACK, max_bytes=1024, total_timeout=5) as fetcher:
        started = time.monotonic()
        with pytest.raises(PermanentFetchError, match="larger than 1 KiB"):
            fetcher.get(server.url("/big"))
    assert time.monotonic() - started < 1


def test_unsupported_content_encoding_is_an_error(server, fetcher):
    server.routes["/"] = lambda h: h.reply(200, b"...", {"Content-Encoding": "br"})
    with pytest.raises(PermanentFetchError, match="unsupported Content-Encoding 'br'"):
        fetcher.get(server.url("/"))


# --- Deadlines ---------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # the body trickles
    b"HTTP/1.1 200 OK\r\nX-Slow: ",  # the headers trickle
])
def test_trickling_server_hits_the_total_timeout(server, head):
    server.routes["/slow"] = lambda h: trickle(h, head)
    with Fetcher(LOOPBACK, total_timeout=1) as fetcher:
        started = time.monotonic()
        with pytest.raises(TransientFetchError, match="no complete response within 1 s"):
            fetcher.get(server.url("/slow"))
    assert 0.9 < time.monotonic() - started < 2


# --- Redirects ---------------------------------------------------------------------------------

def redirect(location: str, status: int = 302) -> Callable[[Handler], None]:
    return lambda h: h.reply(status, b"moved", {"Location": location})


def test_redirect_chain_is_followed_with_relative_locations(server, fetcher):
    server.routes["/old"] = redirect("/moved/here", 301)
    server.routes["/moved/here"] = redirect("there", 307)  # relative to /moved/
    server.routes["/moved/there"] = redirect(server.url("/feed"), 308)
    server.routes["/feed"] = lambda h: h.reply(200, b"<feed/>")
    result = fetcher.get(server.url("/old"))
    assert (result.url, result.content) == (server.url("/feed"), b"<feed/>")


def test_redirect_bodies_are_not_read(server):
    server.routes["/old"] = lambda h: trickle(
        h, b"HTTP/1.1 302 Found\r\nLocation: /feed\r\nContent-Length: 999999999\r\n\r\n"
    )
    server.routes["/feed"] = lambda h: h.reply(200, b"<feed/>")
    with Fetcher(LOOPBACK, max_bytes=1024, total_timeout=2) as fetcher:
        assert fetcher.get(server.url("/old")).content == b"<feed/>"


def chain(server: LocalServer, hops: int) -> str:
    for hop in range(hops):
        server.routes[f"/hop{hop}"] = redirect(f"/hop{hop + 1}")
    server.routes[f"/hop{hops}"] = lambda h: h.reply(200, b"end")
    return server.url("/hop0")


def test_five_redirects_are_followed(server, fetcher):
    assert fetcher.get(chain(server, 5)).content == b"end"


def test_six_redirects_are_too_many(server, fetcher):
    with pytest.raises(PermanentFetchError, match="more than 5 redirects"):
        fetcher.get(chain(server, 6))
    assert len(server.requests) == 6


def test_redirect_loop_is_an_error(server, fetcher):
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect(server.url("/a"))
    with pytest.raises(PermanentFetchError, match="redirect loop"):
        fetcher.get(server.url("/a"))


def test_redirect_to_another_scheme_is_refused(server, fetcher):
    server.routes["/"] = redirect("file:///etc/passwd")
    with pytest.raises(PermanentFetchError, match="only http and https"):
        fetcher.get(server.url("/"))


def test_redirect_to_a_private_address_is_refused(server, fetcher):
    server.routes["/"] = redirect("http://10.255.255.1/latest/meta-data/")
    started = time.monotonic()
    with pytest.raises(PermanentFetchError, match=r"refused address 10\.255\.255\.1 \(private\)"):
        fetcher.get(server.url("/"))
    assert time.monotonic() - started < 0.5  # refused, not a connect attempt timing out


def test_redirect_to_ipv6_loopback_reaches_nothing_when_only_ipv4_loopback_is_allowed(server, fetcher):
    for ipv6 in _running(LocalServer("::1")):
        ipv6.routes["/"] = lambda h: h.reply(200, b"secret")
        server.routes["/"] = redirect(ipv6.url("/"))
        with pytest.raises(PermanentFetchError, match=r"refused address ::1 \(loopback\)"):
            fetcher.get(server.url("/"))
        assert ipv6.connections == 0


# --- The address guard -------------------------------------------------------------------------

def test_loopback_is_refused_and_the_server_sees_no_connection(server):
    server.routes["/"] = lambda h: h.reply(200, b"secret")
    port = server.server_address[1]
    spellings = ["127.0.0.1", "[::ffff:127.0.0.1]", "127.1", "2130706433", "0x7f.1", "localhost"]
    with Fetcher() as fetcher:
        for host in spellings:
            with pytest.raises(PermanentFetchError, match=r"^refused address \S+ \(loopback\)"):
                fetcher.get(f"http://{host}:{port}/")
        with pytest.raises(PermanentFetchError, match="refused address"):
            fetcher.post(server.url("/"), content=b"{}")
    assert server.connections == 0


@pytest.fixture
def resolve_to(monkeypatch):
    """Make ``feeds.example`` resolve to the given addresses (as a rebinding DNS would)."""
    real = socket.getaddrinfo

    def use(*addresses: str) -> None:
        def fake(host, port, *args, **kwargs):
            if host != "feeds.example":
                return real(host, port, *args, **kwargs)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]
        monkeypatch.setattr(socket, "getaddrinfo", fake)

    return use


def test_host_name_is_checked_on_the_address_it_resolves_to(server, resolve_to):
    resolve_to("127.0.0.1")
    url = f"http://feeds.example:{server.server_address[1]}/"
    with Fetcher() as fetcher, pytest.raises(PermanentFetchError, match="of host feeds.example"):
        fetcher.get(url)
    assert server.connections == 0


def test_checked_address_is_connected_to_and_host_header_kept(server, resolve_to):
    resolve_to("127.0.0.1")
    server.routes["/"] = lambda h: h.reply(200, b"ok")
    with Fetcher(LOOPBACK) as fetcher:
        assert fetcher.get(f"http://feeds.example:{server.server_address[1]}/").content == b"ok"
    assert server.requests[0][2]["Host"] == f"feeds.example:{server.server_address[1]}"


def test_one_refused_address_among_several_refuses_the_host(server, resolve_to):
    resolve_to("127.0.0.1", "10.0.0.1")
    with Fetcher(LOOPBACK) as fetcher, pytest.raises(PermanentFetchError, match="10.0.0.1"):
        fetcher.get(f"http://feeds.example:{server.server_address[1]}/")
    assert server.connections == 0


# --- Errors ------------------------------------------------------------------------------------

def test_404_is_permanent_with_its_status(server, fetcher):
    with pytest.raises(PermanentFetchError, match="HTTP 404 Not Found") as caught:
        fetcher.get(server.url("/missing"))
    assert caught.value.status == 404


@pytest.mark.parametrize(("status", "retry_after", "seconds"), [
    (503, "120", 120.0),
    (429, "Wed, 01 Jan 2098 00:00:00 GMT", None),  # a date: checked as "far ahead"
    (408, None, None),
    (500, None, None),
])
def test_5xx_429_and_408_are_transient_with_retry_after(server, fetcher, status, retry_after, seconds):
    headers = {"Retry-After": retry_after} if retry_after else {}
    server.routes["/"] = lambda h: h.reply(status, b"busy", headers)
    with pytest.raises(TransientFetchError, match=f"HTTP {status}") as caught:
        fetcher.get(server.url("/"))
    assert caught.value.status == status
    if retry_after is None:
        assert caught.value.retry_after is None
    elif seconds is not None:
        assert caught.value.retry_after == seconds
    else:
        assert caught.value.retry_after > 365 * 24 * 3600


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 00:02:00 GMT", now) == 120.0
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_unknown_host_is_a_dns_failure(fetcher):
    with pytest.raises(TransientFetchError, match="^DNS lookup failed for host feed.invalid$"):
        fetcher.get("http://feed.invalid/rss")


@pytest.mark.parametrize("url", ["ftp://example.com/feed", "file:///etc/passwd", "feed.xml", "http://"])
def test_only_http_and_https_urls_are_fetched(fetcher, url):
    with pytest.raises(PermanentFetchError, match="only http and https"):
        fetcher.get(url)


def test_closed_port_is_a_transient_connect_failure(fetcher):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TransientFetchError, match="connect failed"):
        fetcher.get(f"http://127.0.0.1:{port}/")


def test_garbage_instead_of_http_is_a_transient_failure(server, fetcher):
    server.routes["/"] = lambda h: h.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(TransientFetchError, match="connection failed"):
        fetcher.get(server.url("/"))


def test_tls_failure_is_a_permanent_tls_error(server, fetcher):
    with pytest.raises(PermanentFetchError, match="^TLS error: "):
        fetcher.get(server.url("/").replace("http://", "https://"))


# --- Concurrency -------------------------------------------------------------------------------

def test_at_most_two_requests_to_one_host_at_a_time(server):
    def slow(h: Handler) -> None:
        with h.server.lock:
            h.server.active += 1
            h.server.max_active = max(h.server.max_active, h.server.active)
        time.sleep(0.3)
        with h.server.lock:
            h.server.active -= 1
        h.reply(200, b"ok")

    server.routes["/slow"] = slow
    results = []
    with Fetcher(LOOPBACK, per_host=2, total_timeout=10) as fetcher:
        threads = [threading.Thread(target=lambda: results.append(fetcher.get(server.url("/slow"))))
                   for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 6
    assert server.max_active == 2


# --- POST for the webhook deliverer ------------------------------------------------------------

def test_post_returns_any_status_without_following_redirects(server, fetcher):
    server.routes["/hook"] = lambda h: h.reply(302, b"elsewhere", {"Location": "/other"})
    result = fetcher.post(server.url("/hook"), content=b'{"a": 1}',
                          headers={"Content-Type": "application/json"})
    assert (result.status, result.headers["location"], result.body) == (302, "/other", b"elsewhere")
    assert [path for _, path, _ in server.requests] == ["/hook"]
    assert server.requests[0][2]["Content-Type"] == "application/json"


def test_post_caps_the_body_and_reads_retry_after(server, fetcher):
    server.routes["/hook"] = lambda h: h.reply(503, bytes(100_000), {"Retry-After": "7"})
    result = fetcher.post(server.url("/hook"), content=b"{}", max_body=1000)
    assert (result.status, len(result.body), result.retry_after) == (503, 1000, 7.0)


def test_post_has_its_own_total_timeout(server, fetcher):
    server.routes["/hook"] = lambda h: trickle(h, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    with pytest.raises(TransientFetchError, match="within 0.5 s"):
        fetcher.post(server.url("/hook"), content=b"{}", total_timeout=0.5)
