"""Pipeline stage *fetch*: get a feed's bytes from an untrusted URL, safely.

Safe means: no request reaches a non-public address (checked on the address actually
connected to, on every redirect hop), bodies are capped before and after decompression,
the whole exchange has a deadline, and every failure leaves as a ``FetchError`` with a
reason a user can act on. ``deliver`` reuses the same guard through ``Fetcher.post``, and
``guarded_sockets`` applies it to the sockets other libraries open (Apprise). Headers from
peers are data: a bad value is treated as absent.
Only this module and ``deliver`` import httpx; see docs/fetching.md.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Protocol

import httpcore
import httpx

from worker import USER_AGENT
from worker.config import url_problem
from worker.errors import ConfigError, FetchError, PermanentFetchError, TransientFetchError
from worker.redact import redact_url

ALLOW_NETWORKS_ENV = "NEWSMON_ALLOW_NETWORKS"
MAX_BYTES = 15 * 1024 * 1024
FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, "
    "application/xml;q=0.9, text/xml;q=0.9, application/json;q=0.8, */*;q=0.5"
)
# Only what _Inflate can decode with a cap. No "br": no brotli decoder is installed, and the
# common ones cannot bound the output of a single chunk.
ACCEPT_ENCODING = "gzip, deflate"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_LOCATION = "newsmon_location"  # where a response's Location header is kept (see _set_location_aside)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- The address guard: pure decisions -------------------------------------------------------

# The IANA special-purpose address registries in full, as published at
#   https://www.iana.org/assignments/iana-ipv4-special-registry/ (updated 2025-05)
#   https://www.iana.org/assignments/iana-ipv6-special-registry/ (updated 2025-05)
# Every entry is refused, also those the registry calls globally reachable (anycast
# services, AS112): no feed or webhook lives there. Python 3.11's is_global misses some of
# them (192.88.99.0/24, 3fff::/20, 100.64.0.0/10 where a cloud metadata service answers at
# 100.100.100.200), hence the table. (network, name, source)
SPECIAL_PURPOSE_V4 = (
    ("0.0.0.0/8", "this network", "RFC 791"),
    ("0.0.0.0/32", "this host on this network", "RFC 1122"),
    ("10.0.0.0/8", "private", "RFC 1918"),
    ("100.64.0.0/10", "carrier-grade NAT", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "RFC 1122"),
    ("169.254.0.0/16", "link-local", "RFC 3927"),
    ("172.16.0.0/12", "private", "RFC 1918"),
    ("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    ("192.0.0.0/29", "IPv4 service continuity prefix", "RFC 7335"),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
    ("192.0.0.9/32", "port control protocol anycast", "RFC 7723"),
    ("192.0.0.10/32", "TURN anycast", "RFC 8155"),
    ("192.0.0.170/31", "NAT64/DNS64 discovery", "RFC 8880"),
    ("192.0.2.0/24", "documentation", "RFC 5737"),
    ("192.31.196.0/24", "AS112", "RFC 7535"),
    ("192.52.193.0/24", "AMT", "RFC 7450"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)", "RFC 7526"),
    ("192.168.0.0/16", "private", "RFC 1918"),
    ("192.175.48.0/24", "AS112 direct delegation", "RFC 7534"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation", "RFC 5737"),
    ("203.0.113.0/24", "documentation", "RFC 5737"),
    ("240.0.0.0/4", "reserved", "RFC 1112"),
    ("255.255.255.255/32", "limited broadcast", "RFC 919"),
)
SPECIAL_PURPOSE_V6 = (
    ("::1/128", "loopback", "RFC 4291"),
    ("::/128", "unspecified", "RFC 4291"),
    ("::ffff:0:0/96", "IPv4-mapped", "RFC 4291"),
    ("64:ff9b::/96", "IPv4-IPv6 translation", "RFC 6052"),
    ("64:ff9b:1::/48", "IPv4-IPv6 translation, local use", "RFC 8215"),
    ("100::/64", "discard-only", "RFC 6666"),
    ("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
    ("2001::/23", "IETF protocol assignments", "RFC 2928"),
    ("2001::/32", "Teredo", "RFC 4380"),
    ("2001:1::1/128", "port control protocol anycast", "RFC 7723"),
    ("2001:1::2/128", "TURN anycast", "RFC 8155"),
    ("2001:1::3/128", "DNS-SD service registration anycast", "RFC 9665"),
    ("2001:2::/48", "benchmarking", "RFC 5180"),
    ("2001:3::/32", "AMT", "RFC 7450"),
    ("2001:4:112::/48", "AS112", "RFC 7535"),
    ("2001:10::/28", "ORCHID (deprecated)", "RFC 4843"),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343"),
    ("2001:30::/28", "drone remote ID", "RFC 9374"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2002::/16", "6to4", "RFC 3056"),
    ("2620:4f:8000::/48", "AS112 direct delegation", "RFC 7534"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "SRv6 SIDs", "RFC 9602"),
    ("fc00::/7", "unique-local", "RFC 4193"),
    ("fe80::/10", "link-local", "RFC 4291"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _special_table() -> list[tuple[IPNetwork, str]]:
    """Both registries, most specific first (192.0.0.9 is PCP anycast before IETF protocol)."""
    rows = [(ipaddress.ip_network(net), name) for net, name, _source in
            (*SPECIAL_PURPOSE_V4, *SPECIAL_PURPOSE_V6)]
    return sorted(rows, key=lambda row: -row[0].prefixlen)


_SPECIAL = _special_table()

# After the registries: what is outside them and still no unicast destination on the Internet.
_OTHER_REFUSALS = (
    ("multicast", lambda ip: ip.is_multicast),
    ("site-local (deprecated)", lambda ip: ip.version == 6 and ip.is_site_local),
    ("reserved", lambda ip: ip.is_reserved),
    ("not globally routable", lambda ip: not ip.is_global),
)


def special_purpose(address: IPAddress) -> str | None:
    """The name of the special-purpose registry entry holding ``address``, if any."""
    for network, name in _SPECIAL:
        if address.version == network.version and address in network:
            return name
    return None


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address, else itself."""
    if address.version == 4:
        return address
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address.sixtofour or address


