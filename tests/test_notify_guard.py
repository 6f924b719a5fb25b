"""Every way out of Apprise goes through the address guard: each scheme Apprise ships, aimed at
a refused address, makes no connection; HTTP redirects to refused addresses are not followed.

Every host name resolves to 127.0.0.1 here (socket.getaddrinfo is replaced), loopback is not
allowed, a TCP and a UDP listener on 127.0.0.1 record what reaches them, and a second audit
hook records (and stops) any connection the guard let through, so nothing leaves the machine
even if the guard failed.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.apprise_urls import schemes, urls
from worker import fetch
from worker.deliver import LOCAL_SCHEMES, notify_scheme_problem, send_notification
from worker.errors import PermanentDeliveryError
from worker.fetch import guarded_sockets, install_socket_guard, parse_networks

# A plugin whose send the guard stops may leave its socket to the garbage collector (rsyslog's
# UDP socket): a ResourceWarning of Apprise's, not a connection.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]
_real_getaddrinfo = socket.getaddrinfo
_leaks: list[Any] = []
_passable: set[tuple[str, int]] = set()   # the one server a test allows on purpose


_recording = threading.Event()           # only during this module's tests (the hook stays)


def _record_leaks(event: str, args: tuple[Any, ...]) -> None:
    """Runs after the guard's hook: sees only what the guard allowed, inside a guarded block."""
    if not _recording.is_set():
        return
    if event in ("socket.connect", "socket.sendto") and fetch._socket_guard.get() is not None:
        if tuple(args[1][:2]) in _passable:
            return
        _leaks.append(args[1])
        raise PermissionError("test: a connection passed the address guard")


install_socket_guard()        # first: the guard; then the recorder behind it
sys.addaudithook(_record_leaks)


def _everything_is_loopback(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        host = "127.0.0.1"
    return _real_getaddrinfo(host, port, *args, **kwargs)


class Listener:
    """TCP and UDP on 127.0.0.x, recording every connection and datagram."""

    def __init__(self, address: str = "127.0.0.1"):
        self.tcp = socket.create_server((address, 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((address, self.port))
        self.udp.settimeout(0.05)
        self.tcp.settimeout(0.05)
        self.seen: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for sock in (self.tcp, self.udp):
                try:
                    if sock is self.tcp:
                        conn, peer = sock.accept()
                        conn.close()
                    else:
                        _data, peer = sock.recvfrom(65536)
                except (TimeoutError, OSError):
                    continue
                self.seen.append(peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    monkeypatch.setattr(socket, "getaddrinfo", _everything_is_loopback)
    _leaks.clear()
    server = Listener()
    _recording.set()
    yield server
    _recording.clear()
    server.close()


def test_the_recorder_sees_a_connection_the_guard_allows(listener):
    """The control: with loopback allowed a connect passes the guard and is recorded."""
    with guarded_sockets(parse_networks(["127.0.0.1/32"])), pytest.raises(PermissionError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=1)
    assert _leaks == [("127.0.0.1", listener.port)]


def test_every_apprise_scheme_aimed_at_a_refused_address_connects_nowhere(listener):
    built = urls("127.0.0.1", listener.port, skip=LOCAL_SCHEMES)
    usable = {scheme: url for scheme, url in built.items() if url}
    assert set(built) == set(schemes(LOCAL_SCHEMES))
    assert len(usable) >= 200, sorted(set(built) - set(usable))
    refused, outcomes = [], {}
    for scheme, url in sorted(usable.items()):
        attempt = send_notification(url, "title", "body", allowed=())
        outcomes[scheme] = attempt.error.reason if attempt.error else "delivered"
        if isinstance(attempt.error, PermanentDeliveryError) and "refused address" in attempt.error.reason:
            refused.append(scheme)
    assert _leaks == [] and listener.seen == []
    # (A few plugins report success with nothing to send, jira:// and opsgenie:// without
    # targets: no connection either, which is what this test is about.)
    # The schemes the issue found reaching 127.0.0.1, each stopped with the guard's reason.
    named = {"kodi", "xbmc", "bark", "ncloud", "nctalk", "mailto", "signal", "hassio", "enigma2",
             "emby", "mastodon", "misskey", "synology", "lametric", "parsep", "pushdeer",
             "notica", "smseagle", "rsyslog", "json"}
    assert named <= set(refused), {s: outcomes.get(s) for s in named - set(refused)}
    assert len(refused) >= 0.8 * len(usable), len(refused)  # most really tried to send
    print(f"\n{len(usable)} of {len(built)} network schemes exercised; {len(refused)} tried to "
          f"connect and were refused; the rest failed before any connection")


@pytest.mark.parametrize("scheme", sorted(LOCAL_SCHEMES))
def test_local_only_schemes_are_refused_by_name(scheme):
    problem = notify_scheme_problem(f"{scheme}://")
    assert problem is not None and f"{scheme}://" in problem and "not supported" in problem


def test_an_unknown_scheme_is_refused():
    assert "not a usable Apprise URL" in notify_scheme_problem("nosuchservice://host/x")


@pytest.fixture
def redirector(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Listener]]:
    """An allowed HTTP server on 127.0.0.1 answering 307 to a listener on 127.0.0.2."""
    monkeypatch.setattr(socket, "getaddrinfo", _everything_is_loopback)
    _leaks.clear()
    target = Listener("127.0.0.2")
    target.redirected = []  # type: ignore[attr-defined]

    class Handler(BaseHTTPRequestHandler):
        def _redirect(self) -> None:
            target.redirected.append(self.path)  # type: ignore[attr-defined]
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.2:{target.port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = _redirect

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _passable.add(("127.0.0.1", server.server_address[1]))
    _recording.set()
    yield server.server_address[1], target
    _recording.clear()
    _passable.clear()
    server.shutdown()
    server.server_close()
    target.close()


HTTP_SCHEMES = ("json", "xml", "form", "apprise", "ntfy", "gotify", "mmost", "rocket",
                "matrix", "kodi", "emby", "hassio", "enigma2", "synology", "notica",
                "pushdeer", "smseagle", "signal", "nctalk", "ncloud", "lametric", "bark",
                "misskey", "mastodon", "parsep")


@pytest.mark.parametrize("follow", ["", "redirect=yes"])
def test_http_schemes_never_follow_a_redirect_to_a_refused_address(redirector, follow):
    """307 to 127.0.0.2 (loopback, not allowed; only 127.0.0.1 is): Apprise does not follow
    it, and when a URL asks it to (?redirect=yes) the guard refuses the hop."""
    port, target = redirector
    allowed = parse_networks(["127.0.0.1/32"])
    built = urls("127.0.0.1", port)
    outcomes = {}
    for scheme in HTTP_SCHEMES:
        url = built[scheme]
        assert url, scheme
        if follow:
            url += ("&" if "?" in url else "?") + follow
        attempt = send_notification(url, "title", "body", allowed)
        outcomes[scheme] = attempt.error.reason if attempt.error else "delivered"
    assert target.seen == [] and _leaks == []
    assert "delivered" not in outcomes.values(), outcomes
    assert len(target.redirected) >= 20  # the schemes did reach the allowed server and got a 307
    if follow:
        refused = [s for s, reason in outcomes.items() if "refused address 127.0.0.2" in reason]
        assert "json" in refused, outcomes
