"""All of newsmon's state in Redis: every key name, TTL and Lua script lives here.

Keys (prefix ``newsmon:``):
    feed:{name}          hash    fetch state of a feed (etag, last outcome, failures, next due)
    due                  zset    feed name -> next due time; handing out is one script (atomic)
    art:{article id}     hash    story, new (0/1), seq, done (0/1): makes processing idempotent
    id:url|guid|fp:{k}   string  story id for an exact key (TTL: retention window)
    id:band:{band}       set     story ids sharing an LSH band (TTL: retention window)
    story:{id}           hash    first article, created, copies (TTL: retention window)
    story:sig:{id}       string  MinHash signature as hex (TTL: retention window)
    fired:{story}:{wl}   string  alert id: a watchlist fires at most once per story
    alert:{id}           hash    data (JSON), state, created, watchlist, attempts (no TTL);
                                 a feed health event (evt_...) is one with watchlist "";
                                 delivery: dests, story, log (JSON list of attempts),
                                 next_attempt, and per destination st:, n:, starts:, next:,
                                 why:, lease: {dest} (see "delivery" below)
    alerts:by-time       zset    alert id -> created time
    outbox               zset    alert id, then "alert id|dest" -> next delivery attempt time
    dead                 zset    "alert id|dest" -> time it was dead-lettered
    dest:{dest}:inflight zset    "alert id|dest" -> when its attempt began (destination slots)
    dest:{dest}:hold     string  no attempt to the destination before this time (Retry-After)
    webhook:disabled:{h} string  why the webhook configuration with digest h is off (410 Gone)
    seq:{YYYY-MM-DD}     counter dump file sequence per day folder
    stats                hash    articles, stories, duplicates, alerts
    cycle:{id}           hash    one beat tick's poll cycle: feeds, polled, new, failed, batches
                                 (process tasks not yet done), alerts, fail:{feed}, logged
                                 (TTL: an hour after its last update)
    articles             stream  one JSON entry per new story's article (bounded)
    alerts               stream  one JSON entry per alert (bounded)

Scale-out keys (the block at the end of this module), each with its lifetime:
    host:{h}             zset    connection leases to host h: "feed:"/"page:" + token -> lease
                                 end. Lifetime: expires with its longest lease (PEXPIRE at each
                                 grant), expired members trimmed by every grant.
    {config}:versions    zset    configuration hash -> version (its files' newest mtime).
                                 Lifetime: trimmed with {config}:held.
    {config}:held        zset    configuration hash -> when a process last said it runs it.
                                 Lifetime: trimmed by time (members older than the hold, 10 min).

Delivery: an alert enters the outbox as its bare id. Whoever claims it first lists its
destinations ("webhook:{name}", "notify:{scheme}:{digest}") and replaces it by one member
"alert id|dest" each, or marks the alert "recorded" when it has none. Claiming a member moves
its score ahead by a lease and writes the claimer's token to lease:{dest}, so a worker that dies
mid-delivery only delays it; st:{dest} is pending, retrying, delivered or dead, and the alert's
own state and next_attempt sum them up (dead once nothing is pending or retrying and one is dead).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis

from worker.dedupe import MAX_CANDIDATES, THRESHOLD, StoryKeys, sig_to_hex

PREFIX = "newsmon:"
STREAM_MAXLEN = 100_000

_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i])
  table.insert(out, due[i])
  table.insert(out, due[i + 1])
end
return out
"""

