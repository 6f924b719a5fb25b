"""Credentials out of every text that leaves the process: log lines (text and JSON), CLI
output, feed status and failure reasons stored in Redis, event payloads, receivers' answers,
Sentry events.

Two kinds of secret are removed:

* **Shapes**, wherever they appear: URL userinfo (``scheme://user:pass@`` becomes
  ``scheme://***@``), the values of query parameters whose names look secret (``token``,
  ``key``, ``apikey``, ``secret``, ``password``, ``sig``, ``auth`` ... see ``SECRET_NAME``),
  ``whsec_`` keys, Standard Webhooks ``v1,`` signatures, ``Bearer``/``Basic`` credentials.
* **Known strings**: what the configuration holds (webhook URLs and their token-like parts,
  signing secrets, notification URLs' tokens), registered with ``remember`` when a process
  loads its configuration, since a token in a path (``/services/T0/B0/XXXX``) has no shape.

``redact`` is idempotent (``redact(redact(x)) == redact(x)``), so several boundaries may apply
it to the same text. See docs/operations.md ("Secrets in output").
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import unquote, urlsplit

MASK = "***"

# A query parameter or form field whose name contains one of these holds a credential.
# "key" covers apikey, api_key, access_key; "pass" password, passwd, passphrase; "sig"
# signature, sig, x-amz-signature; "auth" auth, oauth_token, authorization.
SECRET_NAME = re.compile(
    r"token|key|secret|pass|pwd|sig|auth|credential|session|jwt|cookie|hmac|otp|"
    r"^code$|^sid$|^hash$", re.IGNORECASE)

_NAME = r"[A-Za-z0-9_.\-\[\]]*"
_VALUE_END = r"&#\s\"<>"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://***@host (a userinfo never holds / ? # @ or space)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s@\"<>]+@"), rf"\1{MASK}@"),
    (re.compile(r"whsec_[A-Za-z0-9+/=_\-]+"), f"whsec_{MASK}"),
    (re.compile(r"\bv1,[A-Za-z0-9+/]{20,}={0,2}"), f"v1,{MASK}"),
    (re.compile(r"(?i)\b(Bearer)\s+(?!\*\*\*)[A-Za-z0-9._~+/=\-]+"), rf"\1 {MASK}"),
    # Basic + base64 (with a digit, + / or =, so that "Basic configuration" stays)
    (re.compile(r"(?i)\b(Basic)\s+(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}"), rf"\1 {MASK}"),
)
# Any name=value (a query, a fragment, a form body, a log field): the name decides.
_PARAM = re.compile(rf"(?<![A-Za-z0-9_.\-])({_NAME})=([^{_VALUE_END}]*)")

_known: tuple[str, ...] = ()          # longest first; replaced whole, so readers need no lock
_known_lock = threading.Lock()
_PLAIN_WORD = re.compile(r"[a-z][a-z.\-]{0,18}")  # "hooks", "services", "newsmon": no token
MIN_SECRET = 4                        # shorter strings would mask ordinary words


def _param(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if not value or value == MASK or not SECRET_NAME.search(unquote(name)):
        return match.group(0)
    return f"{name}={MASK}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: the known strings (``remember``) and ``secrets``, longest
    first, then every secret shape (see the module docstring)."""
    if not text:
        return text
    extra = sorted((s for s in secrets if len(s) >= MIN_SECRET), key=len, reverse=True)
    for secret in (*extra, *_known):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _PARAM.sub(_param, text) if "=" in text else text


def redact_url(url: str) -> str:
    """A URL for display: userinfo and secret-looking parameter values masked, the rest kept
    (``https://***@feeds.example/rss?apikey=***&page=2``)."""
    return redact(url)


def _token_like(text: str) -> bool:
    """A path segment or parameter value that may be a token: mixed letters and digits, or
    long and not a plain word ("services", "2024" and "json" are not)."""
    if _PLAIN_WORD.fullmatch(text):
        return False
    mixed = any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
    return len(text) >= 8 or (len(text) >= MIN_SECRET and mixed)


def url_secrets(url: str, host_is_secret: bool = False) -> list[str]:
    """The parts of a configured URL that may be credentials, for ``remember``: the URL itself,
    userinfo, the values of secret-looking parameters, path segments and other values that
    look like tokens, the fragment; with ``host_is_secret`` (Apprise URLs whose "host" is
    often a token) the host."""
    parts = urlsplit(url)
    found = [parts.netloc.rpartition("@")[0], parts.username or "", parts.password or ""]
    if len(url.partition("://")[2]) >= MIN_SECRET:  # not a bare "dbus://"
        found.append(url)
    for name, _, value in (q.partition("=") for q in parts.query.split("&")):
        if SECRET_NAME.search(unquote(name)) or _token_like(unquote(value)):
            found.append(value)
    found += [seg for seg in parts.path.split("/") if _token_like(unquote(seg))]
    if _token_like(parts.fragment):
        found.append(parts.fragment)
    host = parts.netloc.rpartition("@")[2].partition(":")[0]  # as written, not lowered
    if host_is_secret and _token_like(host):
        found.append(host)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= MIN_SECRET}, key=len, reverse=True)


def url_credentials(url: str) -> list[str]:
    """The credentials of a URL whose other parts are not secret (a feed's): userinfo and the
    values of secret-looking parameters."""
    parts = urlsplit(url)
    found = [parts.netloc.rpartition("@")[0], parts.password or ""]
    found += [value for name, _, value in (q.partition("=") for q in parts.query.split("&"))
              if SECRET_NAME.search(unquote(name))]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= MIN_SECRET}, key=len, reverse=True)


def remember(secrets: Iterable[str]) -> None:
    """Mask these strings (a configuration's secrets) in every later ``redact`` of this
    process. Strings shorter than MIN_SECRET characters are ignored."""
    global _known
    fresh = {s for s in secrets if len(s) >= MIN_SECRET}
    with _known_lock:
        if not fresh <= set(_known):
            _known = tuple(sorted(set(_known) | fresh, key=len, reverse=True))


def known() -> tuple[str, ...]:
    """Every string ``remember`` was given, longest first."""
    return _known


class RedactingStream:
    """A text stream whose every write is redacted first (the CLI's stdout and stderr)."""

    def __init__(self, inner: IO[str]):
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def redact_std_streams() -> None:
    """Make sys.stdout and sys.stderr redact what is written to them (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))


class RedactFilter(logging.Filter):
    """Redacts a record's message (for loggers of libraries that log URLs); drops records
    below ``quiet_below``."""

    def __init__(self, quiet_below: int = logging.NOTSET) -> None:
        super().__init__()
        self.quiet_below = quiet_below

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.quiet_below:
            return False
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def url_outline(url: str, host: bool = True) -> str:
    """A configured URL shown without anything that may be a token: ``https://hooks.example/***``
    (``host=False``, for Apprise URLs whose host is often a token: ``tgram://***``)."""
    parts = urlsplit(url)
    shown = (parts.hostname or "") if host else ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if shown and port:
        shown += f":{port}"
    return f"{parts.scheme}://{shown}/{MASK}" if shown else f"{parts.scheme}://{MASK}"
