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
    articles             stream  one JSON entry per new story's article (bounded)
    alerts               stream  one JSON entry per alert (bounded)
    {w:<watchlist>}:*, {c:<story>}:*, {r:<article>}:rev
                         alert shaping: see SHAPE_LIFETIMES in the "alert shaping" block

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
# ARGV: prefix, story, watchlist, new alert id, alert JSON, created, ttl, stream length,
#       state ("pending": into the outbox; "shaping": alert shaping routes it, see below)
_CLAIM_ALERT = """
local p = ARGV[1]
local fired = p .. 'fired:' .. ARGV[2] .. ':' .. ARGV[3]
local known = redis.call('GET', fired)
if known then return {known, 0} end
redis.call('SET', fired, ARGV[4], 'EX', tonumber(ARGV[7]))
redis.call('HSET', p .. 'alert:' .. ARGV[4], 'data', ARGV[5], 'state', ARGV[9],
           'created', ARGV[6], 'watchlist', ARGV[3], 'attempts', 0)
redis.call('ZADD', p .. 'alerts:by-time', ARGV[6], ARGV[4])
if ARGV[9] == 'pending' then redis.call('ZADD', p .. 'outbox', ARGV[6], ARGV[4]) end
redis.call('XADD', p .. 'alerts', 'MAXLEN', '~', ARGV[8], '*', 'alert', ARGV[5])
redis.call('HINCRBY', p .. 'stats', 'alerts', 1)
return {ARGV[4], 1}
"""

# A feed health event into the outbox, once per id (its id derives from what happened).
# ARGV: prefix, event id, event JSON, created
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
                    created: float, *, shaped: bool = False) -> tuple[str, bool]:
        """Record an alert unless this watchlist already fired for this story. ``shaped``: it
        waits in state "shaping" for ``ShapingStore.shape_alert`` instead of the outbox."""
        aid, created_now = self._claim_alert(args=[
            self.p, story_id, watchlist, alert_id, json.dumps(alert_json), created, self.ttl,
            STREAM_MAXLEN, "shaping" if shaped else "pending"])
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
        if record.get("digest"):  # alert shaping: the digest.created it left in
            data["digest"] = record["digest"]
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

    @cached_property
    def shaping(self) -> ShapingStore:
        """Digest windows, throttles, story copies and update markers (issue 15's block)."""
        return ShapingStore(self)

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


# == alert shaping (issue 15) ===================================================================
# Digest windows, throttle slots, held-back alerts and update markers per watchlist (keys
# tagged {w:<watchlist>}), and a story's copies per outlet with its breaking candidates (keys
# tagged {c:<story>}), so every script below touches one Redis Cluster slot. Expiry is absolute
# (PEXPIREAT at the caller's now + retention), trims are by the caller's time. The events they
# make are alert records ("alert:<id>", the outbox, "alerts:by-time": the alert family's keys).
SHAPE_LIFETIMES: list[tuple[str, str, str, str]] = [   # pattern, type, rule, how
    ("{w:<watchlist>}:window", "hash", "ttl",
     "open digest window (start, end, held_since): retention after the last beat tick"),
    ("{w:<watchlist>}:items", "hash", "ttl",
     "alert id -> alert of the open window: emptied when sealed; retention after the last add"),
    ("{w:<watchlist>}:sealed", "hash", "ttl",
     "closed window -> its alerts: a field lives until its digest is queued; retention"),
    ("{w:<watchlist>}:held", "hash", "ttl",
     "alerts a throttle without digest holds: emptied when flushed; retention after each tick"),
    ("{w:<watchlist>}:sent", "zset", "trim", "alerts let through by the throttle: its period"),
    ("{w:<watchlist>}:recent", "zset", "trim", "alerts already routed -> when: retention"),
    ("{w:<watchlist>}:upd", "zset", "trim", "story -> last alert.updated: the 10-minute gap"),
    ("{w:<watchlist>}:upd:held", "hash", "ttl",
     "story -> updates held by the gap: until sent; retention after the last update"),
    ("{w:<watchlist>}:upd:due", "zset", "ttl",
     "story -> when its held updates may leave: until sent; retention after the last update"),
    ("{w:<watchlist>}:upd:seen", "zset", "trim", "update ids handled -> when: retention"),
    ("{c:<story>}:copies", "hash", "ttl",
     "feed -> first copy from it: retention after the story's last copy"),
    ("{c:<story>}:breaking", "hash", "ttl",
     "watchlist -> alert it fires at the bar: retention after the story's last copy"),
    ("{r:<article>}:rev", "hash", "ttl",
     "text digests of a tracked article, its corrections' dump numbers: retention after the "
     "last correction"),
]

