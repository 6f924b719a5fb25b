"""Scheduling decisions: when a feed is next due. Pure functions, ``now`` passed in."""

from __future__ import annotations

MAX_BACKOFF = 6 * 3600.0   # a failing feed is retried at least every 6 hours, never given up
CLAIM_LEASE = 15 * 60.0    # a handed-out feed is handed out again if its fetch never reports
# A hand-out (feeds by a tick, deliveries by the outbox) holds this short lease until its
# messages are published and it is confirmed; one whose publisher died is handed out again
# this soon, not a whole lease later.
HANDOUT_LEASE = 30.0
JITTER = 0.2               # a poll comes up to this fraction of the interval early


def next_due_after_success(now: float, every: float, ttl_minutes: int | None = None,
                           retry_after: float | None = None, jitter: float = 0.0) -> float:
    """Back to the feed's interval; an RSS ``<ttl>`` or ``Retry-After`` is a minimum wait.

    ``jitter`` (a random number in [0, 1)) brings the poll up to JITTER of the interval
    early, never later: feeds that started together drift apart instead of polling in one
    burst forever."""
    wait = max(every * (1 - JITTER * jitter), (ttl_minutes or 0) * 60.0, retry_after or 0.0)
    return now + wait


def next_due_after_failure(now: float, every: float, failures: int,
                           retry_after: float | None = None) -> float:
    """Exponential backoff: the interval doubled per consecutive failure, capped at 6 hours."""
    backoff = min(every * 2 ** min(max(failures, 1), 32), MAX_BACKOFF)
    return now + max(backoff, min(retry_after or 0.0, 86400.0))


# -- configuration skew: workers that run different versions during a rollout ---------------------
def fetch_decision(known_here: bool, same_version: bool, newest_here: bool) -> str:
    """What a fetch task does with a feed handed out by a tick: "fetch" it, "give back" (due
    again now, for a worker that runs the newest configuration) or "drop" (the newest
    configuration no longer has it). A worker behind the newest version never drops or
    fetches on its own older view of a feed it was not handed out with."""
    if same_version and known_here:
        return "fetch"
    if not newest_here:
        return "give back"
    return "fetch" if known_here else "drop"
