"""Pipeline stage *deliver*: alert records to webhooks (Standard Webhooks) and to notification
URLs (Apprise), from the durable outbox in Redis.

The decisions come first as plain functions with time passed in: the payload, the signature,
the retry schedule (``next_attempt``). Then the edges: one signed POST through fetch's address
guard, one Apprise call. ``deliver_claim`` reads top-down as one attempt: begin it in the store,
find its destination in the configuration, send, decide, record. See docs/webhooks.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from types import ModuleType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx

from worker import USER_AGENT, metrics
from worker.config import Config, WatchlistConfig, WebhookConfig
from worker.errors import (
    DeliveryError,
    FetchError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransientFetchError,
)
from worker.fetch import Fetcher, IPNetwork, guarded_sockets
from worker.redact import RedactFilter, redact, remember, url_credentials, url_secrets
from worker.schedule import HANDOUT_LEASE
from worker.store import DeliveryClaim, DeliveryStart, Store

log = logging.getLogger("newsmon.deliver")

# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 28 hours.
DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
JITTER = 0.2                 # each wait is the schedule's +/- 20%, so retries do not march in step
RETRY_AFTER_CAP = 86400.0    # a receiver's Retry-After is honoured up to one day
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 15.0       # the whole exchange, response body included
RUN_LEASE = 30.0             # longer than a request: an attempt that never reports is due again
QUEUE_LEASE = 300.0          # a claimed member waiting in the deliver queue is handed out again
DEST_SLOTS = 4               # attempts in flight to one destination at once, over all workers
BUSY_WAIT = 0.01             # the least wait before a destination with no free slot is retried:
BUSY_SPIN = 0.05             # as long as the attempts in flight are this young, wait in-thread
BUSY_SPINS = 10              # ... this many times, before giving the thread back
MAX_LOST = 3                 # attempts that began and never reported before a member is dead
RESPONSE_PREFIX = 200        # characters of a receiver's answer kept in the attempt log


# --- Destinations ------------------------------------------------------------------------------

def destinations(watchlist: WatchlistConfig | None) -> list[str]:
    """Where a watchlist's alerts go: ``webhook:{name}`` and ``notify:{scheme}:{digest}`` per
    Apprise URL (a digest, so the URL and its tokens never become a Redis key or a log line)."""
    if watchlist is None:
        return []
    dests = [f"webhook:{watchlist.webhook}"] if watchlist.webhook else []
    return dests + [notify_dest(url.get_secret_value()) for url in watchlist.notify]


def notify_dest(url: str) -> str:
    scheme = re.sub(r"[^a-z0-9+.-]", "", url.split("://", 1)[0].lower()) if "://" in url else ""
    return f"notify:{scheme or 'unknown'}:{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def webhook_digest(hook: WebhookConfig) -> str:
    """A digest of a webhook's whole configuration: a 410 disables this digest, so any change
    to the URL, secrets or schedule enables the webhook again."""
    material = json.dumps([hook.url.get_secret_value(),
                           [s.get_secret_value() for s in hook.secret], hook.retry])
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def notify_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that may be credentials; its "host" too, which for most
    services is a token (``tgram://bottoken/chat``), unless it names a server."""
    scheme = urlsplit(url).scheme.lower()
    return url_secrets(url, host_is_secret=scheme not in HOST_SCHEMES)


# --- The payload and its signature (Standard Webhooks) ------------------------------------------

