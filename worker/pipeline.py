"""One feed through the whole pipeline: fetch, parse, pick new entries, normalize, dedupe,
dump, match, alert. Celery tasks and ``newsmon run --once`` both call these two functions."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import metrics
from worker.config import FeedConfig
from worker.dedupe import story_keys
from worker.dump import day_of, dump_of, dump_path, parse_dump, place_dump, render_dump
from worker.errors import BadEntryError, FetchError, NotAFeedError
from worker.fetch import Fetcher
from worker.health import FAILING, Health, health_event, is_stale, next_health, rhythm, stale_threshold
from worker.match import Matcher, match_article
from worker.models import Article, FeedEntry, ParsedFeed, WatchlistHit
from worker.normalize import (
    PageText,
    extract_page,
    html_to_paragraphs,
    needs_full_text,
    normalize_entry,
)
from worker.normalize import entry_article_id as article_id_of
from worker.parse import body_digest, parse_feed
from worker.redact import redact, redact_url
from worker.schedule import next_due_after_failure, next_due_after_success
from worker.shaping import salience, text_revision
from worker.store import INFRA_ERRORS, Store

if TYPE_CHECKING:
    from worker.shaper import Shaper

log = logging.getLogger("newsmon.pipeline")
FULL_TEXT_BUDGET = 120.0  # seconds of article-page fetching per feed poll


@dataclass(frozen=True)
class Fresh:
    """An entry not processed yet, with its article page when full text was fetched."""

    entry: FeedEntry
    page: PageText | None
    revision: bool = False      # processed before; its text changed since (a correction)


Submit = Callable[[FeedConfig, ParsedFeed, list[Fresh]], None]


Parse = Callable[..., ParsedFeed]  # parse_feed(data, content_type, *, url, timezone)


def poll_feed(feed: FeedConfig, store: Store, fetcher: Fetcher, now: float,
              submit: Submit, parse: Parse = parse_feed, *,
              corrections: bool = False) -> dict[str, Any]:
    """Fetch one feed and hand its new entries to ``submit``; record the outcome on the feed.
    ``parse`` is ``parse_feed`` or a bounded stand-in for it (see Service.parse).

    The feed's validators (ETag, Last-Modified) and the ids of its document are saved only
    after its entries were handed on, so a crash in between means a refetch, never a lost
    entry. An error of the infrastructure (Redis, disk) is raised for the task to run again;
    any other error is this feed's failure, recorded on it like a failed fetch."""
    state = store.feed_state(feed.name)
    outcome: dict[str, Any] = {"url": redact_url(feed.url), "last_fetch": now, "new_items": 0}
    ids = {"feed": feed.name}
    try:
        parsed = read_feed(feed, state, fetcher, outcome, parse)
        if parsed is None:  # 304, or a 200 with the bytes of the last successful parse
            outcome.update(failures=0, error="", last_ok=now)
            log.debug("feed=%s outcome=%s status=%s", feed.name,
                      outcome["outcome"].replace(" ", "-"), outcome["status"], extra=ids)
            return record_poll(feed, store, state, outcome, now,
                               next_due_after_success(now, feed.every, jitter=random.random()))
        return hand_on(feed, parsed, store, fetcher, now, submit, state, outcome,
                       corrections=corrections)
    except INFRA_ERRORS:
        raise  # not this feed's fault: the task runs again
    except (FetchError, NotAFeedError) as exc:  # validators of an answer that is no feed: not kept
        reason = redact(exc.reason if isinstance(exc, FetchError) else str(exc))  # stored, shown
        retry_after = exc.retry_after if isinstance(exc, FetchError) else None
        return record_failure(feed, store, state, outcome, now, reason, retry_after,
                              getattr(exc, "status", None))
    except Exception as exc:  # the feed boundary: a bug or an input nobody foresaw, visibly
        log.exception("feed=%s fetch or parse raised", feed.name, extra=ids)
        return record_failure(feed, store, state, outcome, now,
                              redact(f"unexpected error: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}"), None, None)


def hand_on(feed: FeedConfig, parsed: ParsedFeed, store: Store, fetcher: Fetcher, now: float,
            submit: Submit, state: dict[str, str], outcome: dict[str, Any], *,
            corrections: bool = False) -> dict[str, Any]:
    """Submit the parsed document's new entries, then remember its ids and validators."""
    ids = {"feed": feed.name}
    listed = list(dict.fromkeys(entry_article_id(feed, e) for e in parsed.entries))
    fresh = new_entries(feed, parsed, store, fetcher, corrections=corrections)
    if fresh:
        submit(feed, parsed, fresh)
    store.remember_feed_ids(feed.name, listed)
    outcome.update(outcome="ok", error="", failures=0, new_items=len(fresh), last_ok=now,
                   **item_rhythm(parsed, bool(fresh), now))
    log.debug("feed=%s outcome=ok status=%s entries=%d new=%d", feed.name, outcome["status"],
             len(parsed.entries), len(fresh), extra=ids)
    return record_poll(feed, store, state, outcome, now,
                       next_due_after_success(now, feed.every, parsed.ttl_minutes,
                                              jitter=random.random()))