def address_refusal(address: str | IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why no request may go to ``address`` ("loopback", "private", ...), or None if it may.

    ``allowed`` networks (NEWSMON_ALLOW_NETWORKS) override every refusal.
    """
    ip = ipaddress.ip_address(address)
    inner = embedded_ipv4(ip)
    if any(candidate in network for candidate in (ip, inner) for network in allowed):
        return None
    # An address of a translation prefix (IPv4-mapped, NAT64, 6to4) is judged by the IPv4
    # address inside, not by the prefix's own registry entry.
    refusal = special_purpose(inner)
    return refusal or next((name for name, applies in _OTHER_REFUSALS if applies(inner)), None)


def parse_networks(cidrs: Iterable[str], source: str = "allow_networks") -> list[IPNetwork]:
    """CIDR strings to networks; a ConfigError lists every one that is not a network."""
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            problems.append(f"{source}: {cidr!r} is not a CIDR network ({exc})")
    if problems:
        raise ConfigError(problems)
    return networks


def allow_networks_from_env(env: Mapping[str, str] = os.environ) -> list[str]:
    """The comma-separated CIDRs in NEWSMON_ALLOW_NETWORKS, validated (ConfigError if bad)."""
    cidrs = [part.strip() for part in env.get(ALLOW_NETWORKS_ENV, "").split(",") if part.strip()]
    parse_networks(cidrs, source=ALLOW_NETWORKS_ENV)
    return cidrs


# --- Headers from peers: data, never trusted -----------------------------------------------------

MAX_RETRY_AFTER = 366 * 86400.0   # callers cap further (a day); this keeps the numbers sane
MAX_HEADER_VALUE = 8192           # a Location, ETag or Last-Modified longer than this is dropped
_DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII only: "²".isdigit() is True, int("²") fails


def header_int(value: str | None) -> int | None:
    """A non-negative decimal header value (Content-Length), or None when absent or bad."""
    value = (value or "").strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def header_text(value: str | None) -> str | None:
    """A header value to keep and send back (ETag, Last-Modified), or None when absent, too
    long or holding control characters."""
    if not value or len(value) > MAX_HEADER_VALUE:
        return None
    controls = any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)
    return None if controls else value


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date, at most
    MAX_RETRY_AFTER), or None when absent or garbage ("²", "-5", "soon", an impossible date)."""
    value = (value or "").strip()
    if not value or len(value) > 64:
        return None
    if value[0] in "0123456789":
        seconds = float(value) if _DIGITS.fullmatch(value) else None
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


# --- The address guard: where connections are made -------------------------------------------

# The monotonic deadline of the request in progress on this thread (httpcore's sync I/O runs
# in the calling thread), so every socket wait can be clamped to it.
_request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "newsmon_fetch_deadline", default=None
)