# Story identity in one script, so the same story reaching two workers at once is one story.
# ARGV: prefix, article id, new story id, url key, guid key, fingerprint, signature hex,
#       slots needed to be the same story, ttl, now, band keys...
_CLAIM_STORY = """
local p = ARGV[1]
local art = p .. 'art:' .. ARGV[2]
local known = redis.call('HGET', art, 'story')
if known then return {known, redis.call('HGET', art, 'new'), '0'} end
local ttl = tonumber(ARGV[9])
local exact = {}
if ARGV[4] ~= '' then table.insert(exact, p .. 'id:url:' .. ARGV[4]) end
if ARGV[5] ~= '' then table.insert(exact, p .. 'id:guid:' .. ARGV[5]) end
if ARGV[6] ~= '' then table.insert(exact, p .. 'id:fp:' .. ARGV[6]) end
local story = false
for _, k in ipairs(exact) do
  story = redis.call('GET', k)
  if story then break end
end
local sig = ARGV[7]
if not story then
  -- candidates: the MAX_CANDIDATES stories sharing the most bands (ties: smallest id)
  local shared, cands = {}, {}
  for i = 11, #ARGV do
    for _, cand in ipairs(redis.call('SMEMBERS', p .. 'id:band:' .. ARGV[i])) do
      if not shared[cand] then table.insert(cands, cand) end
      shared[cand] = (shared[cand] or 0) + 1
    end
  end
  table.sort(cands, function(a, b)
    if shared[a] ~= shared[b] then return shared[a] > shared[b] end
    return a < b
  end)
  local need, best = tonumber(ARGV[8]), -1
  for c = 1, math.min(#cands, MAX_CANDIDATES) do
    local other = redis.call('GET', p .. 'story:sig:' .. cands[c])
    if other and #other == #sig then
      local same = 0
      for s = 1, #sig, 8 do
        if string.sub(sig, s, s + 7) == string.sub(other, s, s + 7) then same = same + 1 end
      end
      if same >= need and same > best then best, story = same, cands[c] end
    end
  end
end
local new = '0'
if story then
  redis.call('HINCRBY', p .. 'story:' .. story, 'copies', 1)
  redis.call('HINCRBY', p .. 'stats', 'duplicates', 1)
  -- a story is remembered for the retention window after its last copy, not its first
  redis.call('EXPIRE', p .. 'story:sig:' .. story, ttl)
  for band in string.gmatch(redis.call('HGET', p .. 'story:' .. story, 'bands') or '', '%S+') do
    redis.call('EXPIRE', p .. 'id:band:' .. band, ttl)
  end
else
  story, new = ARGV[3], '1'
  redis.call('HSET', p .. 'story:' .. story, 'first_article', ARGV[2], 'created', ARGV[10], 'copies', 1,
             'bands', table.concat(ARGV, ' ', 11))
  redis.call('SET', p .. 'story:sig:' .. story, sig, 'EX', ttl)
  for i = 11, #ARGV do
    redis.call('SADD', p .. 'id:band:' .. ARGV[i], story)
    redis.call('EXPIRE', p .. 'id:band:' .. ARGV[i], ttl)
  end
  redis.call('HINCRBY', p .. 'stats', 'stories', 1)
end
redis.call('EXPIRE', p .. 'story:' .. story, ttl)
for _, k in ipairs(exact) do redis.call('SET', k, story, 'NX', 'EX', ttl) end
redis.call('HSET', art, 'story', story, 'new', new)
redis.call('EXPIRE', art, ttl)
redis.call('HINCRBY', p .. 'stats', 'articles', 1)
return {story, new, '1'}
""".replace("MAX_CANDIDATES", str(MAX_CANDIDATES))

# The sequence number of an article's dump file: assigned once, the same on every retry.
# ARGV: prefix, article id, day, force (1: the number taken is occupied by another file)
_CLAIM_SEQ = """
local art = ARGV[1] .. 'art:' .. ARGV[2]
local seq = redis.call('HGET', art, 'seq')
if seq and ARGV[4] ~= '1' then return tonumber(seq) end
seq = redis.call('INCR', ARGV[1] .. 'seq:' .. ARGV[3]) - 1  -- the first file is 000, as offline
redis.call('HSET', art, 'seq', seq)
return seq
"""

# An alert for (story, watchlist), created at most once, with its stream entry and outbox slot.
# ARGV: prefix, story, watchlist, new alert id, alert JSON, created, ttl
_CLAIM_ALERT = """
local p = ARGV[1]
local fired = p .. 'fired:' .. ARGV[2] .. ':' .. ARGV[3]
local known = redis.call('GET', fired)
if known then return {known, 0} end
redis.call('SET', fired, ARGV[4], 'EX', tonumber(ARGV[7]))
redis.call('HSET', p .. 'alert:' .. ARGV[4], 'data', ARGV[5], 'state', 'pending',
           'created', ARGV[6], 'watchlist', ARGV[3], 'attempts', 0)
redis.call('ZADD', p .. 'alerts:by-time', ARGV[6], ARGV[4])
redis.call('ZADD', p .. 'outbox', ARGV[6], ARGV[4])
redis.call('XADD', p .. 'alerts', 'MAXLEN', '~', ARGV[8], '*', 'alert', ARGV[5])
redis.call('HINCRBY', p .. 'stats', 'alerts', 1)
return {ARGV[4], 1}
"""

# A feed health event into the outbox, once per id (its id derives from what happened).
# ARGV: prefix, event id, event JSON, created
# One step of a poll cycle: add the increments; the caller that completes the cycle (every feed
# polled, every batch processed) gets its fields back, once. ARGV: ttl, failed feed or "",
# then field, increment pairs.
_CYCLE_STEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'fail:' .. ARGV[2], 1) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local c = redis.call('HMGET', KEYS[1], 'feeds', 'polled', 'batches', 'logged')
if c[4] or tonumber(c[2] or 0) < tonumber(c[1]) or tonumber(c[3] or 0) > 0 then return false end
redis.call('HSET', KEYS[1], 'logged', 1)
return redis.call('HGETALL', KEYS[1])
"""
CYCLE_TTL = 3600

_ADD_EVENT = """
local a = ARGV[1] .. 'alert:' .. ARGV[2]
if redis.call('EXISTS', a) == 1 then return 0 end
redis.call('HSET', a, 'data', ARGV[3], 'state', 'pending', 'created', ARGV[4], 'watchlist', '',
           'attempts', 0)