def alert_payload(alert: dict[str, Any], copies: int) -> dict[str, Any]:
    """The ``alert.created`` event for a stored alert record, or ``story.breaking`` for one
    that fired at a watchlist's breaking bar (see docs/webhook-payload.schema.json); ``copies``
    is read from the story at delivery time."""
    article = alert["article"]
    breaking = {key: alert[key] for key in ("outlets", "copies") if key in alert}
    score = {"salience": alert["salience"]} if alert.get("salience") is not None else {}
    return {
        "type": "story.breaking" if breaking else "alert.created",
        "timestamp": alert["created"],
        "data": {
            "id": alert["id"],
            "watchlist": alert["watchlist"],
            "created": alert["created"],
            **score,
            **breaking,
            "entities": list(alert["entities"]),
            "matches": [{key: m[key] for key in ("entity", "term", "field", "snippet")}
                        for m in alert["matches"]],
            "article": {
                **{key: article[key] for key in ("id", "title", "url", "canonical_url",
                                                  "source", "author", "published")},
                "story": alert["story"],
                "copies": copies,
                "dump": article["dump"],
            },
        },
    }


def ping_payload(webhook: str, now: float) -> dict[str, Any]:
    """The ``ping`` event ``newsmon webhook test`` sends."""
    return {"type": "ping", "timestamp": iso_time(now), "data": {"webhook": webhook}}


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret: the base64 after the prefix, decoded."""
    raw = secret.strip().removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise PermanentDeliveryError(
            "a webhook secret is not base64 (expected whsec_ followed by base64)")
    return key


def sign(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>`` per
    key, separated by spaces (several keys while a receiver rotates its secret)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
                    .decode() for key in keys)


def webhook_headers(msg_id: str, timestamp: int, body: bytes,
                    keys: Sequence[bytes]) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(msg_id, timestamp, body, keys),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


# --- The retry decision ------------------------------------------------------------------------

class Verdict(NamedTuple):
    state: str                   # delivered | retrying | dead
    when: float | None           # retrying: when the next attempt is due


def retryable(status: int | None, error: DeliveryError | None) -> bool:
    """5xx, 408, 429, timeouts and connection errors may succeed later; the rest will not."""
    if error is not None:
        return isinstance(error, TransientDeliveryError)
    return status is not None and (status in (408, 429) or status >= 500)


def next_attempt(attempt_no: int, status: int | None, error: DeliveryError | None,
                 retry_after: float | None, schedule: Sequence[float], now: float,
                 rng: random.Random) -> Verdict:
    """What follows attempt number ``attempt_no`` (1 for the first): delivered on 2xx (or an
    error-free notification); else a retry after the schedule's wait for that attempt (+/- 20%,
    at least ``Retry-After`` up to a day) while the schedule lasts and the failure is retryable;
    else dead."""
    if error is None and (status is None or 200 <= status < 300):
        return Verdict("delivered", None)
    if not retryable(status, error) or attempt_no > len(schedule):
        return Verdict("dead", None)
    wait = schedule[attempt_no - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
    return Verdict("retrying", now + wait)


def failure_reason(status: int | None, error: DeliveryError | None) -> str:
    """A short cause a user can act on, for the attempt log and dead letters."""
    if error is not None:
        return error.reason
    if status is None or 200 <= status < 300:
        return ""
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed; configure the final URL"
    if status == 410:
        return "HTTP 410 Gone: webhook disabled until its configuration changes"
    return f"HTTP {status}"


# --- The edges: one POST, one Apprise notification ---------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """What one send got: an HTTP status or an error, and how long it took."""

    status: int | None
    error: DeliveryError | None
    retry_after: float | None
    latency: float
    response: str = ""           # the first characters of the receiver's answer


def as_delivery_error(exc: FetchError) -> DeliveryError:
    """A failed exchange as a delivery error: transient unless retrying cannot help (a refused
    address, an invalid URL). TLS failures count as connection errors: a certificate gets fixed."""
    transient = isinstance(exc, TransientFetchError) or isinstance(exc.__cause__,
                                                                   httpx.TransportError)
    kind = TransientDeliveryError if transient else PermanentDeliveryError
    return kind(exc.reason, exc.status, exc.retry_after)


def post_signed(fetcher: Fetcher, url: str, msg_id: str, payload: dict[str, Any],
                secrets: Sequence[str], now: float,
                timeouts: tuple[float, float] = (CONNECT_TIMEOUT, REQUEST_TIMEOUT)) -> Attempt:
    """One signed POST through the fetcher's address guard; redirects are not followed."""
    started = time.monotonic()
    try:
        keys = [signing_key(s) for s in secrets]
    except PermanentDeliveryError as exc:
        return Attempt(None, exc, None, 0.0)
    body = encode_body(payload)
    headers = webhook_headers(msg_id, int(now), body, keys)
    remember(url_secrets(url))
    try:
        result = fetcher.post(url, content=body, headers=headers, connect_timeout=timeouts[0],
                              total_timeout=timeouts[1], max_body=RESPONSE_PREFIX * 4)
    except FetchError as exc:
        return Attempt(None, as_delivery_error(exc), exc.retry_after, time.monotonic() - started)
    answer = result.body.decode("utf-8", "replace")[:RESPONSE_PREFIX]
    return Attempt(result.status, None, result.retry_after, result.elapsed, answer)