def _clamped(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = _request_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every wait ends by the request's deadline.

    httpx's read timeout restarts on each byte, so a server trickling one byte a second (in
    the headers too) would otherwise never time out.
    """

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamped(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves a host once, refuses it if any address is not public, connects to a checked IP.

    Connecting to the address that was checked (not to the name again) defeats DNS
    rebinding; httpcore still sends the host name in Host and TLS SNI.
    """

    def __init__(self, allowed: Sequence[IPNetwork] = ()):
        self._allowed = list(allowed)
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._checked_addresses(host, port)
        for attempt, address in enumerate(addresses, start=1):
            try:
                timeout = _clamped(timeout, httpcore.ConnectTimeout)
                stream = self._sockets.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
                return _DeadlineStream(stream)
            except httpcore.ConnectError:
                if attempt == len(addresses):
                    raise
        raise AssertionError("getaddrinfo returned no address")  # pragma: no cover

    def _checked_addresses(self, host: str, port: int) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise TransientFetchError(f"DNS lookup failed for host {host}") from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            refusal = address_refusal(address, self._allowed)
            if refusal:
                of_host = "" if address == host else f" of host {host}"
                raise PermanentFetchError(
                    f"refused address {address} ({refusal}){of_host}; "
                    f"{ALLOW_NETWORKS_ENV} can allow its network"
                )
        return addresses