# Shared: seal the open digest window when it has ended (or ``force``: now), then make sure a
# window is open. Sealing moves its alerts into one "d|start|end" field of ``sealed``.
_WINDOW_LIB = """
local function roll(window, items, sealed, now, now_s, ws, we, force, at)
  local s = redis.call('HGET', window, 'start')
  local e_s = redis.call('HGET', window, 'end')
  local e = tonumber(e_s or '0')
  if s and (e <= now or force) then
    local stop = e_s
    if e > now then stop = now_s end
    if redis.call('HLEN', items) > 0 then
      redis.call('HSET', sealed, 'd|' .. s .. '|' .. stop,
                 '[' .. table.concat(redis.call('HVALS', items), ',') .. ']')
      redis.call('DEL', items)
    end
    if e > now then redis.call('HSET', window, 'start', now_s)
    else redis.call('HSET', window, 'start', ws, 'end', we) end
  elseif not s then
    redis.call('HSET', window, 'start', ws, 'end', we)
  end
  redis.call('PEXPIREAT', window, at)
  if redis.call('HLEN', sealed) > 0 then redis.call('PEXPIREAT', sealed, at) end
end
"""

# Route one alert of a shaped watchlist, once per alert id: "send" (a throttle slot is taken),
# "held" (the throttle is full and there is no digest) or "digest" (into the open window).
# KEYS: window, items, sealed, recent, sent, held
# ARGV: alert id, alert JSON, now, mode (throttle|digest|both), limit, throttle cutoff,
#       window start, window end, recent cutoff, expire at (ms)
_SHAPE_ALERT = _WINDOW_LIB + """
local now, at = tonumber(ARGV[3]), ARGV[10]
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[9])
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then
  if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 'send' end
  return 'kept'
end
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('PEXPIREAT', KEYS[4], at)
local mode = ARGV[4]
if mode ~= 'digest' then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[6])
  if redis.call('ZCARD', KEYS[5]) < tonumber(ARGV[5]) and redis.call('HLEN', KEYS[6]) == 0 then
    redis.call('ZADD', KEYS[5], now, ARGV[1])
    redis.call('PEXPIREAT', KEYS[5], at)
    return 'send'
  end
  if mode == 'throttle' then
    redis.call('HSET', KEYS[6], ARGV[1], ARGV[2])
    redis.call('HSETNX', KEYS[1], 'held_since', ARGV[3])
    redis.call('PEXPIREAT', KEYS[6], at)
    redis.call('PEXPIREAT', KEYS[1], at)
    return 'held'
  end
end
roll(KEYS[1], KEYS[2], KEYS[3], now, ARGV[3], ARGV[7], ARGV[8], false, at)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[2], at)
return 'digest'
"""

# Seal the open digest window if it has ended (force=1: whatever its end), keep one open.
# KEYS: window, items, sealed. ARGV: now, window start, window end, force (0|1), expire at (ms)
_SEAL_WINDOW = _WINDOW_LIB + """
roll(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1',
     ARGV[5])
if redis.call('HLEN', KEYS[2]) > 0 then redis.call('PEXPIREAT', KEYS[2], ARGV[5]) end
return redis.call('HLEN', KEYS[3])
"""

# Seal the alerts the throttle held back into one "h|since|now" field, once the throttle has
# room again; the digest takes one throttle slot. KEYS: window, sent, held, sealed
# ARGV: now, limit, throttle cutoff, expire at (ms). Returns 1 if it sealed them.
_FLUSH_HELD = """
if redis.call('HLEN', KEYS[3]) == 0 then return 0 end
redis.call('PEXPIREAT', KEYS[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
local since = redis.call('HGET', KEYS[1], 'held_since') or ARGV[1]
local member = 'h|' .. since .. '|' .. ARGV[1]
redis.call('HSET', KEYS[4], member, '[' .. table.concat(redis.call('HVALS', KEYS[3]), ',') .. ']')
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], 'held_since')
redis.call('ZADD', KEYS[2], ARGV[1], member)
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[4], ARGV[4])
return 1
"""

