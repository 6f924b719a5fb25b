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
    alert:{id}           hash    data (JSON), state, created, watchlist, attempts (no TTL)
    alerts:by-time       zset    alert id -> created time
    outbox               zset    alert id -> next delivery attempt time
    seq:{YYYY-MM-DD}     counter dump file sequence per day folder
    stats                hash    articles, stories, duplicates, alerts
    articles             stream  one JSON entry per new story's article (bounded)
    alerts               stream  one JSON entry per alert (bounded)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from worker.dedupe import THRESHOLD, StoryKeys, sig_to_hex

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
if known then return {known, redis.call('HGET', art, 'new')} end
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
  local need, best, seen = tonumber(ARGV[8]), -1, {}
  for i = 11, #ARGV do
    for _, cand in ipairs(redis.call('SMEMBERS', p .. 'id:band:' .. ARGV[i])) do
      if not seen[cand] then
        seen[cand] = true
        local other = redis.call('GET', p .. 'story:sig:' .. cand)
        if other and #other == #sig then
          local same = 0
          for s = 1, #sig, 8 do
            if string.sub(sig, s, s + 7) == string.sub(other, s, s + 7) then same = same + 1 end
          end
          if same >= need and same > best then best, story = same, cand end
        end
      end
    end
  end
end
local new = '0'
if story then
  redis.call('HINCRBY', p .. 'story:' .. story, 'copies', 1)
  redis.call('HINCRBY', p .. 'stats', 'duplicates', 1)
else
  story, new = ARGV[3], '1'
  redis.call('HSET', p .. 'story:' .. story, 'first_article', ARGV[2], 'created', ARGV[10], 'copies', 1)
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
return {story, new}
"""

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


@dataclass(frozen=True)
class StoryClaim:
    story_id: str
    is_new: bool


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
        story, new = self._claim_story(args=[
            self.p, article_id, article_id, _digest(keys.url), _digest(keys.guid), keys.fingerprint,
            sig_to_hex(keys.signature), need, self.ttl, now, *keys.bands])
        return StoryClaim(story_id=story, is_new=new == "1")

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
        return data

    def stats(self) -> dict[str, int]:
        raw = self.r.hgetall(self.p + "stats")
        return {k: int(raw.get(k, 0)) for k in ("articles", "stories", "duplicates", "alerts")}

    def now(self) -> float:
        return time.time()