redis.call('ZADD', ARGV[1] .. 'outbox', ARGV[4], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StoryClaim:
    story_id: str
    is_new: bool
    fresh: bool = True      # False: an earlier run already claimed this article (a retry)


def _digest(value: str | None) -> str:
    """A short fixed-length key for a URL or GUID of any length."""
    return hashlib.sha256(value.encode()).hexdigest()[:32] if value else ""


class Store:
    """newsmon's Redis state behind a small interface. Safe to share between threads."""

    def __init__(self, client: redis.Redis, retention_days: float = 30.0, prefix: str = PREFIX):
        self.r = client
        self.p = prefix
        self.ttl = int(retention_days * 86400)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._claim_story = client.register_script(_CLAIM_STORY)
        self._claim_seq = client.register_script(_CLAIM_SEQ)
        self._claim_alert = client.register_script(_CLAIM_ALERT)
        self._add_event = client.register_script(_ADD_EVENT)
        self._cycle_step = client.register_script(_CYCLE_STEP)
        self.hosts = HostLeases(client, prefix)          # scale-out block, end of module
        self.versions = ConfigVersions(client, prefix)

    @classmethod
    def from_url(cls, url: str, retention_days: float = 30.0) -> Store:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30),
                   retention_days)

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # -- scheduling ------------------------------------------------------------------------
    def sync_feeds(self, names: list[str], now: float) -> None:
        """New feeds become due now; feeds no longer configured stop being handed out."""
        pipe = self.r.pipeline()
        if names:
            pipe.zadd(self.p + "due", {name: now for name in names}, nx=True)
        pipe.zrange(self.p + "due", 0, -1)
        scheduled = pipe.execute()[-1]
        removed = set(scheduled) - set(names)
        if removed:
            self.r.zrem(self.p + "due", *removed)

    def claim_due(self, now: float, lease: float, limit: int = 10_000) -> list[tuple[str, float]]:
        """Hand out the feeds due at ``now``, each once: their due time moves ``lease`` ahead."""
        flat = self._claim_due(keys=[self.p + "due"], args=[now, lease, limit])
        return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]

    def set_due(self, name: str, when: float) -> None:
        # XX: a feed removed from the configuration while it was being fetched stays removed.
        self.r.zadd(self.p + "due", {name: when}, xx=True)

    def set_due_many(self, names: list[str], when: float, chunk: int = 10_000) -> None:
        """``set_due`` for many feeds at once (in pipelined chunks)."""
        for start in range(0, len(names), chunk):
            self.r.zadd(self.p + "due", dict.fromkeys(names[start:start + chunk], when), xx=True)

    def due_times(self) -> dict[str, float]:
        return dict(self.r.zrange(self.p + "due", 0, -1, withscores=True))

    def feed_state(self, name: str) -> dict[str, str]:
        return self.r.hgetall(f"{self.p}feed:{name}")

    def feed_states(self, names: list[str]) -> list[dict[str, str]]:
        pipe = self.r.pipeline()
        for name in names:
            pipe.hgetall(f"{self.p}feed:{name}")
        return pipe.execute()

    def record_fetch(self, name: str, fields: dict[str, Any], next_due: float) -> None:
        clean = {k: ("" if v is None else v) for k, v in fields.items()}
        pipe = self.r.pipeline()
        pipe.hset(f"{self.p}feed:{name}", mapping={**clean, "next_due": next_due})
        pipe.zadd(self.p + "due", {name: next_due}, xx=True)
        pipe.execute()

    def add_event(self, event: dict[str, Any], now: float) -> bool:
        """Queue a feed health event for the health webhook (False: it was queued before).
        It is delivered like an alert whose watchlist is "" (see Service.claim_deliveries)."""
        return bool(self._add_event(args=[self.p, event["id"], json.dumps(event), now]))

    # -- figures for metrics ---------------------------------------------------------------------
    def feed_health_summary(self) -> list[dict[str, Any]]:
        """Health, staleness and last outcome of every scheduled (configured) feed."""
        names = self.r.zrange(self.p + "due", 0, -1)
        pipe = self.r.pipeline()
        for name in names:
            pipe.hmget(f"{self.p}feed:{name}", ["health", "stale", "outcome"])
        return [{"health": h or "healthy", "stale": s == "1", "outcome": o or ""}
                for h, s, o in pipe.execute()]

    def queue_depths(self, queues: tuple[str, ...], suffixes: tuple[str, ...]) -> dict[str, int]:
        """Messages waiting in each Celery queue (the broker is this Redis)."""
        pipe = self.r.pipeline()
        for queue in queues:
            for suffix in suffixes:
                pipe.llen(queue + suffix)
        lengths = pipe.execute()
        n = len(suffixes)
        return {q: sum(lengths[i * n:(i + 1) * n]) for i, q in enumerate(queues)}

    def outbox_counts(self, now: float) -> dict[str, int]:
        pipe = self.r.pipeline()
        pipe.zcount(self.p + "outbox", "-inf", now)
        pipe.zcount(self.p + "outbox", f"({now}", "+inf")
        pipe.zcard(self.p + "dead")
        due, waiting, dead = pipe.execute()
        return {"due": due, "waiting": waiting, "dead": dead}

    def mark_beat(self, now: float) -> None:
        self.r.set(self.p + "beat", now)

    def last_beat(self) -> float | None:
        value = self.r.get(self.p + "beat")
        return float(value) if value else None

    def open_cycle(self, cycle: str, feeds: int) -> None:
        """A poll cycle of ``feeds`` feeds handed out together."""
        key = f"{self.p}cycle:{cycle}"
        self.r.pipeline().hset(key, "feeds", feeds).expire(key, CYCLE_TTL).execute()

    def cycle_step(self, cycle: str, failed_feed: str = "", **increments: int) -> \
            dict[str, str] | None:
        """Count one step of a cycle; returns the cycle's fields to the one step that completes
        it (None to every other step, and for an unknown or expired cycle)."""
        pairs = [x for field, n in increments.items() for x in (field, n)]
        out = self._cycle_step(keys=[f"{self.p}cycle:{cycle}"],
                               args=[CYCLE_TTL, failed_feed, *pairs])
        return dict(zip(out[::2], out[1::2], strict=True)) if out else None

    # -- articles and stories ----------------------------------------------------------------
    def done_articles(self, article_ids: list[str]) -> set[str]:
        """Which of these articles were processed to the end already."""
        pipe = self.r.pipeline()
        for aid in article_ids:
            pipe.hget(f"{self.p}art:{aid}", "done")
        return {aid for aid, done in zip(article_ids, pipe.execute(), strict=True) if done}

    def claim_story(self, article_id: str, keys: StoryKeys, now: float) -> StoryClaim:
        """The story this article belongs to; a new story when nothing known is the same."""
        slots = len(keys.signature)
        need = -(-int(THRESHOLD * slots * 1000) // 1000)  # ceil without float surprises
        story, new, fresh = self._claim_story(args=[
            self.p, article_id, article_id, _digest(keys.url), _digest(keys.guid), keys.fingerprint,
            sig_to_hex(keys.signature), need, self.ttl, now, *keys.bands])
        return StoryClaim(story_id=story, is_new=new == "1", fresh=fresh == "1")

    def story(self, story_id: str) -> dict[str, str]:
        return self.r.hgetall(f"{self.p}story:{story_id}")

    def claim_seq(self, article_id: str, day: str, *, force_new: bool = False) -> int:
        return int(self._claim_seq(args=[self.p, article_id, day, "1" if force_new else "0"]))

    def add_article(self, article_json: dict[str, Any]) -> None:
        self.r.xadd(self.p + "articles", {"article": json.dumps(article_json)},
                    maxlen=STREAM_MAXLEN, approximate=True)

    def mark_done(self, article_id: str) -> None:
        self.r.hset(f"{self.p}art:{article_id}", "done", "1")

    # -- alerts --------------------------------------------------------------------------------
    def claim_alert(self, story_id: str, watchlist: str, alert_id: str, alert_json: dict[str, Any],
                    created: float) -> tuple[str, bool]:
        """Record an alert unless this watchlist already fired for this story."""
        aid, created_now = self._claim_alert(args=[
            self.p, story_id, watchlist, alert_id, json.dumps(alert_json), created, self.ttl,
            STREAM_MAXLEN])
        return aid, bool(created_now)

    def alerts(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        ids = self.r.zrangebyscore(self.p + "alerts:by-time", since or "-inf", "+inf",
                                   start=0, num=limit) if since else \
            self.r.zrange(self.p + "alerts:by-time", -limit, -1)
        pipe = self.r.pipeline()
        for aid in ids:
            pipe.hgetall(f"{self.p}alert:{aid}")
        return [self._alert_view(h) for h in pipe.execute() if h]

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        record = self.r.hgetall(f"{self.p}alert:{alert_id}")
        return self._alert_view(record) if record else None

    @staticmethod
    def _alert_view(record: dict[str, str]) -> dict[str, Any]:
        data = json.loads(record["data"])
        data["state"] = record.get("state", "pending")
        data["attempts"] = json.loads(record.get("log", "[]"))
        if record.get("next_attempt"):
            data["next_attempt"] = float(record["next_attempt"])
        data["deliveries"] = {dest: {
            "state": record.get(f"st:{dest}", "pending"),
            "attempts": int(record.get(f"n:{dest}") or 0),
            "next_attempt": float(record[f"next:{dest}"]) if record.get(f"next:{dest}") else None,
            "reason": record.get(f"why:{dest}") or None,
        } for dest in record.get("dests", "").split()}
        return data

    def stats(self) -> dict[str, int]:
        raw = self.r.hgetall(self.p + "stats")
        return {k: int(raw.get(k, 0)) for k in ("articles", "stories", "duplicates", "alerts")}

    def now(self) -> float:
        return time.time()

    # -- delivery ------------------------------------------------------------------------------
    # The outbox and per-destination state of alerts; the scripts are at the end of the module.
    @cached_property
    def _delivery_scripts(self) -> dict[str, Any]:
        return {name: self.r.register_script(text) for name, text in (
            ("claim", _CLAIM_DELIVERIES), ("expand", _EXPAND_ALERT), ("start", _START_DELIVERY),
            ("record", _RECORD_DELIVERY), ("replay", _REPLAY))}

    def claim_deliveries(self, now: float, lease: float, token: str, limit: int = 1000,
                         members: list[str] | None = None) -> list[DeliveryClaim]:
        """Hand out due outbox members (or only those of ``members`` that are due), each once:
        their score moves ``lease`` ahead and ``token`` becomes their owner."""
        flat = self._delivery_scripts["claim"](
            keys=[self.p + "outbox"], args=[self.p, now, lease, limit, token, *(members or [])])
        return [DeliveryClaim(flat[i], token, flat[i + 1]) for i in range(0, len(flat), 2)]

    def expand_alert(self, claim: DeliveryClaim, story: str, dests: list[str], now: float,
                     lease: float) -> list[DeliveryClaim]:
        """Turn a claimed alert into claimed per-destination members (none: state recorded)."""
        members = self._delivery_scripts["expand"](
            args=[self.p, claim.member, claim.token, now, lease, story, *dests])
        return [DeliveryClaim(m, claim.token, claim.watchlist) for m in members]

    def alert_stories(self, alert_ids: list[str]) -> list[str]:
        """The story id of each alert ("" for an alert that does not exist)."""
        pipe = self.r.pipeline()
        for aid in alert_ids:
            pipe.hget(f"{self.p}alert:{aid}", "data")
        return [json.loads(d).get("story", "") if d else "" for d in pipe.execute()]

    def start_delivery(self, claim: DeliveryClaim, now: float, *, run_lease: float, slots: int,
                       busy_wait: float, max_lost: int, queue_lease: float) -> DeliveryStart:
        """Begin an attempt on a claimed member: its lease becomes ``run_lease`` and it takes
        one of its destination's ``slots``; see ``_START_DELIVERY`` for the other verdicts."""
        out = self._delivery_scripts["start"](args=[
            self.p, claim.member, claim.token, now, run_lease, slots, busy_wait, max_lost,
            queue_lease])
        verdict = out[0]
        if verdict == "go":
            return DeliveryStart("go", attempts=int(out[1]), alert=json.loads(out[2]),
                                 watchlist=out[3], copies=int(out[4]))
        if verdict in ("busy", "held"):
            return DeliveryStart(verdict, wait=float(out[1]))
        if verdict == "lost":
            return DeliveryStart("lost", attempts=int(out[1]))
        return DeliveryStart("stale")

    def record_delivery(self, claim: DeliveryClaim, now: float, entry: dict[str, Any] | None,
                        state: str, when: float | None = None, reason: str = "",
                        hold_until: float | None = None) -> str:
        """Log an attempt (``entry``; None logs nothing) and move the member on. Returns the
        alert's state, or "stale" when the claim was no longer ours (then only the log changed).
        ``hold_until``: no attempt to this destination before then (its Retry-After)."""
        return str(self._delivery_scripts["record"](args=[
            self.p, claim.member, claim.token, now,
            json.dumps(entry, ensure_ascii=False) if entry else "", state, when or 0, reason,
            hold_until or 0]))

    def replay(self, alert_id: str, now: float) -> int:
        """Queue an alert's dead destinations again; -1 if there is no such alert."""
        return int(self._delivery_scripts["replay"](args=[self.p, alert_id, now]))

    def dead_alerts(self) -> list[str]:
        """Ids of alerts with a dead-lettered destination, oldest first."""
        members = self.r.zrange(self.p + "dead", 0, -1)
        return list(dict.fromkeys(m.split("|", 1)[0] for m in members))

    def outbox_next(self) -> float | None:
        """When the earliest outbox member is due (None: the outbox is empty)."""
        first = self.r.zrange(self.p + "outbox", 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def delivery_states(self, alert_ids: list[str]) -> dict[str, str | None]:
        """The delivery state of each alert (None: no such alert)."""
        pipe = self.r.pipeline()
        for aid in alert_ids:
            pipe.hget(f"{self.p}alert:{aid}", "state")
        return dict(zip(alert_ids, pipe.execute(), strict=True))

    def disable_webhook(self, digest: str, reason: dict[str, Any]) -> None:
        """Disable a webhook configuration (by its digest) until the configuration changes."""
        self.r.set(f"{self.p}webhook:disabled:{digest}", json.dumps(reason), ex=self.ttl)

    def webhook_disabled(self, digest: str) -> dict[str, Any] | None:
        raw = self.r.get(f"{self.p}webhook:disabled:{digest}")
        return json.loads(raw) if raw else None


# -- delivery scripts ---------------------------------------------------------------------------
# Shared by the scripts below: split a member, and fold the destinations' states into the
# alert's own ``state`` and ``next_attempt``.
_DELIVERY_LIB = """
local function split(m)
  local sep = string.find(m, '|', 1, true)
  if not sep then return m, '' end
  return string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
end
local function aggregate(a)
  local dests = redis.call('HGET', a, 'dests') or ''
  local retrying, pending, dead, nxt = false, false, false, nil
  for dest in string.gmatch(dests, '%S+') do
    local s = redis.call('HGET', a, 'st:' .. dest)
    if s == 'retrying' then
      retrying = true
      local n = tonumber(redis.call('HGET', a, 'next:' .. dest))
      if n and (not nxt or n < nxt) then nxt = n end
    elseif s == 'dead' then dead = true
    elseif s ~= 'delivered' then pending = true end
  end
  local state = 'delivered'
  if retrying then state = 'retrying' elseif pending then state = 'pending'
  elseif dead then state = 'dead' end
  redis.call('HSET', a, 'state', state)
  if nxt then redis.call('HSET', a, 'next_attempt', nxt)
  else redis.call('HDEL', a, 'next_attempt') end
  return state
end
"""

# Hand out due outbox members (all due ones, or only those named), each to one caller.
# KEYS: outbox. ARGV: prefix, now, lease, limit, token, members... (none: every due member)
_CLAIM_DELIVERIES = _DELIVERY_LIB + """
local p, now, lease, token = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5]
local due = {}
if #ARGV > 5 then
  for i = 6, #ARGV do
    local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if score and tonumber(score) <= now then table.insert(due, ARGV[i]) end
  end
else
  due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[4])
end
local out = {}
for _, m in ipairs(due) do
  local id, dest = split(m)
  local a = p .. 'alert:' .. id
  if redis.call('EXISTS', a) == 0 then
    redis.call('ZREM', KEYS[1], m)
  else
    redis.call('ZADD', KEYS[1], now + lease, m)
    redis.call('HSET', a, 'lease:' .. dest, token)
    table.insert(out, m)
    table.insert(out, redis.call('HGET', a, 'watchlist') or '')
  end
end
return out
"""

# Replace a claimed bare alert id by one member per destination, claimed by the same token.
# No destination: the alert is only recorded. ARGV: prefix, id, token, now, lease, story, dests...
_EXPAND_ALERT = _DELIVERY_LIB + """
local p, id, token, now, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local a = p .. 'alert:' .. id
if redis.call('HGET', a, 'lease:') ~= token then return {} end
if redis.call('ZREM', p .. 'outbox', id) == 0 then return {} end
redis.call('HDEL', a, 'lease:')
if #ARGV < 7 then
  redis.call('HSET', a, 'state', 'recorded', 'dests', '')
  redis.call('HDEL', a, 'next_attempt')
  return {}
end
local dests, out = {}, {}
for i = 7, #ARGV do
  local dest, m = ARGV[i], id .. '|' .. ARGV[i]
  table.insert(dests, dest)
  redis.call('HSET', a, 'st:' .. dest, 'pending', 'n:' .. dest, 0, 'starts:' .. dest, 0,
             'lease:' .. dest, token)
  redis.call('HDEL', a, 'next:' .. dest, 'why:' .. dest)
  redis.call('ZADD', p .. 'outbox', now + lease, m)
  table.insert(out, m)
end
redis.call('HSET', a, 'dests', table.concat(dests, ' '), 'story', ARGV[6])
aggregate(a)
return out
"""

# Begin one attempt on a claimed member, unless the claim went stale, the destination is
# held (Retry-After: the member goes back to the outbox, due when the hold ends), or it already
# has ``slots`` attempts in flight (busy: the claim stays the caller's, who asks again after
# the wait), or too many attempts began and never reported (lost: the caller dead-letters it).
# ARGV: prefix, member, token, now, run lease, slots, least busy wait, max lost, queue lease
# Returns {verdict, ...}: {'go', attempts recorded, data, watchlist, copies},
#   {'busy'|'held', seconds to wait}, {'stale'}, {'lost', attempts lost}.
_START_DELIVERY = _DELIVERY_LIB + """
local p, m, token, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local id, dest = split(m)
local a = p .. 'alert:' .. id
local outbox = p .. 'outbox'
if redis.call('HGET', a, 'lease:' .. dest) ~= token then return {'stale'} end
if not redis.call('ZSCORE', outbox, m) then return {'stale'} end
local hold = tonumber(redis.call('GET', p .. 'dest:' .. dest .. ':hold') or '0')
if hold > now then
  redis.call('ZADD', outbox, hold, m)
  redis.call('HDEL', a, 'lease:' .. dest)
  return {'held', tostring(hold - now)}
end
local inflight = p .. 'dest:' .. dest .. ':inflight'
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now - tonumber(ARGV[5]))
if redis.call('ZSCORE', inflight, m) == false
   and redis.call('ZCARD', inflight) >= tonumber(ARGV[6]) then
  local oldest = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  local busy = math.min(math.max(now - tonumber(oldest[2]), tonumber(ARGV[7])), 5)
  redis.call('ZADD', outbox, now + busy + tonumber(ARGV[9]), m)
  return {'busy', tostring(busy)}
end
local recorded = tonumber(redis.call('HGET', a, 'n:' .. dest) or '0')
local starts = redis.call('HINCRBY', a, 'starts:' .. dest, 1)
if starts - recorded > tonumber(ARGV[8]) then return {'lost', tostring(starts - 1 - recorded)} end
redis.call('ZADD', inflight, now, m)
redis.call('EXPIRE', inflight, 86400)
redis.call('ZADD', outbox, now + tonumber(ARGV[5]), m)
local story = redis.call('HGET', a, 'story') or ''
local copies = redis.call('HGET', p .. 'story:' .. story, 'copies') or '1'
return {'go', tostring(recorded), redis.call('HGET', a, 'data'), redis.call('HGET', a, 'watchlist'),
        copies}
"""

# Record one attempt's outcome: append it to the alert's log, then (if the claim is still
# ours) move the member on: delivered and dead leave the outbox, retrying is due at ``when``.
# ARGV: prefix, member, token, now, log entry (JSON), state, when, reason, hold until (0: none)
_RECORD_DELIVERY = _DELIVERY_LIB + """
local p, m, token, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local id, dest = split(m)
local a = p .. 'alert:' .. id
local outbox = p .. 'outbox'
redis.call('ZREM', p .. 'dest:' .. dest .. ':inflight', m)
if tonumber(ARGV[9]) > now then
  redis.call('SET', p .. 'dest:' .. dest .. ':hold', ARGV[9], 'EX', math.ceil(ARGV[9] - now) + 1)
end
if ARGV[5] ~= '' then
  local log = redis.call('HGET', a, 'log')
  if not log or log == '' or log == '[]' then log = '[' .. ARGV[5] .. ']'
  else log = string.sub(log, 1, -2) .. ',' .. ARGV[5] .. ']' end
  redis.call('HSET', a, 'log', log)
  redis.call('HINCRBY', a, 'attempts', 1)
  redis.call('HINCRBY', a, 'n:' .. dest, 1)
end
if redis.call('HGET', a, 'lease:' .. dest) ~= token then return 'stale' end
local state = ARGV[6]
redis.call('HSET', a, 'st:' .. dest, state)
if state == 'retrying' then
  redis.call('ZADD', outbox, ARGV[7], m)
  redis.call('HSET', a, 'next:' .. dest, ARGV[7])
else
  redis.call('ZREM', outbox, m)
  redis.call('HDEL', a, 'next:' .. dest, 'lease:' .. dest)
  if state == 'dead' then
    redis.call('ZADD', p .. 'dead', now, m)
    redis.call('HSET', a, 'why:' .. dest, ARGV[8])
  end
end
return aggregate(a)
"""

# Send an alert's dead destinations again, from the first attempt of the schedule; an alert
# that was only recorded goes back to the outbox to find its destinations anew.
# ARGV: prefix, alert id, now. Returns the number of destinations queued (-1: no such alert).
_REPLAY = _DELIVERY_LIB + """
local p, id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local a = p .. 'alert:' .. id
if redis.call('EXISTS', a) == 0 then return -1 end
if redis.call('HGET', a, 'state') == 'recorded' then
  redis.call('ZADD', p .. 'outbox', now, id)
  redis.call('HSET', a, 'state', 'pending')
  return 1
end
local queued = 0
for dest in string.gmatch(redis.call('HGET', a, 'dests') or '', '%S+') do
  if redis.call('HGET', a, 'st:' .. dest) == 'dead' then
    local m = id .. '|' .. dest
    redis.call('ZREM', p .. 'dead', m)
    redis.call('ZADD', p .. 'outbox', now, m)
    redis.call('HSET', a, 'st:' .. dest, 'pending', 'n:' .. dest, 0, 'starts:' .. dest, 0)
    redis.call('HDEL', a, 'why:' .. dest, 'lease:' .. dest)
    queued = queued + 1
  end
end
aggregate(a)
return queued
"""


@dataclass(frozen=True)
class DeliveryClaim:
    """An outbox member handed to one caller; ``token`` proves the claim is still its own."""

    member: str
    token: str
    watchlist: str


@dataclass(frozen=True)
class DeliveryStart:
    """What beginning an attempt found: ``verdict`` go | busy | held | stale | lost."""

    verdict: str
    wait: float = 0.0               # busy, held: seconds until it may be tried again
    attempts: int = 0               # go: attempts recorded before this one; lost: attempts lost
    alert: dict[str, Any] | None = None
    watchlist: str = ""
    copies: int = 1


# -- scale-out: politeness across workers, configuration versions --------------------------------
# Each script touches one key family of one hash tag (one host, or the configuration), so it
# runs unchanged on Redis Cluster.

# Grant a connection lease to one host unless it has ``total`` live leases already, or ``kind``
# has its own budget and ``budget`` of them. Times are the server's, so workers' clocks need not
# agree. KEYS: host:{h}. ARGV: seconds, member ("kind:token"), total, kind budget (0: none),
# kind. Returns 1 when granted.
_GRANT_HOST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local ends = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZRANGE', KEYS[1], 0, -1)
if #held >= tonumber(ARGV[3]) then return 0 end
local budget = tonumber(ARGV[4])
if budget > 0 then
  local mine, prefix = 0, ARGV[5] .. ':'
  for _, m in ipairs(held) do
    if string.sub(m, 1, #prefix) == prefix then mine = mine + 1 end
  end
  if mine >= budget then return 0 end
end
redis.call('ZADD', KEYS[1], ends, ARGV[2])
local ttl = math.ceil((ends - now) * 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

# Say that a process runs configuration ``hash`` of version ``version`` and return the newest
# version any live process runs. KEYS: {config}:versions, {config}:held. ARGV: hash, version,
# now, hold (seconds a report stays live). Returns {hash, version} of the newest.
_PUBLISH_CONFIG = """
local now, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[1])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - hold)) do
  redis.call('ZREM', KEYS[2], gone)
  redis.call('ZREM', KEYS[1], gone)
end
local newest = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {newest[1], newest[2]}
"""


class HostLeases:
    """At most ``total`` connections to one host at a time, from every worker together.

    A lease ends by itself (its holder may die), so its length is the request's deadline."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX):
        self.r = client
        self.p = prefix
        self._grant = client.register_script(_GRANT_HOST)

    def key(self, host: str) -> str:
        return f"{self.p}host:{{{host}}}"

    def acquire(self, host: str, kind: str, token: str, seconds: float, total: int,
                budget: int = 0) -> bool:
        """Take one of ``host``'s ``total`` slots for ``seconds`` (``budget``: at most that many
        for this ``kind``); False when none is free now."""
        return bool(self._grant(keys=[self.key(host)], args=[
            seconds, f"{kind}:{token}", total, budget, kind]))

    def release(self, host: str, kind: str, token: str) -> None:
        self.r.zrem(self.key(host), f"{kind}:{token}")

    def held(self, host: str) -> int:
        """Live leases on ``host`` now."""
        seconds, micros = self.r.time()
        return int(self.r.zcount(self.key(host), f"({seconds + micros / 1e6}", "+inf"))


@dataclass(frozen=True)
class ConfigVersion:
    """A configuration as processes report it: its content hash and its version (the newest
    modification time of its files, so the order does not depend on when a process started)."""

    digest: str
    version: float


CONFIG_HOLD = 600.0  # a version no process has reported for this long no longer counts


class ConfigVersions:
    """Which configuration is the newest that any live process runs."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX):
        self.r = client
        self.keys = [f"{prefix}{{config}}:versions", f"{prefix}{{config}}:held"]
        self._publish = client.register_script(_PUBLISH_CONFIG)

    def publish(self, mine: ConfigVersion, now: float, hold: float = CONFIG_HOLD) -> ConfigVersion:
        """Report ``mine`` as running here; returns the newest version reported live."""
        digest, version = self._publish(keys=self.keys,
                                        args=[mine.digest, mine.version, now, hold])
        return ConfigVersion(digest, float(version))
