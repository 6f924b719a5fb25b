"""What a running process holds: settings, the Redis store, one HTTP fetcher, the configuration
and its compiled watchlists. Tasks and ``newsmon run --once`` share it; it decides nothing."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    Future,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import asdict
from datetime import datetime
from functools import cached_property, partial
from typing import Any

from worker.config import Config, ConfigWatcher, FeedConfig
from worker.deliver import (
    DEST_SLOTS,
    QUEUE_LEASE,
    Attempt,
    DeliveryResult,
    config_secrets,
    deliver_claim,
    destinations,
    ping_webhook,
    webhook_digest,
)
from worker.errors import ConfigError, NotAFeedError
from worker.fetch import Fetcher, parse_networks
from worker.isolate import Isolated, StepTimeout
from worker.match import Matcher, compile_watchlists
from worker.models import FeedEntry, ParsedFeed
from worker.normalize import PageText
from worker.parse import parse_feed
from worker.pipeline import Fresh, Submit, poll_feed, process_entries
from worker.redact import remember
from worker.schedule import CLAIM_LEASE, HANDOUT_LEASE, fetch_decision
from worker.settings import Settings
from worker.shaper import Shaper
from worker.store import ConfigVersion, DeliveryClaim, Store

log = logging.getLogger("newsmon.service")
PARSE_DEADLINE = 20.0  # seconds; a 15 MiB feed parses in about 5 s on one core
PARSE_PROCESSES = max(1, os.cpu_count() or 1)  # parsing is CPU: one child per core
# False in a Celery prefork child, where the task time limits already end a stuck parse.
ISOLATE_PARSE = True
REPORT_EVERY = 15.0  # seconds between reports of the configuration a process runs
RESYNC_EVERY = 60.0  # seconds between full syncs of the configured feeds to the due set


class Service:
    """Lazily built, one per process (threads share it)."""

    def __init__(self, settings: Settings, redis_url: str):
        self.settings = settings
        self.redis_url = redis_url
        self.watcher = ConfigWatcher(settings.config_dir)
        self._matcher: tuple[int, Matcher] | None = None
        self._shaper: tuple[int, Shaper] | None = None
        self._secrets_of: Config | None = None
        self._reported: tuple[str, float] | None = None   # digest reported, when
        self._newest = ConfigVersion("", 0.0)
        self._synced: tuple[str, float] | None = None      # digest synced to the due set, when
        self._feeds: tuple[Config, dict[str, FeedConfig]] | None = None

    @cached_property
    def store(self) -> Store:
        return Store.from_settings(self.settings, self.redis_url)

    @cached_property
    def fetcher(self) -> Fetcher:
        """Feeds and article pages; connections per host are counted across every worker."""
        return Fetcher(self.settings.allow_networks, leases=self.store.hosts)

    def config(self) -> Config:
        config = self.watcher.current()
        if config is not self._secrets_of:  # scrubbed from logs and error reports from now on
            remember(config_secrets(config))
            self._secrets_of = config
        return config

    def matcher(self) -> Matcher:
        config = self.config()
        if self._matcher is None or self._matcher[0] != id(config):
            self._matcher = (id(config), compile_watchlists(config.watchlists, config.feeds))
        return self._matcher[1]

    def shaper(self) -> Shaper:
        config = self.config()
        if self._shaper is None or self._shaper[0] != id(config):
            self._shaper = (id(config), Shaper(self.store, config.watchlists))
        return self._shaper[1]

    def close_shaping(self, now: float, force: bool = False) -> list[str]:
        """Queue the digests whose windows ended (``force``: every open one), what throttles
        held back where they have room, and held updates that are due."""
        return self.shaper().close(now, force)

    def feed(self, name: str) -> FeedConfig | None:
        config = self.config()
        if self._feeds is None or self._feeds[0] is not config:  # by name: 100,000 feeds scale
            self._feeds = (config, {f.name: f for f in config.feeds})
        return self._feeds[1].get(name)

    def due_feeds(self, now: float) -> list[FeedConfig]:
        """One beat tick: follow the configuration, then hand out each due feed once."""
        return [feed for feed, _ in self.hand_out(now)]

    def hand_out(self, now: float) -> list[tuple[FeedConfig, str]]:
        """Like due_feeds, with the hand-out's token that the fetch must present. Only a
        process that runs the newest configuration acts, so a rollout never makes feeds flap.
        The feeds hold HANDOUT_LEASE until ``confirm_hand_out`` (their fetches are queued)."""
        config = self.config()
        self.store.mark_beat(now)
        if not self.runs_newest_config(now, report=True):
            log.info("tick left to a newer configuration: this process runs %s, the newest is %s",
                     self.watcher.version[0], self._newest.digest)
            self._synced = None  # should this process act again, it syncs first
            return []
        # Sending every feed name costs O(feeds) each tick: only when this process's
        # configuration changed, and every RESYNC_EVERY seconds in case Redis lost the due set.
        digest = self.watcher.version[0]
        if self._synced is None or self._synced[0] != digest or now - self._synced[1] > RESYNC_EVERY:
            self.store.sync_feeds([f.name for f in config.feeds], now)
            self._synced = (digest, now)
        self.store.keep_disabled({webhook_digest(hook) for hook in config.webhooks.values()})
        token = uuid.uuid4().hex
        return [(feed, token) for name, _ in self.store.claim_due(now, HANDOUT_LEASE, token=token)
                if (feed := self.feed(name)) is not None]

    def confirm_hand_out(self, handed: list[tuple[FeedConfig, str]], now: float) -> None:
        """These feeds of the hand-out at ``now`` are queued: their leases become CLAIM_LEASE
        (the fetch messages expire then too)."""
        for token in {t for _, t in handed}:
            self.store.confirm_due([f.name for f, t in handed if t == token], token,
                                   now + HANDOUT_LEASE, now + CLAIM_LEASE)

    # -- configuration versions across processes -----------------------------------------------
    def config_digest(self) -> str:
        """The digest of the configuration this process runs (fetch tasks carry the tick's)."""
        self.config()
        return self.watcher.version[0]

    def runs_newest_config(self, now: float, report: bool = False) -> bool:
        """Whether this process runs the newest configuration any live process reported. It
        reports its own at least every REPORT_EVERY seconds (``report``: now)."""
        self.config()
        mine = ConfigVersion(*self.watcher.version)
        stale = self._reported is None or self._reported[0] != mine.digest or (
            now - self._reported[1] > REPORT_EVERY)
        if report or stale:
            self._newest = self.store.versions.publish(mine, now)
            self._reported = (mine.digest, now)
        return self._newest.digest == mine.digest

    def feed_to_fetch(self, name: str, digest: str | None, now: float) -> FeedConfig | None:
        """The feed a fetch task handed out by a tick (with that tick's configuration digest)
        should poll, or None; a process behind the newest configuration gives it back."""
        feed = self.feed(name)
        same = digest is None or digest == self.config_digest()
        decision = fetch_decision(feed is not None, same, same or self.runs_newest_config(now))
        if decision == "give back":
            log.info("feed=%s given back: handed out with configuration %s, this process runs %s",
                     name, digest, self.config_digest(), extra={"feed": name})
            self.store.set_due(name, now)
        return feed if decision == "fetch" else None

    def poll(self, feed: FeedConfig, submit: Submit) -> dict[str, Any]:
        return poll_feed(feed, self.store, self.fetcher, time.time(), submit, self.parse,
                         corrections=bool(self.shaper().updating))
    # -- parsing within a deadline -------------------------------------------------------------
    @cached_property
    def isolated(self) -> Isolated:
        return Isolated(PARSE_PROCESSES)

    def parse(self, data: bytes, content_type: str | None, *, url: str,
              timezone: str | None = None) -> ParsedFeed:
        """``parse_feed`` within PARSE_DEADLINE: in a child process that is killed past it,
        unless Celery's own time limits bound this process (a prefork pool child)."""
        if not ISOLATE_PARSE:
            return parse_feed(data, content_type, url=url, timezone=timezone)
        try:
            return self.isolated.call(partial(parse_feed, url=url, timezone=timezone), data,
                                      content_type, deadline=PARSE_DEADLINE)
        except StepTimeout as exc:
            raise NotAFeedError(f"parsing {exc}") from None

    def process(self, feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh]) -> list[str]:
        return process_entries(feed, parsed, items, self.store, self.matcher(),
                               self.settings.dump_dir, time.time(), self.shaper())

    def cycle_step(self, cycle: str, failed_feed: str = "", **increments: int) -> None:
        """Count a step of a poll cycle (a fetch, a processed batch); the step that ends it
        logs the cycle's one summary line."""
        if not cycle:  # a task queued by an older version, or not from a beat tick
            return
        fields = self.store.cycle_step(cycle, failed_feed, **increments)
        if fields is not None:
            log.info("%s", cycle_summary(fields))

    def run_once(self, workers: int = 8, delivery_timeout: float = 60.0) -> dict[str, Any]:
        """Poll every feed once and process everything that came in, in this process; close
        the digest windows it filled (and queue what earlier runs left due); then deliver
        until every new alert is delivered, dead or only recorded, or the timeout."""
        config = self.config()
        self.store.sync_feeds([f.name for f in config.feeds], time.time())
        alerts: list[str] = self.close_shaping(time.time())

        def submit(feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh]) -> None:
            alerts.extend(self.process(feed, parsed, items))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(lambda f: self.poll(f, submit), config.feeds))
        failed = [(f.name, o.get("error")) for f, o in zip(config.feeds, outcomes, strict=True)
                  if o.get("outcome") == "failed"]
        alerts += self.close_shaping(time.time(), force=True)  # cron users get their digests
        deliveries = self.deliver_until_done(alerts, delivery_timeout, workers=2 * workers)
        self.store.forget_alerts(time.time())
        return {"feeds": len(config.feeds), "failed": failed,
                "polled": [(f.name, o) for f, o in zip(config.feeds, outcomes, strict=True)],
                "new_items": sum(o.get("new_items", 0) for o in outcomes), "alerts": alerts,
                "deliveries": deliveries}

    # -- delivery ------------------------------------------------------------------------------
    @cached_property
    def sender(self) -> Fetcher:
        """Deliveries' own connection pool, so webhooks never wait behind feed fetches."""
        return Fetcher(self.settings.allow_networks, per_host=2 * DEST_SLOTS)

    @cached_property
    def allowed(self) -> list[Any]:
        return parse_networks(self.settings.allow_networks)

    def claim_deliveries(self, now: float, alert_ids: list[str] | None = None,
                         limit: int = 1000) -> list[DeliveryClaim]:
        """Hand out the due outbox members (or these new alerts), each once. A new alert is
        first split into one member per destination of its watchlist, as configured now."""
        claims = self.store.claim_deliveries(now, HANDOUT_LEASE, uuid.uuid4().hex, limit=limit,
                                             members=alert_ids)
        ready = [c for c in claims if "|" in c.member]
        fresh = [c for c in claims if "|" not in c.member]
        if not fresh:
            return ready
        config = self.config()
        lists = {w.name: w for w in config.watchlists}
        stories = self.store.alert_stories([c.member for c in fresh])
        health = [f"webhook:{config.health_webhook}"] if config.health_webhook else []
        for claim, story in zip(fresh, stories, strict=True):
            # watchlist "": a feed health event, for the health webhook (if one is configured)
            dests = destinations(lists.get(claim.watchlist)) if claim.watchlist else health
            ready += self.store.expand_alert(claim, story, dests, now, HANDOUT_LEASE)
        return ready

    def confirm_deliveries(self, claims: list[DeliveryClaim]) -> None:
        """These claims' deliver messages are queued: each waits QUEUE_LEASE (from its claim)
        before it is handed out again, unless begun or claimed again meanwhile."""
        self.store.confirm_claims(claims, QUEUE_LEASE - HANDOUT_LEASE)

    def deliver(self, claim: DeliveryClaim) -> DeliveryResult:
        """One attempt of a claimed member, recorded on its alert ("busy": ask again after
        ``wait`` seconds, the claim is still ours)."""
        return deliver_claim(claim, self.store, self.sender, self.config(), allowed=self.allowed)

    def deliver_until_done(self, alert_ids: list[str], timeout: float,
                           workers: int = 16) -> dict[str, int]:
        """Deliver from the outbox in this process (any due member, not only these alerts)
        until none of ``alert_ids`` is pending or retrying, or ``timeout`` seconds pass; then
        let the attempts in flight finish. Returns how many of them ended in each state."""
        deadline = time.monotonic() + timeout
        waiting, checked = set(alert_ids), 0.0
        running: dict[Future[DeliveryResult], DeliveryClaim] = {}
        busy: list[tuple[float, DeliveryClaim]] = []  # claims to try again at a time
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while True:
                now = time.time()
                claims = [claim for when, claim in busy if when <= now]
                busy = [(when, claim) for when, claim in busy if when > now]
                if len(running) + len(claims) < workers:  # no more than there are threads
                    claims += self.claim_deliveries(now, limit=workers - len(running) - len(claims))
                running |= {pool.submit(self.deliver, claim): claim for claim in claims}
                if not running or time.monotonic() - checked > 0.1:
                    waiting, checked = self._unfinished(waiting), time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0 or not waiting:
                    break
                due = min([self.store.outbox_next() or now + 1.0, *(when for when, _ in busy)])
                busy += self._wait_for_any(running, min(max(due - time.time(), 0.01), left, 0.5))
            self._wait_for_any(running, None)
        return dict(Counter(s or "missing" for s in self.store.delivery_states(alert_ids)
                            .values()))

    def _unfinished(self, alert_ids: set[str], chunk: int = 100) -> set[str]:
        """Some of these alerts still pending or retrying, if any is: checked in chunks, up to
        the first chunk that has one (the rest are kept unchecked for the next call)."""
        ids = list(alert_ids)
        for start in range(0, len(ids), chunk):
            states = self.store.delivery_states(ids[start:start + chunk])
            left = {a for a, s in states.items() if s in ("pending", "retrying")}
            if left:
                return left | set(ids[start + chunk:])
        return set()

    @staticmethod
    def _wait_for_any(running: dict[Future[DeliveryResult], DeliveryClaim],
                      timeout: float | None) -> list[tuple[float, DeliveryClaim]]:
        """Wait until an attempt finishes or ``timeout`` passes (None: until all finish); the
        finished ones leave ``running``. Returns the claims to try again later (busy)."""
        if not running:
            time.sleep(timeout or 0)
            return []
        done, _ = wait(running, timeout=timeout,
                       return_when=ALL_COMPLETED if timeout is None else FIRST_COMPLETED)
        again = []
        for future in done:
            claim = running.pop(future)
            if future.exception():  # the member's lease runs out and it is tried again
                log.error("delivery failed unexpectedly", exc_info=future.exception())
            elif future.result().outcome == "busy":
                again.append((time.time() + future.result().wait, claim))
        return again

    def replay(self, alert_ids: list[str]) -> dict[str, int]:
        """Queue these alerts' dead destinations again: destinations queued per alert id
        (-1: no such alert)."""
        now = time.time()
        return {aid: self.store.replay(aid, now) for aid in alert_ids}

    def replay_dead(self) -> dict[str, int]:
        """Queue every dead-lettered destination again."""
        return self.replay(self.store.dead_alerts())

    def test_webhook(self, name: str) -> Attempt:
        """Send a signed ping to a configured webhook and return what it answered."""
        hook = self.config().webhooks.get(name)
        if hook is None:
            raise ConfigError(f"no webhook named {name!r} in {self.settings.config_dir}")
        return ping_webhook(self.sender, name, hook, time.time(), "ping_" + uuid.uuid4().hex)


