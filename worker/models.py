"""The plain data that flows through the pipeline: feed entries, articles, matches, alerts.

All frozen dataclasses, so the pure stages (parse, normalize, dedupe, match) can be
tested without Redis, Celery or network, and values can be passed between tasks as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class FeedEntry:
    """One item as the feed gave it, before normalizing. Strings are already Unicode."""

    guid: str | None
    link: str | None
    title: str                      # may hold HTML entities/markup; normalize cleans it
    author: str | None
    published: datetime | None      # aware, in the offset the source gave; None if absent
    content_html: str               # the richest body the feed had (content, else summary)


@dataclass(frozen=True)
class ParsedFeed:
    """A feed document: its own metadata and its entries, in document order."""

    format: str                     # "rss20", "rss10", "atom10", "json11", ... (feedparser's names)
    title: str | None
    link: str | None
    author: str | None
    ttl_minutes: int | None         # RSS <ttl>: a minimum wait between polls
    entries: tuple[FeedEntry, ...]


@dataclass(frozen=True)
class Article:
    """A normalized article: everything the dump format and alerts need."""

    id: str                         # 16 lowercase hex digits (see normalize.article_id)
    canonical_url: str              # dedupe.canonical_url(url); "" when the entry had no link
    url: str                        # the link as the feed gave it
    guid: str | None
    title: str                      # one line, no markup
    author: str
    source: str                     # the feed's title (or its configured name)
    published: datetime             # aware, in the offset the source gave (or first-seen time, UTC)
    paragraphs: tuple[str, ...]     # one line each, no markup
    feed: str                       # URL of the feed it came from
    timezone: str | None = None     # the feed's configured IANA zone for the dump's line 2

    @property
    def body(self) -> str:
        """The text matched as ``body``: paragraphs joined by newlines."""
        return "\n".join(self.paragraphs)


@dataclass(frozen=True)
class Dump:
    """The fields a dump file holds; ``published`` is the local wall time shown on line 2."""

    title: str
    author: str
    published: datetime             # naive: the wall time as displayed
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    """One occurrence of a watchlist term in an article."""

    entity: str
    term: str
    field: str                      # "title" or "body"
    start: int                      # character offsets into Article.title / Article.body
    end: int
    snippet: str                    # the sentence around it, at most 240 characters


@dataclass(frozen=True)
class WatchlistHit:
    """A watchlist that fires on an article, with the entities and matches that made it fire."""

    watchlist: str
    entities: tuple[str, ...]
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class Alert:
    """A durable record: one watchlist fired by one story, delivered to its webhook."""

    id: str
    watchlist: str
    story_id: str
    article_id: str
    entities: tuple[str, ...]
    matches: tuple[Match, ...]
    created: datetime
    state: str = "pending"          # pending | retrying | delivered | dead
    attempts: tuple[dict, ...] = field(default_factory=tuple)
