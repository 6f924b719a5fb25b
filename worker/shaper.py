"""Alert shaping wired to the store: fire a story's hits through each watchlist's salience
floor, breaking bar, throttle and digest; queue digests, updates and corrections.

Every step is keyed by an id that is the same when it runs twice (the alert id of a story and
watchlist, ``event_id`` of a digest or update), so a retry after a crash, or two workers at
once, queue each event once. The decisions are ``worker.shaping``'s; see docs/shaping.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker import metrics
from worker.config import WatchlistConfig
from worker.deliver import alert_payload
from worker.dump import dump_of, dump_path, place_dump
from worker.models import Article, WatchlistHit
from worker.pipeline import alert_json, article_json
from worker.shaping import (
    UPDATE_GAP,
    Copy,
    body_digest,
    breaking_reached,
    digest_window,
    event_id,
    merge_updates,
    outlets_within,
    route,
    salience,
    text_changes,
)
from worker.store import Store, StoryClaim

log = logging.getLogger("newsmon.shaper")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class Shaper:
    """The watchlists of one configuration, shaping the alerts of every article processed."""

    def __init__(self, store: Store, watchlists: Sequence[WatchlistConfig]):
        self.store = store
        self.shaping = store.shaping
        self.lists = {w.name: w for w in watchlists}
        self.updating = [w for w in watchlists if w.updates]
        # Copies per outlet are recorded only when a watchlist counts them.
        self.tracks_copies = any(w.breaking or w.updates for w in watchlists)

    # -- one article's hits ----------------------------------------------------------------------
    def fire(self, article: Article, claim: StoryClaim, hits: list[WatchlistHit],
             dump_text: str, now: float, rev: str | None = None) -> list[str]:
        """Alerts (and updates) this article makes; returns the ids to send now."""
        out: list[str] = []
        candidates: dict[str, dict[str, Any]] = {}
        for hit in hits:
            wl = self.lists.get(hit.watchlist)
            score = salience(hit.matches, article)
            if wl is not None and score < wl.min_salience:
                log.info("watchlist=%s article=%s salience=%.3f below min_salience=%.3f",
                         hit.watchlist, article.id, score, wl.min_salience)
                continue
            record = alert_json(hit, article, claim.story_id, dump_text, now, score)
            if wl is not None and wl.breaking is not None:
                candidates[wl.name] = record     # fires once the story reaches the bar
            else:
                out += self._fire(wl, hit.watchlist, claim, record, now)
        if self.tracks_copies:
            copy = Copy(article.feed, article.source, article.url, now, article.id)
            copies, cands = self.shaping.record_copy(claim.story_id, article.feed,
                                                     copy.as_json(), candidates, now)
            out += self._breaking(claim, [Copy(**c) for c in copies.values()], cands, now)
            mine = copies.get(article.feed, {})
            if not claim.is_new and mine.get("article") == article.id:  # a new outlet
                out += self._updates(article, claim.story_id, dump_text, len(copies), now,
                                     {"reason": "outlet", "changed": ["outlets"]},
                                     ("outlet", article.feed), after=mine["first_seen"])
        if rev is not None and self.updating:
            self._track(article, claim.story_id, rev, now)
        return out

    def _fire(self, wl: WatchlistConfig | None, name: str, claim: StoryClaim,
              record: dict[str, Any], now: float) -> list[str]:
        shaped = wl is not None and wl.shaped
        aid, new = self.store.claim_alert(claim.story_id, name, record["id"], record, now,
                                          shaped=shaped)
        if new:
            metrics.ALERTS.labels(name).inc()
            log.info("alert=%s watchlist=%s story=%s article=%s", aid, name, claim.story_id,
                     record["article"]["id"],
                     extra={"alert": aid, "story": claim.story_id,
                            "article": record["article"]["id"]})
        if not shaped:
            return [aid] if new else []
        if not new and claim.fresh:
            return []      # an earlier copy fired it; a retry (not fresh) routes it again
        assert wl is not None
        return self._route(wl, aid, {**record, "id": aid}, now)

    def _route(self, wl: WatchlistConfig, aid: str, record: dict[str, Any],
               now: float) -> list[str]:
        window = digest_window(now, wl.digest) if wl.digest else None
        verdict = self.shaping.shape_alert(
            wl.name, aid, record, now, route(wl), wl.throttle.count if wl.throttle else 0,
            now - wl.throttle.per if wl.throttle else 0.0,
            (window.start, window.end) if window else (0.0, 0.0))
        self.shaping.set_route(aid, verdict, now)
        if verdict != "send":
            log.info("alert=%s watchlist=%s goes out in a digest (%s)", aid, wl.name, verdict,
                     extra={"alert": aid})
        return [aid] if verdict == "send" else []

    def _breaking(self, claim: StoryClaim, copies: list[Copy],
                  candidates: dict[str, dict[str, Any]], now: float) -> list[str]:
        out = []
        for name, record in candidates.items():
            wl = self.lists.get(name)
            if wl is None or wl.breaking is None or not breaking_reached(copies, wl.breaking):
                continue
            counted = outlets_within(copies, wl.breaking)
            record = {**record, "created": iso(now), "outlets": len({c.feed for c in counted}),
                      "copies": [{"source": c.source, "feed": c.feed, "url": c.url,
                                  "first_seen": iso(c.first_seen)}
                                 for c in sorted(copies, key=lambda c: c.first_seen)]}
            out += self._fire(wl, name, claim, record, now)
        return out

    # -- alert.updated ---------------------------------------------------------------------------
    def _updates(self, article: Article, story: str, dump_text: str, outlets: int, now: float,
                 change: dict[str, Any], cause: tuple[str, ...], after: float | None = None
                 ) -> list[str]:
        """An alert.updated for every watchlist with updates that fired on the story (with
        ``after``: only those that fired before that time, the new copy's first sight; an
        alert this very copy made, a breaking story say, already tells of it)."""
        out = []
        for wl in self.updating:
            fired = self.shaping.fired_alert(story, wl.name)
            if fired is None or (after is not None and fired[1] >= after):
                continue
            aid = fired[0]
            update = update_data(event_id("update", wl.name, story, *cause), aid, wl.name,
                                 article, story, dump_text, outlets, now, change)
            out += self._send_update(wl.name, story, update, now)
        return out

    def _send_update(self, watchlist: str, story: str, update: dict[str, Any],
                     now: float) -> list[str]:
        verdict, held = self.shaping.claim_update(watchlist, story, update, now, UPDATE_GAP)
        if verdict != "send":
            log.info("update=%s watchlist=%s story=%s held: one update per %.0f s", update["id"],
                     watchlist, story, UPDATE_GAP)
            return []
        merged = merge_updates([*(json.loads(held) if held else []), update])
        self.shaping.add_event(update_record({**merged, "id": update["id"]}), now)
        self.shaping.commit_updates(watchlist, story, held)
        return [update["id"]]

    def _track(self, article: Article, story: str, rev: str, now: float) -> None:
        """Remember the text of an article whose story fired a watchlist with updates, so a
        correction at its URL is noticed."""
        if any(self.shaping.fired_alert(story, w.name) for w in self.updating):
            self.shaping.track_revision(article.id, {
                "rev": rev, "story": story, "title": article.title,
                "body": body_digest(article)}, now, only_new=True)

    def revise(self, article: Article, rev: str, dump_text: str, dump_dir: Path,
               now: float) -> list[str]:
        """A correction: the article at a tracked URL has a new text. Its new dump is written
        (once per revision), each watchlist with updates that fired on its story gets an
        alert.updated, then the new text becomes the one corrections are compared with."""
        old = self.shaping.revision(article.id)
        if not old or old.get("rev") == rev:
            return []
        story = old["story"]
        changed = text_changes(old, article)
        if not changed:  # only the feed's markup changed: no new dump, no update
            self.shaping.track_revision(article.id, {"rev": rev}, now, only_new=False)
            return []
        path = self._write_revision(article, rev, dump_text, dump_dir, now)
        out = self._updates(article, story, dump_text, self.shaping.outlets(story) or 1, now,
                            {"reason": "correction", "changed": changed, "file": str(path)},
                            ("text", article.id, rev))
        self.shaping.track_revision(article.id, {
            "rev": rev, "title": article.title, "body": body_digest(article)}, now, only_new=False)
        log.info("article=%s story=%s corrected (%s): new dump %s", article.id, story,
                 ", ".join(changed), path, extra={"article": article.id, "story": story})
        return out

    def _write_revision(self, article: Article, rev: str, text: str, dump_dir: Path,
                        now: float) -> Path:
        day = dump_of(article).published.date().isoformat()
        seq = self.shaping.revision_seq(article.id, rev, day, now)
        while not place_dump(dump_path(dump_dir, day, seq, article.id), text):
            seq = self.shaping.revision_seq(article.id, rev, day, now, taken=seq)  # another file's
        return dump_path(dump_dir, day, seq, article.id)

    # -- digests and held updates (beat, and the end of run --once) ------------------------------
    def close(self, now: float, force: bool = False) -> list[str]:
        """Seal ended digest windows (``force``: every open one), flush what throttles held
        back where they have room, and queue every sealed digest and every held update that
        is due. Safe to run twice or concurrently. Returns the ids queued."""
        out = []
        for wl in self.lists.values():
            if wl.digest is not None:
                window = digest_window(now, wl.digest)
                self.shaping.seal_window(wl.name, now, (window.start, window.end), force)
            elif wl.throttle is not None:
                self.shaping.flush_held(wl.name, now, wl.throttle.count, now - wl.throttle.per)
            if wl.shaped:
                out += self._queue_sealed(wl.name, now)
            if wl.updates:
                out += self._flush_updates(wl.name, now)
        return out

    def _queue_sealed(self, watchlist: str, now: float) -> list[str]:
        out = []
        for field, start, end, alerts in self.shaping.sealed(watchlist):
            record = digest_record(event_id("digest", watchlist, field), watchlist, start, end,
                                   [alert_payload(a, self._copies(a["story"]))["data"]
                                    for a in sorted(alerts, key=lambda a: a["created"])])
            if self.shaping.add_event(record, now):
                log.info("digest=%s watchlist=%s alerts=%d window=%s..%s", record["id"],
                         watchlist, len(alerts), iso(start), iso(end))
            self.shaping.mark_digested([a["id"] for a in alerts], record["id"])
            self.shaping.drop_sealed(watchlist, field)   # after it is queued: never lost
            out.append(record["id"])
        return out

    def _copies(self, story: str) -> int:
        return int(self.store.story(story).get("copies") or 1)

    def _flush_updates(self, watchlist: str, now: float) -> list[str]:
        out = []
        for story in self.shaping.due_updates(watchlist, now):
            held = self.shaping.take_updates(watchlist, story, now, UPDATE_GAP)
            if not held:
                continue
            updates = json.loads(held)
            merged = merge_updates(updates)
            uid = event_id("update", *(u["id"] for u in updates))
            self.shaping.add_event(update_record({**merged, "id": uid}), now)
            self.shaping.commit_updates(watchlist, story, held)
            out.append(uid)
        return out


def update_data(uid: str, alert_id: str, watchlist: str, article: Article, story: str,
                dump_text: str, outlets: int, now: float, change: dict[str, Any]
                ) -> dict[str, Any]:
    """The data of an alert.updated (docs/webhook-payload.schema.json)."""
    return {"id": uid, "alert": alert_id, "watchlist": watchlist, "story": story,
            "created": iso(now), "outlets": outlets, **change,
            "copy": {"feed": article.feed, "source": article.source, "url": article.url,
                     "first_seen": iso(now)},
            "article": {**{k: v for k, v in article_json(article, story, None).items()
                           if k in ("id", "title", "url", "canonical_url", "source", "author",
                                    "published")},
                        "story": story, "copies": outlets, "dump": dump_text}}


def update_record(data: dict[str, Any]) -> dict[str, Any]:
    """An alert.updated as stored in the outbox: the event as it is sent."""
    sent = {k: v for k, v in data.items() if k != "file"}
    return {"id": data["id"], "watchlist": data["watchlist"], "type": "alert.updated",
            "timestamp": data["created"], "data": sent, "file": data.get("file")}


def digest_record(did: str, watchlist: str, start: float, end: float,
                  alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """A digest.created as stored in the outbox: the event as it is sent."""
    return {"id": did, "watchlist": watchlist, "type": "digest.created", "timestamp": iso(end),
            "data": {"id": did, "watchlist": watchlist,
                     "window": {"start": iso(start), "end": iso(end)}, "alerts": alerts}}
