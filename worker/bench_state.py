"""The state soak benchmark (``newsmon bench --only state``): the real pipeline (poll, parse,
pick new entries, normalize, story claim, dump, match, alert) on a simulated clock, through
60 days of feeds whose items come and go plus items that never leave, printing Redis memory
per day. It must level off once the retention windows are full.

The store's expiry is absolute on the caller's clock, and the benchmark's Redis does not know
the simulated time: after each simulated day the benchmark deletes the keys whose expiry time
has passed on that clock (one Lua sweep), which is what Redis does by itself on a wall clock.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from html import escape
from pathlib import Path
from typing import Any

from worker.fetch import FetchResult

DAY = 86400.0

# Deletes keys whose absolute expiry (PEXPIRETIME) is before ARGV[2], SCAN cursor ARGV[1];
# returns the next cursor. A benchmark tool only: it names keys it found, not KEYS.
_SWEEP = """
local res = redis.call('SCAN', ARGV[1], 'COUNT', 5000)
local now = tonumber(ARGV[2])
for _, key in ipairs(res[2]) do
  local at = redis.call('PEXPIRETIME', key)
  if at > 0 and at <= now then redis.call('DEL', key) end
end
return res[1]
"""



class SimulatedFeeds:
    """Feeds whose documents the benchmark writes: each lists its newest items and a few that
    never leave; a fifth of new items reprint another feed's story at another URL."""

    def __init__(self, feeds: int, per_day: int, rng: random.Random):
        self.rng = rng
        self.words = [f"w{n}" for n in range(5000)]
        self.items: dict[int, list[dict[str, Any]]] = {
            f: [self._item(f, f"forever-{f}-{k}", 0.0) for k in range(3)] for f in range(feeds)}
        self.recent: list[dict[str, Any]] = []
        self.per_day = per_day
        self.feeds = feeds
        self.version: dict[int, int] = dict.fromkeys(range(feeds), 0)

    def _item(self, feed: int, slug: str, when: float, text: str | None = None) -> dict[str, Any]:
        body = text or " ".join(self.rng.choices(self.words, k=150))
        if text is None and self.rng.random() < 0.25:
            body += " liquefied natural gas imports rose"
        return {"title": f"Story {slug}", "link": f"https://site{feed}.example/{slug}",
                "body": body, "date": when}

    def publish_day(self, day: int, start: float) -> None:
        """One day's new items, spread over the feeds."""
        for n in range(self.per_day):
            feed = self.rng.randrange(self.feeds)
            when = start + n * DAY / self.per_day
            if self.recent and self.rng.random() < 0.2:
                text = self.rng.choice(self.recent[-500:])["body"]
                new = self._item(feed, f"d{day}-{n}", when, text)
            else:
                new = self._item(feed, f"d{day}-{n}", when)
            self.recent.append(new)
            forever, rotating = self.items[feed][:3], self.items[feed][3:]
            self.items[feed] = forever + (rotating + [new])[-10:]
            self.version[feed] += 1
        self.recent = self.recent[-2000:]

    def document(self, feed: int) -> bytes:
        parts = []
        for it in self.items[feed]:
            date = format_datetime(datetime.fromtimestamp(it["date"], UTC)) if it["date"] else ""
            parts.append(f"<item><title>{escape(it['title'])}</title><link>{it['link']}</link>"
                         f"<pubDate>{date}</pubDate><description>{escape(it['body'])}"
                         f"</description></item>")
        return (f"<?xml version='1.0'?><rss version='2.0'><channel><title>Feed {feed}</title>"
                f"<link>https://site{feed}.example/</link>{''.join(parts)}</channel></rss>"
                ).encode()


class SimulatedFetcher:
    """The pipeline's fetcher for simulated feeds: 304 when a feed did not change."""

    def __init__(self, feeds: SimulatedFeeds):
        self.feeds = feeds

    def get(self, url: str, etag: str | None = None, last_modified: str | None = None,
            accept: str | None = None) -> FetchResult:
        feed = int(url.rsplit("/", 1)[1])
        tag = f'"{self.feeds.version[feed]}"'
        if etag == tag:
            return FetchResult(url, 304, b"", None, tag, None, True, 0.0)
        return FetchResult(url, 200, self.feeds.document(feed), "application/rss+xml", tag, None,
                           False, 0.0)


def bench_state(quick: bool) -> None:
    from worker.bench import _redis

    feeds, per_day, days = (50, 200, 60) if quick else (1000, 6000, 60)
    with _redis() as url:
        _soak(url, feeds, per_day, days, quick)
    with _redis() as url:
        _story_bytes(url, 20_000 if quick else 90_000)


