"""Pipeline stage *shape*, between match and deliver: how a watchlist's alerts leave.

Pure decisions with time passed in: an alert's salience, the digest window a time falls in,
which way an alert goes (at once, through the throttle, into the digest), whether a story has
reached a watchlist's breaking bar, whether an update may go out, and what a correction
changed. The state they decide on (windows, throttle slots, copies, update markers) lives in
``store``; see docs/shaping.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.config import BreakingConfig, WatchlistConfig
from worker.models import Article, Match

# Salience: a mention in the title weighs most, then one in the first paragraph, then how many
# mentions the body has (counted up to BODY_FULL, where that part is full).
TITLE_WEIGHT = 0.5
LEAD_WEIGHT = 0.3
BODY_WEIGHT = 0.2
BODY_FULL = 5
UPDATE_GAP = 600.0      # at most one alert.updated per story and watchlist in this many seconds


def salience(matches: Sequence[Match], article: Article) -> float:
    """How central the watchlist is to the article, 0 to 1 (docs/shaping.md#salience):
    0.5 for a mention in the title, 0.3 for one in the first paragraph, and 0.2 x (body
    mentions, up to 5) / 5. Offsets of body matches index ``Article.body``."""
    lead_end = len(article.paragraphs[0]) if article.paragraphs else 0
    in_title = any(m.field == "title" for m in matches)
    body = {(m.start, m.end) for m in matches if m.field == "body"}
    in_lead = any(start < lead_end for start, _ in body)
    score = (TITLE_WEIGHT * in_title + LEAD_WEIGHT * in_lead
             + BODY_WEIGHT * min(len(body), BODY_FULL) / BODY_FULL)
    return round(min(score, 1.0), 3)


@dataclass(frozen=True)
class Window:
    """A digest window: alerts created in [start, end) leave together at ``end``."""

    start: float
    end: float


def digest_window(now: float, length: float) -> Window:
    """The window ``now`` falls in; windows are aligned to the epoch (hourly digests close on
    the hour, daily ones at 00:00 UTC)."""
    start = math.floor(now / length) * length
    return Window(start, start + length)


def route(watchlist: WatchlistConfig) -> str:
    """How the watchlist's alerts (alert.created and story.breaking) leave: "now" (each on its
    own), "throttle" (each on its own while the throttle has room, else held for a digest),
    "digest" (all into the digest window) or "both" (throttle first, the rest into the digest)."""
    if watchlist.digest is not None:
        return "both" if watchlist.throttle is not None else "digest"
    return "throttle" if watchlist.throttle is not None else "now"


@dataclass(frozen=True)
class Copy:
    """One outlet's copy of a story, as story.breaking and alert.updated carry it."""

    feed: str               # the URL of the feed it came from (an outlet)
    source: str
    url: str
    first_seen: float
    article: str = ""       # the article id

    def as_json(self) -> dict[str, Any]:
        return {"feed": self.feed, "source": self.source, "url": self.url,
                "first_seen": self.first_seen, "article": self.article}


def breaking_reached(copies: Iterable[Copy], rule: BreakingConfig) -> bool:
    """Whether ``rule.outlets`` distinct feeds carried the story within ``rule.within`` seconds
    of its first copy's arrival."""
    copies = list(copies)
    if not copies:
        return False
    first = min(c.first_seen for c in copies)
    outlets = {c.feed for c in copies if c.first_seen <= first + rule.within}
    return len(outlets) >= rule.outlets


def outlets_within(copies: Iterable[Copy], rule: BreakingConfig) -> list[Copy]:
    """The copies that count towards the breaking bar, first seen first."""
    copies = sorted(copies, key=lambda c: (c.first_seen, c.feed))
    if not copies:
        return []
    return [c for c in copies if c.first_seen <= copies[0].first_seen + rule.within]


def update_due(last_sent: float | None, now: float, gap: float = UPDATE_GAP) -> bool:
    """Whether an alert.updated for a story and watchlist may go out now."""
    return last_sent is None or now - last_sent >= gap


def text_revision(title: str, body: str) -> str:
    """A short digest of an entry's text as its feed gives it: a different value at the same
    URL is a correction."""
    return hashlib.sha256(f"{title}\x00{body}".encode()).hexdigest()[:16]


def text_changes(old: dict[str, Any], new: Article) -> list[str]:
    """What a correction changed: "title" and/or "text" (the paragraphs), against the copy's
    previous ``title`` and ``body`` digest ([]: the normalized text is the same, only the
    feed's markup changed)."""
    changed = []
    if old.get("title") != new.title:
        changed.append("title")
    if old.get("body") != body_digest(new):
        changed.append("text")
    return changed


def body_digest(article: Article) -> str:
    return hashlib.sha256(article.body.encode()).hexdigest()[:16]


def merge_updates(updates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several held-back updates of one story as one: the latest copy and article, the highest
    outlet count, and everything that changed in any of them (in first-seen order)."""
    latest = max(updates, key=lambda u: (u["outlets"], u["created"]))
    changed = list(dict.fromkeys(c for u in updates for c in u["changed"]))
    return {**latest, "changed": changed}


def event_id(kind: str, *parts: str) -> str:
    """A deterministic event id (digest_..., update_...): whoever builds the same event twice,
    after a crash or concurrently, gets the same id, and the outbox keeps it once."""
    return f"{kind}_" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