# An alert.updated for (story, watchlist), once per update id: "send" when none left in the
# last gap (with the updates held so far, to merge), else "held" until the gap has passed.
# KEYS: upd, upd:held, upd:due, upd:seen
# ARGV: story, update id, update JSON, now, gap, seen cutoff, expire at (ms)
_CLAIM_UPDATE = """
local story, uid, now, gap, at = ARGV[1], ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]),
                                  ARGV[7]
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[6])
if redis.call('ZSCORE', KEYS[4], 'send:' .. uid) then
  return {'send', redis.call('HGET', KEYS[2], story) or ''}
end
if redis.call('ZSCORE', KEYS[4], 'held:' .. uid) then return {'held', ''} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - gap)
local last = redis.call('ZSCORE', KEYS[1], story)
for _, k in ipairs(KEYS) do redis.call('PEXPIREAT', k, at) end
if not last then
  redis.call('ZADD', KEYS[1], now, story)
  redis.call('ZADD', KEYS[4], now, 'send:' .. uid)
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[4], at)
  return {'send', redis.call('HGET', KEYS[2], story) or ''}
end
local held = redis.call('HGET', KEYS[2], story)
if held then held = string.sub(held, 1, -2) .. ',' .. ARGV[3] .. ']'
else held = '[' .. ARGV[3] .. ']' end
redis.call('HSET', KEYS[2], story, held)
redis.call('ZADD', KEYS[3], tonumber(last) + gap, story)
redis.call('ZADD', KEYS[4], now, 'held:' .. uid)
for _, k in ipairs(KEYS) do redis.call('PEXPIREAT', k, at) end
return {'held', ''}
"""

# Take a story's held updates for sending when its gap has passed: its slot is marked used
# now (a concurrent update is held), the updates stay until committed. KEYS: upd, upd:held,
# upd:due. ARGV: story, now, gap. Returns the held JSON array, or "" (not due or none held).
_TAKE_UPDATES = """
local story, now, gap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HGET', KEYS[2], story)
if not held then
  redis.call('ZREM', KEYS[3], story)
  return ''
end
local last = redis.call('ZSCORE', KEYS[1], story)
if last and now - tonumber(last) < gap then
  redis.call('ZADD', KEYS[3], tonumber(last) + gap, story)
  return ''
end
redis.call('ZADD', KEYS[1], now, story)
return held
"""

# Forget the held updates that went out (the JSON array read before sending): those appended
# since stay held. KEYS: upd:held, upd:due. ARGV: story, the array as read.
_COMMIT_UPDATES = """
local story, sent = ARGV[1], ARGV[2]
if sent == '' then return 0 end
local held = redis.call('HGET', KEYS[1], story)
if not held then return 0 end
if held == sent then
  redis.call('HDEL', KEYS[1], story)
  redis.call('ZREM', KEYS[2], story)
elseif string.sub(held, 1, #sent - 1) == string.sub(sent, 1, -2) then
  redis.call('HSET', KEYS[1], story, '[' .. string.sub(held, #sent + 1))
end
return 1
"""

# Record a story's copy from one feed (the first from each feed counts) and the alerts its
# watchlists with a breaking bar would fire; return every copy and candidate.
# KEYS: copies, breaking. ARGV: feed, copy JSON, expire at (ms), watchlist, candidate JSON, ...
_RECORD_COPY = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
for i = 4, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIREAT', KEYS[2], ARGV[3]) end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# An event made by shaping (digest.created, alert.updated) into the outbox, once per id.
# KEYS: alert:{id}, outbox, alerts:by-time. ARGV: id, record JSON, created, watchlist
_ADD_SHAPED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'state', 'pending', 'created', ARGV[3],
           'watchlist', ARGV[4], 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""

# Where a routed alert goes: "send" queues it in the outbox, anything else marks it as
# leaving in a digest. Only an alert still being shaped changes. KEYS: alert:{id}, outbox
# ARGV: id, verdict, now
_SET_ROUTE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'shaping' then return 0 end
if ARGV[2] == 'send' then
  redis.call('HSET', KEYS[1], 'state', 'pending')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'state', 'digest')
