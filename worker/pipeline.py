"""One feed through the whole pipeline: fetch, parse, pick new entries, normalize, dedupe,
dump, match, alert. Celery tasks and ``newsmon run --once`` both call these two functions."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.config import FeedConfig
from worker.dedupe import canonical_url, story_keys
from worker.dump import dump_of, dump_path, place_dump, render_dump
from worker.errors import FetchError, NotAFeedError
from worker.fetch import Fetcher
from worker.match import Matcher, match_article
from worker.models import Article, FeedEntry, ParsedFeed, WatchlistHit
from worker.normalize import (
    PageText,
    article_id,
    extract_page,
    html_to_paragraphs,
    needs_full_text,
    normalize_entry,
)
from worker.parse import parse_feed
from worker.schedule import next_due_after_failure, next_due_after_success
from worker.store import Store

log = logging.getLogger("newsmon.pipeline")
FULL_TEXT_BUDGET = 120.0  # seconds of article-page fetching per feed poll


@dataclass(frozen=True)
class Fresh:
    """An entry not processed yet, with its article page when full text was fetched."""

    entry: FeedEntry
    page: PageText | None


Submit = Callable[[FeedConfig, ParsedFeed, list[Fresh]], None]


def poll_feed(feed: FeedConfig, store: Store, fetcher: Fetcher, now: float,
              submit: Submit) -> dict[str, Any]:
    """Fetch one feed and hand its new entries to ``submit``; record the outcome on the feed.

    Entries are submitted before the feed's ETag is saved, so a crash in between means a
    refetch, never a lost entry."""
    state = store.feed_state(feed.name)
    failures = int(state.get("failures") or 0)
    outcome: dict[str, Any] = {"url": feed.url, "last_fetch": now, "new_items": 0}
    try:
        result = fetcher.get(feed.url, etag=state.get("etag") or None,
                             last_modified=state.get("last_modified") or None)
        outcome.update(status=result.status, etag=result.etag or state.get("etag"),
                       last_modified=result.last_modified or state.get("last_modified"))
        if result.not_modified:
            outcome.update(outcome="not modified", failures=0, error="")
            store.record_fetch(feed.name, outcome, next_due_after_success(now, feed.every))
            log.info("feed=%s outcome=not-modified status=304", feed.name)
            return outcome
        parsed = parse_feed(result.content, result.content_type)
    except (FetchError, NotAFeedError) as exc:
        reason = exc.reason if isinstance(exc, FetchError) else str(exc)
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        outcome.update(outcome="failed", error=reason, failures=failures + 1,
                       status=getattr(exc, "status", None) or "")
        due = next_due_after_failure(now, feed.every, failures + 1, retry_after)
        store.record_fetch(feed.name, outcome, due)
        log.warning("feed=%s outcome=failed failures=%d reason=%s", feed.name, failures + 1, reason)
        return outcome
    fresh = new_entries(feed, parsed, store, fetcher)
    if fresh:
        submit(feed, parsed, fresh)
    outcome.update(outcome="ok", error="", failures=0, new_items=len(fresh))
    store.record_fetch(feed.name, outcome,
                       next_due_after_success(now, feed.every, parsed.ttl_minutes))
    log.info("feed=%s outcome=ok status=%s entries=%d new=%d", feed.name, outcome["status"],
             len(parsed.entries), len(fresh))
    return outcome


def entry_article_id(feed: FeedConfig, entry: FeedEntry) -> str:
    return article_id(canonical_url(entry.link) if entry.link else "", feed.url, entry.guid)


def new_entries(feed: FeedConfig, parsed: ParsedFeed, store: Store,
                fetcher: Fetcher) -> list[Fresh]:
    """The entries not processed to the end yet, with full text fetched where the feed asks.

    Article pages are fetched one after another until FULL_TEXT_BUDGET seconds are spent; the
    rest keep the feed's own content, so one poll stays well inside the task time limits."""
    ids = [entry_article_id(feed, e) for e in parsed.entries]
    done = store.done_articles(ids)
    deadline = time.monotonic() + FULL_TEXT_BUDGET
    fresh = []
    for entry, aid in zip(parsed.entries, ids, strict=True):
        if aid not in done:
            page = full_text(feed, entry, fetcher) if time.monotonic() < deadline else None
            fresh.append(Fresh(entry, page))
    return fresh