def read_feed(feed: FeedConfig, state: dict[str, str], fetcher: Fetcher,
              outcome: dict[str, Any], parse: Parse = parse_feed) -> ParsedFeed | None:
    """Fetch and parse the feed, noting status, validators and the body's digest in
    ``outcome``; None when there is nothing new to parse: a 304 ("not modified"), or a 200
    whose body is byte-identical to the last one parsed ("unchanged": many servers ignore
    conditional requests, and a parse costs 30x the fetch)."""
    with metrics.FETCH_SECONDS.time():  # failed fetches too
        result = fetcher.get(feed.url, etag=state.get("etag") or None,
                             last_modified=state.get("last_modified") or None)
    outcome.update(status=result.status)
    if result.not_modified:
        outcome["outcome"] = "not modified"
        return None
    validators = {"etag": result.etag or "", "last_modified": result.last_modified or ""}
    digest = body_digest(result.content, result.content_type)
    if digest == state.get("body_hash"):
        outcome.update(outcome="unchanged", **validators)
        return None
    parsed = parse(result.content, result.content_type, url=result.url or str(feed.url),
                   timezone=feed.timezone)
    # saved with the outcome, so only after the entries are submitted; an answer that is no
    # feed raised above and keeps none of its validators
    outcome.update(body_hash=digest, **validators)
    return parsed


def record_failure(feed: FeedConfig, store: Store, state: dict[str, str], outcome: dict[str, Any],
                   now: float, reason: str, retry_after: float | None,
                   status: int | None) -> dict[str, Any]:
    failures = int(state.get("failures") or 0) + 1
    outcome.update(outcome="failed", error=reason, failures=failures,
                   status=status or outcome.get("status") or "")
    log.warning("feed=%s outcome=failed failures=%d reason=%s", feed.name, failures, reason,
                extra={"feed": feed.name})
    return record_poll(feed, store, state, outcome, now,
                       next_due_after_failure(now, feed.every, failures, retry_after))


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
    return article_id_of(entry, feed.url)


def new_entries(feed: FeedConfig, parsed: ParsedFeed, store: Store,
                fetcher: Fetcher, *, corrections: bool = False) -> list[Fresh]:
    """The entries to process: not in the feed's previous document and not processed to the
    end yet (each once, however often the feed lists it), with full text where asked. With
    ``corrections``, also the processed ones whose text changed since, listed before or not
    (alert shaping tracks the articles of stories that fired a watchlist with ``updates``).

    Article pages are fetched one after another until FULL_TEXT_BUDGET seconds are spent; the
    rest keep the feed's own content, so one poll stays well inside the task time limits."""
    listed = store.feed_ids(feed.name)
    pending: dict[str, FeedEntry] = {}
    document: dict[str, FeedEntry] = {}
    for entry in parsed.entries:
        aid = entry_article_id(feed, entry)
        document.setdefault(aid, entry)
        if aid not in listed:
            pending.setdefault(aid, entry)
    done = store.done_articles(list(pending))
    # a correction keeps its URL, so it is looked for among all the document's articles; only
    # the tracked ones have a revision, and one whose text is unchanged is skipped as before
    tracked = store.shaping.revisions(list(document)) if corrections else {}
    revised = {aid for aid, rev in tracked.items()
               if (aid in listed or aid in done) and rev != entry_revision(document[aid])}
    deadline = time.monotonic() + FULL_TEXT_BUDGET
    fresh = []
    for aid, entry in document.items():
        if aid in revised or (aid in pending and aid not in done):
            page = full_text(feed, entry, fetcher) if time.monotonic() < deadline else None
            fresh.append(Fresh(entry, page, revision=aid in revised))
    return fresh


def entry_revision(entry: FeedEntry) -> str:
    """The text of an entry as its feed gives it, as a short digest (corrections change it)."""
    return text_revision(entry.title, entry.content_html)


def full_text(feed: FeedConfig, entry: FeedEntry, fetcher: Fetcher) -> PageText | None:
    """The article page's main text, when the feed's ``full_text`` mode asks for it."""
    if not entry.link or not needs_full_text(feed.full_text, html_to_paragraphs(entry.content_html)):
        return None
    try:
        page = fetcher.get(entry.link, accept="text/html,application/xhtml+xml", kind="page")
    except FetchError as exc:
        log.info("feed=%s full-text fetch failed url=%s reason=%s", feed.name, redact_url(entry.link),
                 exc.reason, extra={"feed": feed.name})
        return None
    except Exception:  # the page boundary: a bad page or header keeps the feed's own text
        log.warning("feed=%s full-text fetch raised url=%s", feed.name, entry.link,
                    exc_info=True, extra={"feed": feed.name})
        return None
    return extract_page(page.content, page.url)