end
return 1
"""


def _tag(name: str) -> str:
    """A watchlist name as a hash tag: as it is, unless braces would break the tag."""
    if name and "{" not in name and "}" not in name:
        return name
    return "h" + hashlib.sha256(name.encode()).hexdigest()[:16]


class ShapingStore:
    """The state of alert shaping (see the table above); ``Store.shaping`` gives it."""

    def __init__(self, store: Store):
        self.r, self.p, self.ttl = store.r, store.p, store.ttl
        self._scripts = {name: self.r.register_script(text) for name, text in (
            ("shape", _SHAPE_ALERT), ("seal", _SEAL_WINDOW), ("flush", _FLUSH_HELD),
            ("update", _CLAIM_UPDATE), ("take", _TAKE_UPDATES), ("commit", _COMMIT_UPDATES),
            ("copy", _RECORD_COPY), ("add", _ADD_SHAPED), ("route", _SET_ROUTE))}

    def _until(self, now: float) -> int:
        """Expiry as an absolute time (ms): the retention after ``now``, the caller's clock."""
        return int((now + self.ttl) * 1000)

    def _wl(self, watchlist: str, *suffixes: str) -> list[str]:
        return [f"{self.p}{{w:{_tag(watchlist)}}}:{s}" for s in suffixes]

    # -- routing alerts ------------------------------------------------------------------------
    def shape_alert(self, watchlist: str, alert_id: str, alert_json: dict[str, Any], now: float,
                    mode: str, limit: int, cutoff: float, window: tuple[float, float]) -> str:
        """Route an alert of a watchlist with a digest and/or throttle: send | held | digest
        (kept: routed before, not sent)."""
        return str(self._scripts["shape"](
            keys=self._wl(watchlist, "window", "items", "sealed", "recent", "sent", "held"),
            args=[alert_id, json.dumps(alert_json), repr(now), mode, limit, repr(cutoff),
                  repr(window[0]), repr(window[1]), repr(now - self.ttl), self._until(now)]))

    def set_route(self, alert_id: str, verdict: str, now: float) -> None:
        self._scripts["route"](keys=[f"{self.p}alert:{alert_id}", self.p + "outbox"],
                               args=[alert_id, verdict, repr(now)])

    # -- digests -------------------------------------------------------------------------------
    def seal_window(self, watchlist: str, now: float, window: tuple[float, float],
                    force: bool = False) -> int:
        """Seal the watchlist's digest window if it has ended (``force``: now); returns how
        many sealed digests wait to be queued."""
        return int(self._scripts["seal"](
            keys=self._wl(watchlist, "window", "items", "sealed"),
            args=[repr(now), repr(window[0]), repr(window[1]), int(force), self._until(now)]))

    def flush_held(self, watchlist: str, now: float, limit: int, cutoff: float) -> bool:
        """Seal what the throttle held back, if it has room again."""
        return bool(self._scripts["flush"](
            keys=self._wl(watchlist, "window", "sent", "held", "sealed"),
            args=[repr(now), limit, repr(cutoff), self._until(now)]))

    def sealed(self, watchlist: str) -> list[tuple[str, float, float, list[dict[str, Any]]]]:
        """The sealed digests waiting to be queued: (field, start, end, alerts)."""
        out = []
        for field, items in self.r.hgetall(self._wl(watchlist, "sealed")[0]).items():
            _, start, end = field.split("|")
            out.append((field, float(start), float(end), json.loads(items)))
        return sorted(out, key=lambda s: s[1])

    def mark_digested(self, alert_ids: list[str], digest_id: str) -> None:
        """Note on each alert the digest it leaves in (for ``alerts show``)."""
        pipe = self.r.pipeline(transaction=False)
        for aid in alert_ids:
            pipe.hset(f"{self.p}alert:{aid}", "digest", digest_id)
        pipe.execute()

    def drop_sealed(self, watchlist: str, field: str) -> None:
        self.r.hdel(self._wl(watchlist, "sealed")[0], field)

    def pending_counts(self, watchlist: str) -> dict[str, int]:
        """Alerts waiting in the open window, held back by the throttle, and sealed digests."""
        pipe = self.r.pipeline()
        for key in self._wl(watchlist, "items", "held", "sealed"):
            pipe.hlen(key)
        items, held, sealed = pipe.execute()
        return {"window": items, "held": held, "sealed": sealed}

    def add_event(self, record: dict[str, Any], now: float) -> bool:
        """Queue a digest.created or alert.updated (False: queued before, by its id)."""
        aid = record["id"]
        return bool(self._scripts["add"](
            keys=[f"{self.p}alert:{aid}", self.p + "outbox", self.p + "alerts:by-time"],
            args=[aid, json.dumps(record, ensure_ascii=False), repr(now), record["watchlist"]]))

    # -- stories: copies, breaking candidates, updates -----------------------------------------
    def record_copy(self, story: str, feed: str, copy: dict[str, Any],
                    candidates: dict[str, dict[str, Any]], now: float
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Record a copy (the first from each feed counts) and breaking candidates; returns
        every copy by feed and every candidate by watchlist."""
        args: list[Any] = [feed, json.dumps(copy), self._until(now)]
        for watchlist, alert in candidates.items():
            args += [watchlist, json.dumps(alert)]
        copies, cands = self._scripts["copy"](
            keys=[f"{self.p}{{c:{story}}}:copies", f"{self.p}{{c:{story}}}:breaking"], args=args)
        return ({copies[i]: json.loads(copies[i + 1]) for i in range(0, len(copies), 2)},
                {cands[i]: json.loads(cands[i + 1]) for i in range(0, len(cands), 2)})

    def outlets(self, story: str) -> int:
        """How many distinct feeds carried the story (as far as copies were recorded)."""
        return int(self.r.hlen(f"{self.p}{{c:{story}}}:copies"))

    def fired_alert(self, story: str, watchlist: str) -> tuple[str, float] | None:
        """The alert a watchlist fired for a story and when it was made, if it did."""
        aid = self.r.get(f"{self.p}fired:{story}:{watchlist}")
        created = self.r.hget(f"{self.p}alert:{aid}", "created") if aid else None
        return (aid, float(created)) if aid and created else None

    def claim_update(self, watchlist: str, story: str, update: dict[str, Any], now: float,
                     gap: float) -> tuple[str, str]:
        """send (with the JSON array of updates held so far, "" for none: merge them in, then
        ``commit_updates`` that array) or held."""
        verdict, held = self._scripts["update"](
            keys=self._wl(watchlist, "upd", "upd:held", "upd:due", "upd:seen"),
            args=[story, update["id"], json.dumps(update, ensure_ascii=False), repr(now), gap,
                  repr(now - self.ttl), self._until(now)])
        return str(verdict), str(held)

    def due_updates(self, watchlist: str, now: float) -> list[str]:
        return self.r.zrangebyscore(self._wl(watchlist, "upd:due")[0], "-inf", now)

    def take_updates(self, watchlist: str, story: str, now: float, gap: float) -> str:
        return str(self._scripts["take"](keys=self._wl(watchlist, "upd", "upd:held", "upd:due"),
                                         args=[story, repr(now), gap]))

    def commit_updates(self, watchlist: str, story: str, sent: str) -> None:
        self._scripts["commit"](keys=self._wl(watchlist, "upd:held", "upd:due"),
                                args=[story, sent])

    # -- corrections ---------------------------------------------------------------------------
    def revisions(self, article_ids: list[str]) -> dict[str, str]:
        """The text revision recorded for each of these articles (only tracked ones)."""
        pipe = self.r.pipeline()
        for aid in article_ids:
            pipe.hget(f"{self.p}{{r:{aid}}}:rev", "rev")
        return {a: rev for a, rev in zip(article_ids, pipe.execute(), strict=True) if rev}

    def revision(self, article_id: str) -> dict[str, str]:
        return self.r.hgetall(f"{self.p}{{r:{article_id}}}:rev")

    def track_revision(self, article_id: str, fields: dict[str, str], now: float, *,
                       only_new: bool) -> None:
        """Remember an article's text (``only_new``: unless it is tracked already)."""
        key = f"{self.p}{{r:{article_id}}}:rev"
        if only_new and self.r.exists(key):
            return
        pipe = self.r.pipeline()
        pipe.hset(key, mapping=fields)
        pipe.pexpireat(key, self._until(now))
        pipe.execute()

    def revision_seq(self, article_id: str, rev: str, day: str, taken: int | None = None) -> int:
        """The dump sequence number of a correction, the same on every retry (``taken``: that
        number is another file's, take a new one). A number taken by a worker that died before
        recording it is skipped, never given twice."""
        key, field = f"{self.p}{{r:{article_id}}}:rev", f"seq:{rev}"
        known = self.r.hget(key, field)
        if known is not None and taken is None:
            return int(known)
        seq = self.r.incr(f"{self.p}seq:{day}") - 1     # as _CLAIM_SEQ: the first file is 000
        if taken is not None:
            self.r.hset(key, field, seq)
            return seq
        self.r.hsetnx(key, field, seq)
        return int(self.r.hget(key, field))