def _guarded_transport(allowed: Sequence[IPNetwork], limits: httpx.Limits) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through ``_GuardedBackend``."""
    transport = httpx.HTTPTransport(trust_env=False, limits=limits)
    # httpx 0.28 takes no network backend (encode/httpx#3180), so replace its (still unused)
    # connection pool with one that has ours.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_GuardedBackend(allowed),
    )
    return transport


# --- The address guard for connections other libraries make ------------------------------------

class RefusedConnection(PermissionError):
    """A socket connection the address guard stopped inside a library (an OSError, which
    every network library already handles as a failed connection)."""


@dataclass
class SocketGuard:
    """The guard of one ``guarded_sockets`` block: what it allows and what it refused."""

    allowed: tuple[IPNetwork, ...]
    refusals: list[str] = field(default_factory=list)

    def refusal(self, address: object) -> str | None:
        """Why a socket may not connect or send to ``address`` (a socket address), or None."""
        if not isinstance(address, tuple) or len(address) < 2 or not isinstance(address[0], str):
            return f"refused a non-internet socket address {address!r}"
        host, port = address[0], address[1]
        try:
            candidates = [str(ipaddress.ip_address(host))]
        except ValueError:  # a name given to connect() itself: resolve it as connect() will
            try:
                candidates = [i[4][0] for i in socket.getaddrinfo(host, port)]
            except (OSError, UnicodeError):
                return f"DNS lookup failed for host {host}"
        for candidate in dict.fromkeys(candidates):
            refused = address_refusal(candidate, self.allowed)
            if refused:
                of_host = "" if candidate == host else f" of host {host}"
                return (f"refused address {candidate} ({refused}){of_host}; "
                        f"{ALLOW_NETWORKS_ENV} can allow its network")
        return None


_socket_guard: contextvars.ContextVar[SocketGuard | None] = contextvars.ContextVar(
    "newsmon_socket_guard", default=None
)
# The audit events of every Python socket that reaches out (TCP connect, UDP send).
_SOCKET_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
_audit_lock = threading.Lock()
_audit_installed = False


def _audit_socket(event: str, args: tuple[object, ...]) -> None:
    if event not in _SOCKET_EVENTS:
        return
    guard = _socket_guard.get()
    if guard is None or (event == "socket.sendmsg" and args[1] is None):  # connected already
        return
    refused = guard.refusal(args[1])
    if refused:
        guard.refusals.append(refused)
        raise RefusedConnection(refused)


def install_socket_guard() -> None:
    """Add the audit hook that checks sockets opened inside ``guarded_sockets`` (once per
    process; an audit hook cannot be removed, and outside such a block it does nothing)."""
    global _audit_installed
    with _audit_lock:
        if not _audit_installed:
            sys.addaudithook(_audit_socket)
            _audit_installed = True


@contextmanager
def guarded_sockets(allowed: Sequence[IPNetwork] = ()) -> Iterator[SocketGuard]:
    """Within this block (and the threads that copy its context, as Apprise's do), every
    Python socket connect and UDP send goes through the address guard first: a refused
    address raises RefusedConnection inside the library that tried, and is listed in the
    returned guard's ``refusals``. The check is on the address actually connected to, so
    DNS rebinding and redirects to refused addresses are stopped too."""
    install_socket_guard()
    guard = SocketGuard(tuple(allowed))
    token = _socket_guard.set(guard)
    try:
        yield guard
    finally:
        _socket_guard.reset(token)


# --- Bodies ------------------------------------------------------------------------------------

def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MiB"
    return f"{n / 1024:g} KiB" if n >= 1024 else f"{n} bytes"


class _Identity:
    def decode(self, chunk: bytes, max_length: int) -> bytes:
        return chunk


class _Inflate:
    """gzip or zlib-wrapped deflate, never producing more than ``max_length`` bytes a call."""

    def __init__(self, encoding: str):
        self._encoding = encoding
        self._zlib = zlib.decompressobj(32 + zlib.MAX_WBITS)  # 32+: accept gzip or zlib header

    def decode(self, chunk: bytes, max_length: int) -> bytes:
        try:
            # Output short of max_length means the whole chunk was consumed, so a caller that
            # stops once max_length is reached loses nothing it would have kept.
            return self._zlib.decompress(chunk, max_length)
        except zlib.error as exc:
            raise PermanentFetchError(f"corrupt {self._encoding} response body") from exc


def _decoder(content_encoding: str | None) -> _Identity | _Inflate:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflate(encoding)
    if encoding == "identity":
        return _Identity()
    raise PermanentFetchError(f"unsupported Content-Encoding {content_encoding!r}")


def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body; abort as soon as the raw or the decoded size passes ``max_bytes``."""
    too_large = f"response larger than {_size(max_bytes)}"
    declared = header_int(response.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise PermanentFetchError(too_large)
    decoder = _decoder(response.headers.get("content-encoding"))
    body = bytearray()
    raw_size = 0
    for chunk in response.iter_raw():
        raw_size += len(chunk)
        if raw_size > max_bytes:
            raise PermanentFetchError(too_large)
        body += decoder.decode(chunk, max_bytes - len(body) + 1)
        if len(body) > max_bytes:
            raise PermanentFetchError(f"{too_large} after decompression")
    return bytes(body)


def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


# --- Statuses and errors -----------------------------------------------------------------------

def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300 or status == 304:
        return
    reason = f"HTTP {status} {response.reason_phrase}".strip()
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TransientFetchError(reason, status=status, retry_after=retry_after)
    raise PermanentFetchError(reason, status=status)


def _tls_problem(exc: BaseException) -> str | None:
    """What the ssl module said, if ``exc`` came from a TLS handshake (httpx wraps it twice)."""
    cause: BaseException | None = exc
    for _depth in range(5):
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or str(cause)
        if isinstance(cause, ssl.SSLError):  # reason is like "WRONG_VERSION_NUMBER"
            return cause.reason.replace("_", " ").lower() if cause.reason else str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


@contextmanager
def _as_fetch_errors(url: str, connect_timeout: float, total_timeout: float) -> Iterator[None]:
    """Turn whatever the exchange raises into a FetchError that names ``url``."""
    try:
        yield
    except FetchError as exc:
        if exc.url:
            raise
        raise type(exc)(exc.reason, url, exc.status, exc.retry_after) from exc
    except httpx.ConnectTimeout as exc:
        raise TransientFetchError(f"connect timed out after {connect_timeout:g} s", url) from exc
    except httpx.TimeoutException as exc:
        raise TransientFetchError(f"no complete response within {total_timeout:g} s", url) from exc
    except httpx.ConnectError as exc:
        tls = _tls_problem(exc)
        if tls:  # a certificate problem will not fix itself within a retry's wait
            raise PermanentFetchError(f"TLS error: {tls}", url) from exc
        raise TransientFetchError(f"connect failed: {exc}", url) from exc
    except httpx.HTTPError as exc:  # dropped connections, garbage instead of HTTP
        raise TransientFetchError(f"connection failed: {exc or type(exc).__name__}", url) from exc
    except (httpx.InvalidURL, UnicodeError) as exc:  # UnicodeError: a bad IDNA host name
        raise PermanentFetchError(f"invalid URL: {exc}", url) from exc


def _checked_url(url: str) -> httpx.URL:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise PermanentFetchError("only http and https URLs can be fetched", url)
    return parsed


# --- The fetcher -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FetchResult:
    """A successful GET (after redirects). ``not_modified``: a 304, with empty ``content``."""

    url: str
    status: int
    content: bytes
    content_type: str | None
    etag: str | None
    last_modified: str | None
    not_modified: bool
    elapsed: float


@dataclass(frozen=True)
class PostResult:
    """What a POST got back, whatever the status: the caller decides what it means."""

    status: int
    headers: dict[str, str]
    body: bytes
    retry_after: float | None
    elapsed: float


class Fetcher:
    """One per process, shared by every thread: a pooled httpx client behind the address guard.

    ``allow_networks`` lists CIDRs that may be reached although not public (tests, an
    internal feed server); see ``allow_networks_from_env``.
    """

    def __init__(
        self,
        allow_networks: Sequence[str] = (),
        *,
        user_agent: str = USER_AGENT,
        max_bytes: int = MAX_BYTES,
        connect_timeout: float = 10.0,
        total_timeout: float = 30.0,
        max_redirects: int = 5,
        per_host: int = 2,
        leases: HostLeaseTable | None = None,
    ):
        self.max_bytes = max_bytes
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_redirects = max_redirects
        self.per_host = per_host
        # Article pages may hold all but one of a host's slots: full text never starves polls.
        self.page_budget = max(1, per_host - 1)
        # Shared by every worker when given (the state store's HostLeases), else this process's.
        self.leases = leases or LocalHostLeases()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._client = httpx.Client(
            transport=_guarded_transport(parse_networks(allow_networks), limits),
            headers={"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            # Feeds must not see each other's cookies through the shared client.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            follow_redirects=False,  # followed by hand in get(), with the guard on each hop
            event_hooks={"response": [_set_location_aside]},
            trust_env=False,  # no proxies or certificates from the environment
        )

    def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str = FEED_ACCEPT,
        kind: str = "feed",
    ) -> FetchResult:
        """GET ``url``, following up to ``max_redirects`` redirects; raise FetchError on failure.

        With ``etag``/``last_modified`` the request is conditional, and a 304 comes back as
        ``not_modified=True`` with empty content. ``kind`` "page" (an article page) uses the
        host's page budget, so full text never takes every slot of a host.
        """
        started = time.monotonic()
        headers = {"Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        hop_url, seen = url, {url}
        with self._deadline_in(self.total_timeout):
            for _hop in range(self.max_redirects + 1):
                with self._exchange(
                    "GET", hop_url, headers, self.connect_timeout, self.total_timeout, kind=kind
                ) as response:
                    target = _redirect_target(response)
                    if target is None:
                        _raise_for_status(response)
                        return self._result(response, etag, last_modified, started)
                if target in seen:
                    raise PermanentFetchError(f"redirect loop at {redact_url(target)}", url)
                seen.add(target)
                hop_url = target
        raise PermanentFetchError(f"more than {self.max_redirects} redirects", url)

    def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        total_timeout: float = 15.0,
        max_body: int = 64 * 1024,
    ) -> PostResult:
        """POST ``content`` once through the same address guard, following no redirect.

        Any HTTP status is returned, with at most ``max_body`` bytes of the body; only a
        failure to get a response raises (a FetchError, as for ``get``).
        """
        started = time.monotonic()
        headers = {"Accept-Encoding": "identity", **(headers or {})}
        with (
            self._deadline_in(total_timeout),
            self._exchange("POST", url, headers, connect_timeout, total_timeout, content)
            as response,
        ):
            body = _read_prefix(response, max_body)
            return PostResult(
                status=response.status_code,
                headers={**response.headers, **_location_of(response)},
                body=body,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                elapsed=time.monotonic() - started,
            )

    def close(self) -> None:
        """Close every pooled connection."""
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        connect_timeout: float,
        total_timeout: float,
        content: bytes | None = None,
        kind: str = "feed",
    ) -> Iterator[httpx.Response]:
        """One request in a per-host slot, its response streamed, every error a FetchError."""
        timeout = httpx.Timeout(total_timeout, connect=connect_timeout)
        with _as_fetch_errors(url, connect_timeout, total_timeout):
            parsed = _checked_url(url)
            with self._host_slot(parsed.raw_host.decode("ascii"), kind):
                request = self._client.build_request(
                    method, parsed, headers=headers, content=content, timeout=timeout
                )
                response = self._client.send(request, stream=True)
                try:
                    yield response
                finally:
                    response.close()

    def _result(self, response: httpx.Response, etag: str | None,
                last_modified: str | None, started: float) -> FetchResult:
        not_modified = response.status_code == 304
        content = _read_capped(response, self.max_bytes)  # empty for a 304; read to reuse the connection
        return FetchResult(
            url=str(response.url),
            status=response.status_code,
            content=content,
            content_type=response.headers.get("content-type"),
            etag=header_text(response.headers.get("etag")) or (etag if not_modified else None),
            last_modified=header_text(response.headers.get("last-modified"))
            or (last_modified if not_modified else None),
            not_modified=not_modified,
            elapsed=time.monotonic() - started,
        )

    @contextmanager
    def _deadline_in(self, seconds: float) -> Iterator[None]:
        token = _request_deadline.set(time.monotonic() + seconds)
        try:
            yield
        finally:
            _request_deadline.reset(token)

    @contextmanager
    def _host_slot(self, host: str, kind: str) -> Iterator[None]:
        """At most ``per_host`` requests to one host at a time (pages: ``page_budget`` of them),
        from every thread, and every worker when the leases are shared; waits until the
        request's deadline. A lease lasts until that deadline, so a dead holder frees it."""
        deadline = _request_deadline.get() or time.monotonic() + self.total_timeout
        budget = self.page_budget if kind == "page" else 0
        token = uuid.uuid4().hex
        pause = 0.01
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransientFetchError(f"timed out waiting for a free connection to {host}")
            if self.leases.acquire(host, kind, token, left + 1.0, self.per_host, budget):
                break
            time.sleep(min(pause * random.uniform(0.5, 1.5), left))
            pause = min(pause * 2, 0.25)
        try:
            yield
        finally:
            self.leases.release(host, kind, token)


class HostLeaseTable(Protocol):
    """Connection leases per host (``store.HostLeases`` shares them between workers)."""

    def acquire(self, host: str, kind: str, token: str, seconds: float, total: int,
                budget: int = 0) -> bool: ...

    def release(self, host: str, kind: str, token: str) -> None: ...


class LocalHostLeases:
    """The leases of one process, with the semantics of ``store.HostLeases``. A host is in the
    table only while a lease on it is live, so the table never outgrows the requests in flight."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, host: str, kind: str, token: str, seconds: float, total: int,
                budget: int = 0) -> bool:
        now = time.monotonic()
        with self._lock:
            held = {m: end for m, end in self._held.get(host, {}).items() if end > now}
            mine = sum(1 for m in held if m.startswith(kind + ":"))
            granted = len(held) < total and not (budget and mine >= budget)
            if granted:
                held[f"{kind}:{token}"] = now + seconds
            if held:
                self._held[host] = held
            else:
                self._held.pop(host, None)
            return granted

    def release(self, host: str, kind: str, token: str) -> None:
        with self._lock:
            held = self._held.get(host, {})
            held.pop(f"{kind}:{token}", None)
            if not held:
                self._held.pop(host, None)

    def hosts(self) -> int:
        """How many hosts the table holds now."""
        with self._lock:
            return len(self._held)


def _set_location_aside(response: httpx.Response) -> None:
    """Move Location out of the headers into ``extensions``: httpx parses it to build the next
    request even when it follows no redirect, and a garbage Location would then fail the
    whole exchange as a protocol error. Here it is data, judged by ``_redirect_target``."""
    location = response.headers.get("location")
    if location is not None:
        del response.headers["location"]
        response.extensions = {**response.extensions, _LOCATION: location}


def _location_of(response: httpx.Response) -> dict[str, str]:
    location = response.extensions.get(_LOCATION)
    return {"location": location} if isinstance(location, str) else {}


def _redirect_target(response: httpx.Response) -> str | None:
    """The absolute URL a redirect points to (its body is never read), or None."""
    if response.status_code not in _REDIRECT_STATUSES:
        return None
    location = header_text(response.extensions.get(_LOCATION))
    try:
        target = str(response.url.join(location.strip())) if location else None
    except (httpx.InvalidURL, UnicodeError, ValueError):
        target = None  # garbage is no Location (another scheme is refused by _checked_url)
    if target is None or (target.startswith(("http:", "https:")) and url_problem(target)):
        raise PermanentFetchError(f"HTTP {response.status_code} redirect without a usable Location")
    return target