def _soak(url: str, n_feeds: int, per_day: int, days: int, quick: bool) -> None:
    from worker.config import FeedConfig, WatchlistConfig
    from worker.match import compile_watchlists
    from worker.pipeline import poll_feed, process_entries
    from worker.store import Store

    store = Store.from_url(url)
    sweep = store.r.register_script(_SWEEP)
    rng = random.Random(9)
    sim = SimulatedFeeds(n_feeds, per_day, rng)
    fetcher = SimulatedFetcher(sim)
    feeds = [FeedConfig(url=f"https://feeds.example/feed/{f}", name=f"feed{f}", every=DAY / 4,
                        full_text="never") for f in range(n_feeds)]
    matcher = compile_watchlists([WatchlistConfig(name="lng", entities=[
        {"name": "LNG", "aliases": ["liquefied natural gas"]}])])
    dump_dir = Path(tempfile.mkdtemp(prefix="newsmon-soak-"))
    start = time.time()
    store.sync_feeds([f.name for f in feeds], start)
    base = int(store.r.info("memory")["used_memory"])
    print(f"state   soak: {n_feeds:,} feeds, {per_day:,} new stories a day (a fifth reprinted "
          f"elsewhere), 3 items per feed that never leave, {days} simulated days, retention "
          f"{store.ttl / DAY:g} days, alert retention {store.alert_ttl / DAY:g} days")
    print("        day   Redis MB   keys     stories  alerts   (Redis memory above an empty one)")
    t0 = time.perf_counter()
    rows = []
    for day in range(days):
        day_start = start + day * DAY
        sim.publish_day(day, day_start)
        for poll in range(4):  # every feed polled 4 times a day; most answers are 304s
            now = day_start + poll * DAY / 4 + 60
            for feed in feeds:
                def submit(f: FeedConfig, parsed: Any, items: list[Any], now: float = now) -> None:
                    process_entries(f, parsed, items, store, matcher, dump_dir, now)

                poll_feed(feed, store, fetcher, now, submit)
        end = day_start + DAY
        store.forget_alerts(end)
        cursor = "0"
        while True:
            cursor = sweep(args=[cursor, int(end * 1000)])
            if cursor == "0":
                break
        used = int(store.r.info("memory")["used_memory"]) - base
        stats = store.stats()
        rows.append((day + 1, used, store.r.dbsize(), stats["stories"], stats["alerts"]))
        if not quick or (day + 1) % 5 == 0 or day == days - 1:  # every day; quick: every 5th
            d, u, k, s, a = rows[-1]
            print(f"        {d:3d}   {u / 2**20:8.1f}   {k:7,}  {s:7,}  {a:6,}")
    elapsed = time.perf_counter() - t0
    _figures(store, rows, per_day, elapsed)
    shutil.rmtree(dump_dir, ignore_errors=True)


def _figures(store: Any, rows: list[tuple[int, int, int, int, int]], per_day: int,
             elapsed: float) -> None:
    """Bytes per story and per alert at the plateau, from the last days' memory."""
    retention_days = store.ttl / DAY
    settled = [r[1] for r in rows[int(1.5 * retention_days):]] or [rows[-1][1]]
    plateau = sum(settled) / len(settled)
    live_stories = per_day * retention_days
    alerts_per_day = (rows[-1][4] - rows[-11][4]) / 10 if len(rows) > 11 else 0
    print(f"        plateau after day {1.5 * retention_days:g} (all windows full): "
          f"{min(settled) / 2**20:.1f} to {max(settled) / 2**20:.1f} MB, mean "
          f"{plateau / 2**20:.1f} MB (the band index saws with its epochs of "
          f"{retention_days / 2:g} days); {elapsed:.0f} s for the run")
    print(f"        per live story (all state incl. alerts, feeds) "
          f"{plateau / live_stories:,.0f} bytes; {alerts_per_day:.0f} alerts a day")
    _breakdown(store, live_stories)
    per_alert = _bytes_per_alert(store)
    print(f"        per alert record (hash + stream entry + index entries) {per_alert:,.0f} bytes")
    print(f"        => plateau for N new stories a day at {retention_days:g} days retention "
          f"~ N x {plateau / per_day / 2**20:.3f} MB")


def _bytes_per_alert(store: Any) -> float:
    """MEMORY USAGE of the alert hashes and their share of the alert zsets and stream."""
    k = store.keys
    ids = store.r.zrange(k.by_time, 0, 199)
    if not ids:
        return 0.0
    hashes = sum(int(store.r.memory_usage(k.alert(a)) or 0) for a in ids) / len(ids)
    shared = sum(int(store.r.memory_usage(key) or 0) for key in (k.by_time, k.expiry, k.alerts))
    return hashes + shared / max(1, store.r.zcard(k.by_time))


def _breakdown(store: Any, live_stories: float) -> None:
    """MEMORY USAGE summed per key family (LIFETIMES), per live story."""
    import re

    from worker.store import LIFETIMES, PREFIX

    rules = [(re.compile(re.escape(PREFIX) + "".join(
        ".+" if part.startswith("<") else re.escape(part)
        for part in re.split(r"(<[^>]+>)", row.pattern)) + "$"), row.pattern)
        for row in LIFETIMES]
    totals: dict[str, list[int]] = {}
    keys = list(store.r.scan_iter(count=5000))
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        pipe = store.r.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(chunk, pipe.execute(), strict=True):
            family = next((name for regex, name in rules if regex.match(key)), "other")
            entry = totals.setdefault(family, [0, 0])
            entry[0] += int(used or 0)
            entry[1] += 1
    print("        by family (MEMORY USAGE, bytes per live story; keys):")
    for family, (used, count) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        print(f"          {family:32} {used / live_stories:7,.0f}   {count:8,}")


def _story_bytes(url: str, n: int) -> None:
    """Redis bytes per new story of the story index alone, at the density of a deployment
    (the soak's sparse band buckets overstate them): ``n`` new stories claimed in one epoch,
    each with a URL and a full signature (90,000 is 15 days at 6,000 a day)."""
    from worker.dedupe import NUM_PERM, StoryKeys, band_keys
    from worker.store import Store

    store = Store.from_url(url)
    rng = random.Random(4)
    base = int(store.r.info("memory")["used_memory"])
    now = time.time()
    for i in range(n):
        sig = tuple(rng.getrandbits(32) for _ in range(NUM_PERM))
        keys = StoryKeys(f"https://site{i % 997}.example/news/{i}", None, f"{i:032x}", sig,
                         band_keys(sig))
        store.claim_story(f"{i:016x}", keys, now + i)
    used = int(store.r.info("memory")["used_memory"]) - base
    print(f"state   story index at deployment density: {n:,} new stories, "
          f"{used / n:,.0f} bytes per new story (target <= 4 KB)")
    _breakdown(store, n)