def full_text(feed: FeedConfig, entry: FeedEntry, fetcher: Fetcher) -> PageText | None:
    """The article page's main text, when the feed's ``full_text`` mode asks for it."""
    if not entry.link or not needs_full_text(feed.full_text, html_to_paragraphs(entry.content_html)):
        return None
    try:
        page = fetcher.get(entry.link, accept="text/html,application/xhtml+xml")
    except FetchError as exc:
        log.info("feed=%s full-text fetch failed url=%s reason=%s", feed.name, entry.link,
                 exc.reason)
        return None
    return extract_page(page.content, page.url)


def process_entries(feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh], store: Store,
                    matcher: Matcher, dump_dir: Path, now: float) -> list[str]:
    """Normalize, dedupe, dump, match and alert each entry; one bad entry never stops the rest.
    Safe to run twice: every step is keyed by the article id."""
    alerts: list[str] = []
    first_seen = datetime.fromtimestamp(now, UTC)
    for item in items:
        try:
            article = normalize_entry(item.entry, parsed, feed_url=feed.url, first_seen=first_seen,
                                      feed_name=feed.name, timezone=feed.timezone, page=item.page)
            alerts += process_article(article, store, matcher, dump_dir, now)
        except Exception:  # recorded, and the other entries go on
            log.exception("feed=%s entry failed guid=%s link=%s", feed.name, item.entry.guid,
                          item.entry.link)
    return alerts


def process_article(article: Article, store: Store, matcher: Matcher, dump_dir: Path,
                    now: float) -> list[str]:
    claim = store.claim_story(article.id, story_keys(article), now)
    text = render_dump(dump_of(article))
    path = write_story_dump(store, dump_dir, article, text) if claim.is_new else None
    if claim.is_new:
        store.add_article(article_json(article, claim.story_id, path))
    created = []
    for hit in match_article(matcher, article):
        record = alert_json(hit, article, claim.story_id, text, now)
        alert_id, is_new = store.claim_alert(claim.story_id, hit.watchlist, record["id"], record, now)
        if is_new:
            log.info("alert=%s watchlist=%s story=%s article=%s", alert_id, hit.watchlist,
                     claim.story_id, article.id)
            created.append(alert_id)
    store.mark_done(article.id)
    return created


def write_story_dump(store: Store, dump_dir: Path, article: Article, text: str) -> Path:
    """Write the dump at the sequence number Redis assigned this article (the same on retries)."""
    day = dump_of(article).published.date().isoformat()
    seq = store.claim_seq(article.id, day)
    while not place_dump(dump_path(dump_dir, day, seq, article.id), text):
        seq = store.claim_seq(article.id, day, force_new=True)  # taken by a file not ours
    return dump_path(dump_dir, day, seq, article.id)


def article_json(article: Article, story_id: str, path: Path | None) -> dict[str, Any]:
    return {
        "id": article.id, "story": story_id, "title": article.title, "url": article.url,
        "canonical_url": article.canonical_url, "guid": article.guid, "source": article.source,
        "author": article.author, "published": article.published.isoformat(),
        "feed": article.feed, "file": str(path) if path else None,
    }


def alert_json(hit: WatchlistHit, article: Article, story_id: str, dump_text: str,
               now: float) -> dict[str, Any]:
    return {
        "id": "alert_" + uuid.uuid4().hex,
        "watchlist": hit.watchlist,
        "entities": list(hit.entities),
        "matches": [{"entity": m.entity, "term": m.term, "field": m.field, "start": m.start,
                     "end": m.end, "snippet": m.snippet} for m in hit.matches],
        "created": datetime.fromtimestamp(now, UTC).isoformat(),
        "story": story_id,
        "article": {**article_json(article, story_id, None), "dump": dump_text},
    }
