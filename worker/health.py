"""Feed health, decided from a feed's fetch history: plain functions, time passed in.

A feed is healthy after a successful fetch, degraded while its failures are recent, and failing
once it has failed without a success for longer than its ``failing_after`` (default 6 hours).
Separately, it is stale when nothing new has appeared in it for much longer than its usual
rhythm (the median gap between its items' dates). See docs/operations.md.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass
from typing import Any

HEALTHY, DEGRADED, FAILING = "healthy", "degraded", "failing"
DEFAULT_FAILING_AFTER = 6 * 3600.0
STALE_FACTOR = 5.0          # stale after this many usual gaps without a new item ...
STALE_MIN = 3600.0          # ... and never sooner than an hour, or than two poll intervals
RHYTHM_ITEMS = 20           # the rhythm is measured on the newest items only
RHYTHM_MIN_ITEMS = 3        # fewer dated items: no rhythm, so never stale (unless stale_after)


@dataclass(frozen=True)
class Health:
    state: str = HEALTHY
    failing_since: float | None = None    # when the current run of failures began

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Health:
        since = state.get("failing_since")
        return cls(state.get("health") or HEALTHY, float(since) if since else None)


def next_health(previous: Health, ok: bool, now: float, failing_after: float) -> Health:
    """The health after one fetch: any success heals; failures degrade, then fail."""
    if ok:
        return Health()
    since = previous.failing_since if previous.failing_since is not None else now
    return Health(FAILING if now - since >= failing_after else DEGRADED, since)


def health_event(feed: dict[str, Any], previous: Health, current: Health,
                 now_iso: str) -> dict[str, Any] | None:
    """The ``feed.failing`` / ``feed.recovered`` event a change of health sends, or None.

    Its id derives from the feed and the run of failures, so a fetch recorded twice (a task
    run again after a crash) makes the same event, which the store keeps once."""
    if current.state == FAILING and previous.state != FAILING:
        kind, since = "feed.failing", current.failing_since
    elif previous.state == FAILING and current.state != FAILING:
        kind, since = "feed.recovered", previous.failing_since
    else:
        return None
    digest = hashlib.sha256(f"{feed['feed']}|{kind}|{since}".encode()).hexdigest()[:24]
    return {"id": "evt_" + digest, "type": kind, "timestamp": now_iso, "data": feed}


def rhythm(published: list[float]) -> float | None:
    """The usual gap between a feed's items: the median gap between the newest dated items."""
    dates = sorted(set(published), reverse=True)[:RHYTHM_ITEMS]
    if len(dates) < RHYTHM_MIN_ITEMS:
        return None
    return statistics.median(a - b for a, b in zip(dates, dates[1:], strict=False))


def stale_threshold(usual_gap: float | None, every: float, stale_after: float | None) -> float | None:
    """How long without a new item makes a feed stale (None: it cannot be judged)."""
    if stale_after is not None:
        return stale_after
    if usual_gap is None:
        return None
    return max(STALE_FACTOR * usual_gap, STALE_MIN, 2 * every)


def is_stale(newest: float | None, now: float, threshold: float | None) -> bool:
    return newest is not None and threshold is not None and now - newest > threshold
