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

from worker import metrics
from worker.config import FeedConfig
from worker.dedupe import canonical_url, story_keys
from worker.dump import dump_of, dump_path, place_dump, render_dump
from worker.errors import FetchError, NotAFeedError
from worker.fetch import Fetcher, redact_url
from worker.health import FAILING, Health, health_event, is_stale, next_health, rhythm, stale_threshold
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


Parse = Callable[[bytes, str | None], ParsedFeed]


def poll_feed(feed: FeedConfig, store: Store, fetcher: Fetcher, now: float,
              submit: Submit, parse: Parse = parse_feed) -> dict[str, Any]:
    """Fetch one feed and hand its new entries to ``submit``; record the outcome on the feed.
    ``parse`` is ``parse_feed`` or a bounded stand-in for it (see Service.parse).

    Entries are submitted before the feed's ETag is saved, so a crash in between means a
    refetch, never a lost entry."""
    state = store.feed_state(feed.name)
    failures = int(state.get("failures") or 0)
    outcome: dict[str, Any] = {"url": feed.url, "last_fetch": now, "new_items": 0}
    ids = {"feed": feed.name}
    try:
        with metrics.FETCH_SECONDS.time():  # failed fetches too
            result = fetcher.get(feed.url, etag=state.get("etag") or None,
                                 last_modified=state.get("last_modified") or None)
        outcome.update(status=result.status, etag=result.etag or state.get("etag"),
                       last_modified=result.last_modified or state.get("last_modified"))
        if result.not_modified:
            outcome.update(outcome="not modified", failures=0, error="", last_ok=now)
            log.debug("feed=%s outcome=not-modified status=304", feed.name, extra=ids)
            return record_poll(feed, store, state, outcome, now, next_due_after_success(now, feed.every))
        parsed = parse(result.content, result.content_type)
    except (FetchError, NotAFeedError) as exc:
        reason = exc.reason if isinstance(exc, FetchError) else str(exc)
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        outcome.update(outcome="failed", error=reason, failures=failures + 1,
                       status=getattr(exc, "status", None) or "")
        log.warning("feed=%s outcome=failed failures=%d reason=%s", feed.name, failures + 1, reason,
                    extra=ids)
        return record_poll(feed, store, state, outcome, now,
                           next_due_after_failure(now, feed.every, failures + 1, retry_after))
    fresh = new_entries(feed, parsed, store, fetcher)
    if fresh:
        submit(feed, parsed, fresh)
    outcome.update(outcome="ok", error="", failures=0, new_items=len(fresh), last_ok=now,
                   **item_rhythm(parsed, bool(fresh), now))
    log.debug("feed=%s outcome=ok status=%s entries=%d new=%d", feed.name, outcome["status"],
             len(parsed.entries), len(fresh), extra=ids)
    return record_poll(feed, store, state, outcome, now,
                       next_due_after_success(now, feed.every, parsed.ttl_minutes))


def item_rhythm(parsed: ParsedFeed, any_new: bool, now: float) -> dict[str, float]:
    """When the feed last published (its newest item's date; without dates, now if anything
    was new) and its usual gap between items, for the stale check; {} when unknown."""
    dates = [min(e.published.timestamp(), now) for e in parsed.entries if e.published]
    out = {"newest": max(dates)} if dates else ({"newest": now} if any_new else {})
    gap = rhythm(dates)
    return {**out, "rhythm": gap} if gap is not None else out


def record_poll(feed: FeedConfig, store: Store, state: dict[str, str], outcome: dict[str, Any],
                now: float, next_due: float) -> dict[str, Any]:
    """Save a poll's outcome with the feed's health and staleness; a change of health is
    logged, counted, and queued as a ``feed.failing``/``feed.recovered`` event (before the
    state is saved, so a crash in between sends it on the next poll, never loses it)."""
    metrics.FETCHES.labels(outcome["outcome"].replace(" ", "_")).inc()
    previous = Health.from_state(state)
    current = next_health(previous, outcome["outcome"] != "failed", now, feed.failing_after)
    newest = outcome.get("newest") or _float(state.get("newest"))
    usual = outcome.get("rhythm") or _float(state.get("rhythm"))
    stale = is_stale(newest, now, stale_threshold(usual, feed.every, feed.stale_after))
    outcome.update(health=current.state, failing_since=current.failing_since or "",
                   stale=int(stale))
    ids = {"feed": feed.name}
    if current.state != previous.state:
        metrics.HEALTH_CHANGES.labels(current.state).inc()
        since = iso(current.failing_since or previous.failing_since or now)
        if current.state == FAILING:  # an error: reported once per run of failures (Sentry)
            log.error("feed=%s health=failing: no successful fetch since %s (%d failures): %s",
                      feed.name, since, outcome["failures"], outcome["error"], extra=ids)
        else:
            log.warning("feed=%s health=%s (was %s, failing since %s)", feed.name, current.state,
                        previous.state, since, extra=ids)
        event = health_event(feed_view(feed, state, outcome), previous, current, iso(now))
        if event is not None:
            store.add_event(event, now)
    if stale != (state.get("stale") == "1"):
        level = logging.WARNING if stale else logging.INFO
        log.log(level, "feed=%s %s: newest item %s, usual gap %s", feed.name,
                "stale" if stale else "publishing again", iso(newest) if newest else "unknown",
                f"{usual / 3600:.1f} h" if usual else "unknown", extra=ids)
    store.record_fetch(feed.name, outcome, next_due)
    return outcome


def feed_view(feed: FeedConfig, state: dict[str, str], outcome: dict[str, Any]) -> dict[str, Any]:
    """A feed's health as the ``feed.*`` events carry it (the URL without credentials)."""
    since = outcome.get("failing_since") or _float(state.get("failing_since"))
    last_ok = outcome.get("last_ok") or _float(state.get("last_ok"))
    return {"feed": feed.name, "url": redact_url(feed.url), "state": outcome["health"],
            "failing_since": iso(since) if since else None,
            "last_success": iso(last_ok) if last_ok else None,
            "failures": outcome["failures"], "error": outcome["error"] or None}


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


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
        page = fetcher.get(entry.link, accept="text/html,application/xhtml+xml", kind="page")
    except FetchError as exc:
        log.info("feed=%s full-text fetch failed url=%s reason=%s", feed.name, entry.link,
                 exc.reason, extra={"feed": feed.name})
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
                          item.entry.link, extra={"feed": feed.name})
    return alerts


def process_article(article: Article, store: Store, matcher: Matcher, dump_dir: Path,
                    now: float) -> list[str]:
    claim = store.claim_story(article.id, story_keys(article), now)
    if claim.fresh:
        metrics.ARTICLES.inc()
        (metrics.STORIES if claim.is_new else metrics.DUPLICATES).inc()
    text = render_dump(dump_of(article))
    path = write_story_dump(store, dump_dir, article, text) if claim.is_new else None
    if claim.is_new:
        store.add_article(article_json(article, claim.story_id, path))
    created = []
    for hit in match_article(matcher, article):
        record = alert_json(hit, article, claim.story_id, text, now)
        alert_id, is_new = store.claim_alert(claim.story_id, hit.watchlist, record["id"], record, now)
        if is_new:
            metrics.ALERTS.labels(hit.watchlist).inc()
            log.info("alert=%s watchlist=%s story=%s article=%s", alert_id, hit.watchlist,
                     claim.story_id, article.id,
                     extra={"alert": alert_id, "story": claim.story_id, "article": article.id})
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