def cycle_summary(fields: dict[str, str]) -> str:
    """"poll cycle: 3 feeds polled, 5 new articles, 1 alert, 1 failed (wire)"."""
    failed = sorted(k.removeprefix("fail:") for k in fields if k.startswith("fail:"))

    def n(key: str) -> int:
        return int(fields.get(key) or 0)

    return (f"poll cycle: {n('polled')} feeds polled, {n('new')} new articles, "
            f"{n('alerts')} alerts, {len(failed)} failed" + (f" ({', '.join(failed)})"
                                                             if failed else ""))


# -- JSON for Celery messages ---------------------------------------------------------------
def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _jsonable(obj: Any) -> Any:
    data = asdict(obj)
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    return data


def encode_batch(parsed: ParsedFeed, items: list[Fresh]) -> dict[str, Any]:
    meta = _jsonable(ParsedFeed(parsed.format, parsed.title, parsed.link, parsed.author,
                                parsed.ttl_minutes, ()))
    return {"feed": meta, "items": [
        {"entry": _jsonable(i.entry), "page": _jsonable(i.page) if i.page else None,
         "revision": i.revision} for i in items]}


def decode_batch(data: dict[str, Any]) -> tuple[ParsedFeed, list[Fresh]]:
    parsed = ParsedFeed(**{**data["feed"], "entries": ()})
    items = []
    for item in data["items"]:
        entry = FeedEntry(**{**item["entry"], "published": _dt(item["entry"]["published"])})
        page = item["page"]
        if page:
            page = PageText(**{**page, "paragraphs": tuple(page["paragraphs"]),
                               "published": _dt(page["published"])})
        items.append(Fresh(entry, page, revision=bool(item.get("revision"))))
    return parsed, items