def process_entries(feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh], store: Store,
                    matcher: Matcher, dump_dir: Path, now: float,
                    shaper: Shaper | None = None) -> list[str]:
    """Normalize, dedupe, dump, match and alert each entry (through ``shaper``'s watchlist
    rules when given); one bad entry never stops the rest, an infrastructure error (Redis,
    disk) stops them all so that the task runs again. Safe to run twice: every step is keyed
    by the article id. Returns the ids of the alerts and events to send now."""
    alerts: list[str] = []
    first_seen = datetime.fromtimestamp(now, UTC)
    for item in items:
        try:
            article = normalize_entry(item.entry, parsed, feed_url=feed.url, first_seen=first_seen,
                                      feed_name=feed.name, timezone=feed.timezone, page=item.page)
        except BadEntryError as exc:  # this entry's data: skipped, the others go on
            log.warning("feed=%s entry skipped: %s", feed.name, exc, extra={"feed": feed.name})
            continue
        try:
            if item.revision and shaper is not None:
                alerts += shaper.revise(article, entry_revision(item.entry),
                                        render_dump(dump_of(article)), dump_dir, now)
            else:
                alerts += process_article(article, store, matcher, dump_dir, now, shaper,
                                          entry_revision(item.entry))
        except INFRA_ERRORS:
            raise
        except Exception:  # recorded, and the other entries go on
            log.exception("feed=%s entry failed guid=%s link=%s", feed.name, item.entry.guid,
                          item.entry.link, extra={"feed": feed.name})
    return alerts


def process_article(article: Article, store: Store, matcher: Matcher, dump_dir: Path,
                    now: float, shaper: Shaper | None = None, rev: str | None = None) -> list[str]:
    """One article: its story, and for a new story one dump file and one stream entry, then
    its alerts. Whatever text a second run sees, the first run's dump text is the one used."""
    claim = store.claim_story(article.id, story_keys(article), now)
    if claim.fresh:
        metrics.ARTICLES.inc()
        (metrics.STORIES if claim.is_new else metrics.DUPLICATES).inc()
    text = store.first_text(article.id, render_dump(dump_of(article)))
    if claim.is_new:
        path = write_story_dump(store, dump_dir, article.id, text, now)
        store.add_article(article.id, article_json(article, claim.story_id, path), now)
    if shaper is not None:
        created = shaper.fire(article, claim, match_article(matcher, article), text, now, rev)
        store.mark_done(article.id)
        return created
    created = []
    for hit in match_article(matcher, article):
        record = alert_json(hit, article, claim.story_id, text, now, salience(hit.matches, article))
        alert_id, is_new = store.claim_alert(claim.story_id, hit.watchlist, record["id"], record,
                                             now, article.id)
        if is_new:
            metrics.ALERTS.labels(hit.watchlist).inc()
            log.info("alert=%s watchlist=%s story=%s article=%s", alert_id, hit.watchlist,
                     claim.story_id, article.id,
                     extra={"alert": alert_id, "story": claim.story_id, "article": article.id})
            created.append(alert_id)
    store.mark_done(article.id)
    return created


def write_story_dump(store: Store, dump_dir: Path, article_id: str, text: str,
                     now: float) -> Path:
    """Write the dump at the sequence number Redis assigned this article (the same on retries,
    where ``place_dump`` finds its own file)."""
    recorded = store.article_file(article_id)
    if recorded:  # an earlier run wrote and recorded it
        return Path(recorded)
    day = day_of(parse_dump(text).published)
    seq = store.claim_seq(article_id, day, now)
    while not place_dump(dump_path(dump_dir, day, seq, article_id), text):
        seq = store.claim_seq(article_id, day, now, force_new=True)  # taken by a file not ours
    return dump_path(dump_dir, day, seq, article_id)


def article_json(article: Article, story_id: str, path: Path | None) -> dict[str, Any]:
    return {
        "id": article.id, "story": story_id, "title": article.title, "url": article.url,
        "canonical_url": article.canonical_url, "guid": article.guid, "source": article.source,
        "author": article.author, "published": article.published.isoformat(),
        "feed": redact_url(article.feed), "file": str(path) if path else None,
    }


def alert_json(hit: WatchlistHit, article: Article, story_id: str, dump_text: str,
               now: float, salience: float | None = None) -> dict[str, Any]:
    return {
        "id": "alert_" + uuid.uuid4().hex,
        "watchlist": hit.watchlist,
        "salience": salience,
        "entities": list(hit.entities),
        "matches": [{"entity": m.entity, "term": m.term, "field": m.field, "start": m.start,
                     "end": m.end, "snippet": m.snippet} for m in hit.matches],
        "created": datetime.fromtimestamp(now, UTC).isoformat(),
        "story": story_id,
        "article": {**article_json(article, story_id, None), "dump": dump_text},
    }
