"""What a running process holds: settings, the Redis store, one HTTP fetcher, the configuration
and its compiled watchlists. Tasks and ``newsmon run --once`` share it; it decides nothing."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from functools import cached_property
from typing import Any

from worker.config import Config, ConfigWatcher, FeedConfig
from worker.fetch import Fetcher
from worker.match import Matcher, compile_watchlists
from worker.models import FeedEntry, ParsedFeed
from worker.normalize import PageText
from worker.pipeline import Fresh, Submit, poll_feed, process_entries
from worker.schedule import CLAIM_LEASE
from worker.settings import Settings
from worker.store import Store

log = logging.getLogger("newsmon.service")


class Service:
    """Lazily built, one per process (threads share it)."""

    def __init__(self, settings: Settings, redis_url: str):
        self.settings = settings
        self.redis_url = redis_url
        self.watcher = ConfigWatcher(settings.config_dir)
        self._matcher: tuple[int, Matcher] | None = None

    @cached_property
    def store(self) -> Store:
        return Store.from_url(self.redis_url, self.settings.retention_days)

    @cached_property
    def fetcher(self) -> Fetcher:
        return Fetcher(self.settings.allow_networks)

    def config(self) -> Config:
        return self.watcher.current()

    def matcher(self) -> Matcher:
        config = self.config()
        if self._matcher is None or self._matcher[0] != id(config):
            self._matcher = (id(config), compile_watchlists(config.watchlists))
        return self._matcher[1]

    def feed(self, name: str) -> FeedConfig | None:
        return next((f for f in self.config().feeds if f.name == name), None)

    def due_feeds(self, now: float) -> list[FeedConfig]:
        """One beat tick: follow the configuration, then hand out each due feed once."""
        config = self.config()
        self.store.sync_feeds([f.name for f in config.feeds], now)
        self.store.mark_beat(now)
        feeds = {f.name: f for f in config.feeds}
        return [feeds[name] for name, _ in self.store.claim_due(now, CLAIM_LEASE) if name in feeds]

    def poll(self, feed: FeedConfig, submit: Submit) -> dict[str, Any]:
        return poll_feed(feed, self.store, self.fetcher, time.time(), submit)

    def process(self, feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh]) -> list[str]:
        return process_entries(feed, parsed, items, self.store, self.matcher(),
                               self.settings.dump_dir, time.time())

    def run_once(self, workers: int = 8) -> dict[str, Any]:
        """Poll every feed once and process everything that came in, in this process."""
        config = self.config()
        self.store.sync_feeds([f.name for f in config.feeds], time.time())
        alerts: list[str] = []

        def submit(feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh]) -> None:
            alerts.extend(self.process(feed, parsed, items))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(lambda f: self.poll(f, submit), config.feeds))
        failed = [(f.name, o.get("error")) for f, o in zip(config.feeds, outcomes, strict=True)
                  if o.get("outcome") == "failed"]
        return {"feeds": len(config.feeds), "failed": failed,
                "new_items": sum(o.get("new_items", 0) for o in outcomes), "alerts": alerts}


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
        {"entry": _jsonable(i.entry), "page": _jsonable(i.page) if i.page else None}
        for i in items]}


def decode_batch(data: dict[str, Any]) -> tuple[ParsedFeed, list[Fresh]]:
    parsed = ParsedFeed(**{**data["feed"], "entries": ()})
    items = []
    for item in data["items"]:
        entry = FeedEntry(**{**item["entry"], "published": _dt(item["entry"]["published"])})
        page = item["page"]
        if page:
            page = PageText(**{**page, "paragraphs": tuple(page["paragraphs"]),
                               "published": _dt(page["published"])})
        items.append(Fresh(entry, page))
    return parsed, items
