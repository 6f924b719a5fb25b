"""Errors to Sentry when SENTRY_DSN is set: task errors with their feed or alert as tags, the
heartbeat beat task as a cron monitor, and nothing secret in what leaves the machine.

Scrubbing happens twice: sentry-sdk's EventScrubber drops values under secret-looking keys
(recursively), then ``scrub_event`` passes every string of the event through newsmon's one
redaction (worker/redact.py). See docs/operations.md.
"""

from __future__ import annotations

import os
from typing import Any

from worker import __version__
from worker.redact import redact

FILTERED = "[Filtered]"  # what sentry-sdk puts under a denied key
_started = False
_CONTEXT_IDS = ("feed", "alert", "story", "article")
# Keys whose values are dropped wherever they appear (compared without case, - and _ alike).
DENYLIST = ["secret", "secrets", "signing_key", "keys", "key", "webhook_signature",
            "webhook-signature", "signature", "whsec", "dsn", "sentry_dsn", "redis_url",
            "broker_url", "url_secrets", "authorization", "proxy-authorization", "cookie",
            "password", "token"]
_DENIED = {k.replace("-", "_") for k in DENYLIST}


def scrub_text(text: str) -> str:
    return redact(text)


def _scrub(node: Any) -> Any:
    if isinstance(node, str):
        return scrub_text(node)
    if isinstance(node, dict):
        return {k: FILTERED if _denied(k) else _scrub(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_scrub(v) for v in node]
    return node


def _denied(key: Any) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "_") in _DENIED


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``before_send``: the feed/alert/story/article ids a log record carried become tags
    (searchable in Sentry), then every string is scrubbed."""
    extra = event.get("extra") or {}
    tags = event.setdefault("tags", {})
    for key in _CONTEXT_IDS:
        if isinstance(extra.get(key), str):
            tags.setdefault(key, extra[key])
    return _scrub(event)


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    return _scrub(crumb)


def init_sentry(process: str) -> bool:
    """Start sentry-sdk if SENTRY_DSN is set (``process``: worker, beat, run; a tag).
    SENTRY_ENVIRONMENT and SENTRY_RELEASE name the deployment (release default: newsmon@version)."""
    global _started
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn or _started:  # a worker with embedded beat gets both signals
        return bool(dsn)
    _started = True
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=dsn,
        release=os.environ.get("SENTRY_RELEASE") or f"newsmon@{__version__}",
        environment=os.environ.get("SENTRY_ENVIRONMENT") or "production",
        send_default_pii=False,
        # The beat entries every few seconds are too frequent for Sentry Crons (a minute at
        # least); the heartbeat entry, every minute, is the monitor that proves beat and a
        # worker both run.
        integrations=[CeleryIntegration(monitor_beat_tasks=True,
                                        exclude_beat_tasks=["tick", "deliver-due"])],
        event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + DENYLIST, recursive=True),
        before_send=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
    )
    sentry_sdk.set_tag("process", process)
    # A failed task is reported by the Celery integration with its exception; our one-line
    # log of the same failure would be a second, poorer event.
    ignore_logger("newsmon.tasks")
    return True


def tag(**ids: str) -> None:
    """Tag what this task is about (feed, alert) on the events it may raise; a no-op
    without Sentry."""
    import sentry_sdk

    for key, value in ids.items():
        sentry_sdk.set_tag(key, value)