# Apprise schemes whose URL host names a server (self-hosted services), not a token: the host
# stays readable in output. Every scheme's connections go through the address guard anyway
# (``guarded_sockets``); see docs/webhooks.md.
HOST_SCHEMES = frozenset({
    "json", "jsons", "xml", "xmls", "form", "forms", "apprise", "apprises", "ntfy", "ntfys",
    "gotify", "gotifys", "mmost", "mmosts", "rocket", "rockets", "matrix", "matrixs",
    "mailto", "mailtos", "kodi", "kodis", "xbmc", "xbmcs", "emby", "embys", "jellyfin",
    "jellyfins", "hassio", "hassios", "enigma2", "enigma2s", "synology", "synologys",
    "nctalk", "nctalks", "ncloud", "nclouds", "rsyslog", "signal", "signals", "smseagle",
    "smseagles", "misskey", "misskeys", "mastodon", "mastodons", "toot", "toots",
})
# Schemes that notify this machine (desktop bus, local syslog, USB light) through channels
# that are not Python sockets, so the address guard cannot see them: refused.
LOCAL_SCHEMES = frozenset({"syslog", "dbus", "qt", "kde", "glib", "gio", "gnome", "macosx",
                           "windows", "blink1"})


def notify_scheme_problem(url: str) -> str | None:
    """Why an Apprise URL cannot be used by newsmon (checked by ``newsmon check`` and before
    every send), or None."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", scheme):
        return "expected an Apprise URL such as ntfy://host/topic"
    if scheme in LOCAL_SCHEMES:
        return (f"scheme {scheme}:// is not supported: it notifies this machine through a "
                f"channel the address guard cannot check")
    if _apprise().Apprise.instantiate(url, suppress_exceptions=True) is None:
        return f"scheme {scheme}:// is not a usable Apprise URL (unknown scheme or bad format)"
    return None


def _quiet_http_libraries() -> None:
    """Our HTTP libraries log request URLs (httpx at INFO: "HTTP Request: POST https://user:
    password@host/token"), Apprise and urllib3 URLs and payloads below WARNING: their records
    are redacted, and Apprise's and urllib3's chatter dropped."""
    for name, quiet in (("httpx", logging.NOTSET), ("httpcore", logging.NOTSET),
                        ("apprise", logging.WARNING), ("urllib3", logging.WARNING)):
        logging.getLogger(name).addFilter(RedactFilter(quiet))


_quiet_http_libraries()


def webhook_secrets(hook: WebhookConfig) -> list[str]:
    """A webhook's URL (and its parts that may be tokens) and its signing secrets, longest
    first."""
    found = url_secrets(hook.url.get_secret_value()) + [s.get_secret_value() for s in hook.secret]
    return sorted(found, key=len, reverse=True)


def config_secrets(config: Config) -> list[str]:
    """The secret strings of a configuration: webhook URLs and their parts, webhook secrets,
    notification URLs' tokens, feed URLs' credentials."""
    out = [secret for hook in config.webhooks.values() for secret in webhook_secrets(hook)]
    for watchlist in config.watchlists:
        for url in watchlist.notify:
            out += notify_secrets(url.get_secret_value())
    for feed in config.feeds:
        out += url_credentials(feed.url)
    return out


_apprise_lock = threading.Lock()


@cache
def _apprise() -> ModuleType:
    """The apprise module with its ~200 plugins loaded (0.5 s), once per process that notifies.
    One plugin imports the deprecated ``imghdr``: that warning is apprise's, not ours."""
    with _apprise_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        apprise.Apprise().add("json://localhost/")  # plugins load on the first URL
        return apprise


def send_notification(url: str, title: str, body: str, allowed: Sequence[IPNetwork]) -> Attempt:
    """One notification through Apprise, every connection it makes checked by the address
    guard and no redirect followed. Its failures are transient (Apprise gives no cause that
    could tell a bad token from an outage), except an unusable URL or a refused address."""
    apprise = _apprise()
    started = time.monotonic()
    secrets = notify_secrets(url)
    remember(secrets)
    scheme = url.split("://", 1)[0] if "://" in url else "unknown"
    problem = notify_scheme_problem(url)
    if problem:
        return Attempt(None, PermanentDeliveryError(problem), None, 0.0)
    # LogCapture listens on apprise's global logger: with notifications in flight on several
    # threads a reason may come from a neighbour's failure (redacted like every reason).
    with (guarded_sockets(allowed) as guard,
          apprise.LogCapture(level=logging.WARNING) as captured):
        notifier = apprise.Apprise(asset=apprise.AppriseAsset(http_redirects=False))
        ok = notifier.add(url) and notifier.notify(title=title, body=body)
        said = captured.getvalue().strip().splitlines()
    latency = time.monotonic() - started
    if guard.refusals:
        return Attempt(None, PermanentDeliveryError(f"{scheme}: {guard.refusals[0]}"), None,
                       latency)
    if ok:
        return Attempt(None, None, None, latency)
    cause = redact(said[-1].split(" - ", 2)[-1], secrets)[:RESPONSE_PREFIX] if said else "failed"
    return Attempt(None, TransientDeliveryError(f"{scheme}: {cause}"), None, latency)


def notification_text(alert: dict[str, Any]) -> tuple[str, str]:
    """A short human-readable message: title, entities, the first snippet, the link (for a
    digest: one line per alert; for an update: what changed)."""
    if alert.get("type") == "digest.created":
        data = alert["data"]
        lines = [f"- {a['article']['title']}\n  {a['article']['url']}" for a in data["alerts"]]
        return (f"[{data['watchlist']}] digest: {len(lines)} stories"[:250], "\n".join(lines))
    if alert.get("type") == "alert.updated":
        data = alert["data"]
        title = f"[{data['watchlist']}] updated: {data['article']['title']}"[:250]
        return title, (f"Changed: {', '.join(data['changed'])}; {data['outlets']} outlets\n\n"
                       f"{data['article']['url']}")
    article = alert["article"]
    title = f"[{alert['watchlist']}] {article['title']}"[:250]
    snippet = alert["matches"][0]["snippet"] if alert["matches"] else ""
    lines = [f"Entities: {', '.join(alert['entities'])}", snippet, article["url"]]
    return title, "\n\n".join(line for line in lines if line)


# --- One attempt, start to finish --------------------------------------------------------------

@dataclass(frozen=True)
class Destination:
    """A destination label resolved in the current configuration."""

    label: str
    schedule: tuple[float, ...]
    secrets: tuple[str, ...]          # redacted from every reason and log line
    webhook: WebhookConfig | None = None
    webhook_name: str = ""
    notify_url: str = ""

    @property
    def digest(self) -> str:
        return webhook_digest(self.webhook) if self.webhook else ""


def resolve_destination(config: Config, label: str, watchlist: str) -> Destination | str:
    """The configured destination of a label, or why there is none any more."""
    kind, _, rest = label.partition(":")
    if kind == "webhook":
        hook = config.webhooks.get(rest)
        if hook is None:
            return f"webhook {rest!r} is no longer configured"
        return Destination(label, tuple(hook.retry or DEFAULT_SCHEDULE),
                           tuple(webhook_secrets(hook)), webhook=hook, webhook_name=rest)
    wl = next((w for w in config.watchlists if w.name == watchlist), None)
    urls = [u.get_secret_value() for u in (wl.notify if wl else [])]
    url = next((u for u in urls if notify_dest(u) == label), None)
    if url is None:
        return f"notification URL {label} is no longer configured for watchlist {watchlist!r}"
    return Destination(label, DEFAULT_SCHEDULE, tuple(notify_secrets(url)), notify_url=url)


@dataclass(frozen=True)
class DeliveryResult:
    """What ``deliver_claim`` did: delivered | retrying | dead (an attempt was recorded), or
    busy | held (try again after ``wait`` seconds) or stale (someone else owns the member)."""

    outcome: str
    wait: float = 0.0
    until: float = 0.0   # busy: the member's score until the retry is published and confirmed


def deliver_claim(claim: DeliveryClaim, store: Store, fetcher: Fetcher, config: Config, *,
                  allowed: Sequence[IPNetwork] = (),
                  clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                  timeouts: tuple[float, float] = (CONNECT_TIMEOUT, REQUEST_TIMEOUT),
                  ) -> DeliveryResult:
    """One delivery attempt of a claimed outbox member, recorded on its alert.

    When the destination's slots are all taken by quick attempts, wait here for one (a few
    tens of milliseconds); when they are taken by slow ones, return "busy": the claim is still
    the caller's, who asks again after ``wait``."""
    start = _begin(claim, store, clock)
    now = clock()
    if start.verdict not in ("go", "lost"):
        return DeliveryResult(start.verdict, start.wait, start.until)
    alert_id, _, label = claim.member.partition("|")
    if start.verdict == "lost":
        reason = (f"{start.attempts} attempts began and never finished "
                  f"(worker killed or stuck?); replay it once that is fixed")
        return _give_up(store, claim, label, reason, clock())
    assert start.alert is not None
    dest = resolve_destination(config, label, start.watchlist)
    if isinstance(dest, str):
        return _give_up(store, claim, label, dest, clock())
    disabled = store.webhook_disabled(dest.digest) if dest.webhook else None
    if disabled:
        return _give_up(store, claim, label, (
            f"webhook {dest.webhook_name!r} is disabled since {disabled['at']} "
            f"({disabled['reason']}); change its configuration to enable it"), clock())
    attempt = send(dest, start.alert, start.copies, now, fetcher, allowed, timeouts)
    return _record(store, claim, dest, attempt, start.attempts + 1, clock(),
                   rng or random.Random())


def _begin(claim: DeliveryClaim, store: Store, clock: Callable[[], float]) -> DeliveryStart:
    for _ in range(BUSY_SPINS):
        start = store.start_delivery(claim, clock(), run_lease=RUN_LEASE, slots=DEST_SLOTS,
                                     busy_wait=BUSY_WAIT, max_lost=MAX_LOST,
                                     handout_lease=HANDOUT_LEASE)
        if start.verdict != "busy" or start.wait > BUSY_SPIN:
            return start
        time.sleep(start.wait)
    return start


def send(dest: Destination, alert: dict[str, Any], copies: int, now: float, fetcher: Fetcher,
         allowed: Sequence[IPNetwork], timeouts: tuple[float, float]) -> Attempt:
    """One send to a webhook or a notification URL."""
    remember(dest.secrets)
    if dest.webhook is not None:
        payload = ({k: alert[k] for k in ("type", "timestamp", "data")} if "type" in alert
                   else alert_payload(alert, copies))  # a feed health event is stored as sent
        return post_signed(fetcher, dest.webhook.url.get_secret_value(), alert["id"], payload,
                           [s.get_secret_value() for s in dest.webhook.secret], now, timeouts)
    title, body = notification_text(alert)
    return send_notification(dest.notify_url, title, body, allowed)


def _record(store: Store, claim: DeliveryClaim, dest: Destination, attempt: Attempt,
            attempt_no: int, now: float, rng: random.Random) -> DeliveryResult:
    verdict = next_attempt(attempt_no, attempt.status, attempt.error, attempt.retry_after,
                           dest.schedule, now, rng)
    reason = redact(failure_reason(attempt.status, attempt.error), dest.secrets)
    entry = {"at": now, "dest": dest.label, "attempt": attempt_no, "status": attempt.status,
             "error": reason or None, "latency_ms": round(attempt.latency * 1000, 1),
             "outcome": verdict.state, "next": verdict.when,
             "response": redact(attempt.response, dest.secrets) or None}
    hold = None
    if verdict.state == "retrying" and attempt.retry_after:
        hold = now + min(attempt.retry_after, RETRY_AFTER_CAP)  # the endpoint asked us to wait
    if attempt.status == 410 and dest.webhook is not None:
        store.disable_webhook(dest.digest, {"webhook": dest.webhook_name, "at": iso_time(now),
                                            "reason": "HTTP 410 Gone"})
        log.error("webhook=%s disabled: it answered 410 Gone; its alerts are dead-lettered "
                  "until its configuration changes", dest.webhook_name)
    store.record_delivery(claim, now, entry, verdict.state, verdict.when, reason, hold)
    alert_id = claim.member.partition("|")[0]
    kind = dest.label.partition(":")[0]
    metrics.DELIVERIES.labels(kind, verdict.state).inc()
    metrics.DELIVERY_SECONDS.labels(kind).observe(attempt.latency)
    level = logging.WARNING if verdict.state == "dead" else logging.INFO
    log.log(level, "alert=%s dest=%s attempt=%d outcome=%s status=%s latency_ms=%.0f%s%s",
            alert_id, dest.label, attempt_no, verdict.state, attempt.status or "-",
            attempt.latency * 1000, f" next={iso_time(verdict.when)}" if verdict.when else "",
            f" reason={reason}" if reason else "", extra={"alert": alert_id})
    return DeliveryResult(verdict.state)


def _give_up(store: Store, claim: DeliveryClaim, label: str, reason: str,
             now: float) -> DeliveryResult:
    """Dead-letter a member without sending, with the reason in its log."""
    entry = {"at": now, "dest": label, "attempt": None, "status": None, "error": reason,
             "latency_ms": 0.0, "outcome": "dead", "next": None, "response": None}
    store.record_delivery(claim, now, entry, "dead", None, reason)
    metrics.DELIVERIES.labels(label.partition(":")[0], "dead").inc()
    alert_id = claim.member.partition("|")[0]
    log.warning("alert=%s dest=%s outcome=dead reason=%s", alert_id, label, reason,
                extra={"alert": alert_id})
    return DeliveryResult("dead")


def ping_webhook(fetcher: Fetcher, name: str, hook: WebhookConfig, now: float,
                 msg_id: str) -> Attempt:
    """Send a signed ``ping`` event to a webhook (``newsmon webhook test``); its reason and
    the receiver's answer come back redacted (an error page may echo the URL's token)."""
    attempt = post_signed(fetcher, hook.url.get_secret_value(), msg_id, ping_payload(name, now),
                          [s.get_secret_value() for s in hook.secret], now)
    secrets = webhook_secrets(hook)
    error = attempt.error and type(attempt.error)(redact(attempt.error.reason, secrets),
                                                  attempt.error.status)
    return Attempt(attempt.status, error, attempt.retry_after, attempt.latency,
                   redact(attempt.response, secrets))
