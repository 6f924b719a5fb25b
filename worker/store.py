"""All of newsmon's state in Redis: every key name, its lifetime, and every Lua script, and the
one function that connects to it (``connect``: one Redis, a Redis Cluster, or the master a set of
sentinels names, after NEWSMON_REDIS_MODE).

Keys start with ``newsmon:`` and carry a Redis Cluster hash tag (``{...}``) naming their slot.
A script touches only keys of one slot, all named in KEYS; the slots are chosen by what must
change atomically together:

    {sched}        the schedule: due times and hand-outs of all feeds (one claim hands many)
    {f:<feed>}     one feed: its fetch state and the ids of its latest document
    {idx}          story identity: the index every article is claimed against, atomically
                   across stories (two copies of one story at two workers are one story)
    {out}          alerts and their delivery: the outbox hands out members of all alerts at
                   once, and an alert's state changes with its outbox members
    {w:<watchlist>}, {c:<story>}, {r:<article>}
                   alert shaping (issue 15): a watchlist's digest window, throttle and held
                   updates; a story's copies per feed; an article's text revisions (the
                   "alert shaping" block at the end, rows appended to LIFETIMES)

``LIFETIMES`` below is the one table of key families: each has exactly one lifetime rule
(docs/service.md prints it); tests/test_lifetimes.py fills Redis through every path and fails
for a key that matches no row. A family added elsewhere appends its row to the table.

Times given to the store are the caller's clock (``now``): expiry is absolute (PEXPIREAT at
``now`` + lifetime) and liveness is read from stored times, so the store behaves the same on a
simulated clock (the soak benchmark) as on the wall clock.

Scale-out slots (the block at the end of this module):

    {h:<host>}     one host: the connection leases every worker holds to it
    {config}       the configuration versions processes run (a rollout)

Delivery: an alert enters the outbox as its bare id. Whoever claims it first lists its
destinations ("webhook:{name}", "notify:{scheme}:{digest}") and replaces it by one member
"alert id|dest" each, or marks the alert "recorded" when it has none. Claiming a member moves
its score ahead by a lease and writes the claimer's token to lease:{dest}, so a worker that dies
mid-delivery only delays it; st:{dest} is pending, retrying, delivered or dead, and the alert's
own state and next_attempt sum them up (dead once nothing is pending or retrying and one is dead).
An alert that is delivered, dead or only recorded is removed NEWSMON_ALERT_RETENTION_DAYS after
its last attempt (``{out}:expiry``); a pending or retrying one is kept, and so is one in state
"shaping" (alert shaping has not routed it yet); one in state "digest" (it left in a
digest.created) is finished when routed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

import redis
import redis.backoff
import redis.cluster
import redis.retry
import redis.sentinel

from worker.dedupe import (
    BAND_CAP,
    EPOCHS_READ,
    Claim,
    ClaimPlan,
    IndexRead,
    StoryKeys,
    StoryRecord,
    band_slots,
    claim_story,
    exact_keys,
)

if TYPE_CHECKING:
    from worker.settings import Settings

PREFIX = "newsmon:"
# Failures of the infrastructure, not of the input: the task that met one runs again.
INFRA_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, MemoryError)
GONE_KEPT = 2.0              # removed alerts are remembered as "aged out" this many retentions
FORGET_BATCH = 200           # finished alerts removed per sweep call
PARKED_KEPT = 30 * 86400.0   # a parked task is listed this long
SENTINEL_PORT = 26379
# One try per sentinel: asking the next one is the retry (redis-py's default backs off
# several times on a sentinel that is down before it moves on).
SENTINEL_CLIENT = {"retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                   "socket_connect_timeout": 2.0, "socket_timeout": 2.0}
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?")


def connect(url: str, mode: str = "standalone", master: str | None = None,
            **options: Any) -> Any:
    """A client of the state store. standalone: one Redis at ``url``; cluster: ``url`` is any
    node of a Redis Cluster (the others are discovered); sentinel: ``url`` lists the sentinels
    (``redis://[:password@]h1:26379,h2:26379/0``) and ``master`` names the service they watch;
    the password is the master's. ``options`` go to every connection (timeouts)."""
    options = {"decode_responses": True, "health_check_interval": 30, **options}
    if mode == "cluster":
        return redis.cluster.RedisCluster.from_url(url, **options)
    if mode == "sentinel":
        return _sentinel_master(url, master or "", options)
    return redis.Redis.from_url(url, **options)


def close(client: Any) -> None:
    """Close a client of ``connect`` (a sentinel client's connections to the sentinels too)."""
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        sentinel.close()
    client.close()


def _sentinel_master(url: str, master: str, options: dict[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    user, _, password = auth.partition(":") if auth else ("", "", "")
    nodes = []
    for host in filter(None, (h.strip() for h in hosts.split(","))):
        found = _HOST_PORT.fullmatch(host)
        if not found:
            raise ValueError(f"REDIS_URL: {host!r} is not host:port")
        nodes.append((found["v6"] or found["host"], int(found["port"] or SENTINEL_PORT)))
    db = int(parts.path.strip("/") or 0)
    sentinels = redis.sentinel.Sentinel(  # asked for the master's address, again on failover
        nodes, sentinel_kwargs={**SENTINEL_CLIENT,
                                **{k: v for k, v in options.items() if k.startswith("socket_")}})
    if parts.scheme == "rediss":
        options["ssl"] = True
    return sentinels.master_for(master, db=db, username=unquote(user) or None,
                                password=unquote(password) or None, **options)



class Lifetime(NamedTuple):
    """One key family: its pattern (after the prefix; <...> is a variable part), Redis type,
    the rule that bounds it, and what keeps it alive or trims it."""

    pattern: str
    type: str
    rule: str          # "ttl" | "trim" | "config" | "fixed"
    how: str


LIFETIMES: list[Lifetime] = [
    Lifetime("{sched}:due", "zset", "config", "one member per configured feed (sync_feeds)"),
    Lifetime("{sched}:beat", "string", "fixed", "one key: the last tick's time"),
    Lifetime("{sched}:cycle:<cycle>", "hash", "ttl",
             "one tick's poll cycle (feeds, polled, new, failed, batches, alerts): an hour "
             "after its last step"),
    Lifetime("{sched}:lease", "hash", "config",
             "feed -> token of its latest hand-out, until its fetch records; removed feeds go"),
    Lifetime("{sched}:runs:<task id>", "string", "ttl",
             "starts of a task not finished yet (a worker died): 1 day after its last start"),
    Lifetime("{sched}:parked", "hash", "trim",
             "task id -> a task that killed its worker 3 times, with why: kept 30 days"),
    Lifetime("{f:<feed>}:feed", "hash", "config",
             "fetch state of a configured feed (validators, outcome, health, body_hash of the last "
             "body parsed); deleted when the feed leaves the configuration"),
    Lifetime("{f:<feed>}:ids", "set", "config",
             "article ids of the feed's latest document, replaced by each; deleted with the feed"),
    Lifetime("{idx}:art:<article>", "hash", "ttl",
             "story claim, dump sequence, first text (until done): retention after the claim"),
    Lifetime("{idx}:x:<kind>:<digest>", "string", "ttl",
             "story of an exact key (url, guid, fp): retention after the last copy carrying it"),
    Lifetime("{idx}:s:<story>", "hash", "ttl",
             "story: first article, created, seen, copies: retention after its last copy"),
    Lifetime("{idx}:sig:<story>", "string", "ttl",
             "the story's MinHash signature (base64, apart so the hash stays compact): the "
             "story's lifetime"),
    Lifetime("{idx}:fired:<story>", "hash", "ttl",
             "watchlist -> alert id, once per story: the story's lifetime, refreshed with it"),
    Lifetime("{idx}:b:<epoch>:<bucket>", "hash", "ttl",
             "band slot -> story ids: until its epoch is no longer read (1 to 1.5 retentions)"),
    Lifetime("{idx}:ver", "string", "fixed", "one counter: bumped by every new story"),
    Lifetime("{idx}:seq:<day>", "string", "ttl",
             "dump file sequence of a day folder: retention after the day's last file"),
    Lifetime("{idx}:articles", "stream", "trim", "new stories' articles: MINID now - retention"),
    Lifetime("{idx}:stats", "hash", "fixed", "counters: articles, stories, duplicates"),
    Lifetime("{out}:alert:<alert>", "hash", "trim",
             "alert or feed event with its attempts: alert retention after its last attempt "
             "once delivered, dead or recorded, or after it went into a digest ({out}:expiry); "
             "pending ones and those alert shaping has not routed yet are kept"),
    Lifetime("{out}:expiry", "zset", "trim", "finished alert -> removal time; left on removal"),
    Lifetime("{out}:gone", "zset", "trim", "removed alert -> when: kept 2 alert retentions"),
    Lifetime("{out}:by-time", "zset", "trim", "alert id -> created: left when the alert goes"),
    Lifetime("{out}:alerts", "stream", "trim", "alerts without dump text: MINID alert retention"),
    Lifetime("{out}:outbox", "zset", "trim",
             "due deliveries: a member leaves when delivered or dead; a gone alert's are dropped"),
    Lifetime("{out}:dead", "zset", "trim", "dead deliveries: left on replay or with the alert"),
    Lifetime("{out}:dest:<dest>:inflight", "zset", "ttl",
             "attempts in flight to a destination: 1 day after the last attempt"),
    Lifetime("{out}:dest:<dest>:hold", "string", "ttl", "Retry-After: until the hold ends"),
    Lifetime("{out}:disabled", "hash", "config",
             "410-disabled webhook digests: a digest no longer configured is dropped each tick"),
    Lifetime("{out}:stats", "hash", "fixed", "counter: alerts"),
    Lifetime("{h:<host>}:leases", "zset", "ttl",
             "connection leases to a host (\"feed:\"/\"page:\" + token -> lease end): expires "
             "with its longest lease, ended leases trimmed by every grant"),
    Lifetime("{config}:versions", "zset", "trim",
             "configuration digest -> version (its files' newest mtime): trimmed with "
             "{config}:held"),
    Lifetime("{config}:held", "zset", "trim",
             "configuration digest -> when a process last said it runs it: left after 10 min"),
]


class Keys:
    """Key names (with the prefix), one method or attribute per row of LIFETIMES."""

    def __init__(self, prefix: str = PREFIX):
        p = self.p = prefix
        self.due, self.beat, self.lease = p + "{sched}:due", p + "{sched}:beat", \
            p + "{sched}:lease"
        self.version, self.articles, self.idx_stats = p + "{idx}:ver", p + "{idx}:articles", \
            p + "{idx}:stats"
        self.expiry, self.gone, self.by_time = p + "{out}:expiry", p + "{out}:gone", \
            p + "{out}:by-time"
        self.alerts, self.outbox, self.dead = p + "{out}:alerts", p + "{out}:outbox", \
            p + "{out}:dead"
        self.disabled, self.out_stats = p + "{out}:disabled", p + "{out}:stats"

    def feed(self, name: str) -> str:
        return f"{self.p}{{f:{name}}}:feed"

    def feed_ids(self, name: str) -> str:
        return f"{self.p}{{f:{name}}}:ids"

    def art(self, article_id: str) -> str:
        return f"{self.p}{{idx}}:art:{article_id}"

    def exact(self, key: str) -> str:
        """``key`` is "url:…", "guid:…" or "fp:…" (dedupe.exact_keys); long ones are hashed."""
        kind, _, value = key.partition(":")
        digest = value if kind == "fp" else hashlib.sha256(value.encode()).hexdigest()[:32]
        return f"{self.p}{{idx}}:x:{kind}:{digest}"

    def story(self, story_id: str) -> str:
        return f"{self.p}{{idx}}:s:{story_id}"

    def signature(self, story_id: str) -> str:
        return f"{self.p}{{idx}}:sig:{story_id}"

    def fired(self, story_id: str) -> str:
        return f"{self.p}{{idx}}:fired:{story_id}"

    def band(self, epoch: int, bucket: str) -> str:
        return f"{self.p}{{idx}}:b:{epoch}:{bucket}"

    def seq(self, day: str) -> str:
        return f"{self.p}{{idx}}:seq:{day}"

    def alert(self, alert_id: str) -> str:
        return f"{self.p}{{out}}:alert:{alert_id}"

    def inflight(self, dest: str) -> str:
        return f"{self.p}{{out}}:dest:{dest}:inflight"

    def hold(self, dest: str) -> str:
        return f"{self.p}{{out}}:dest:{dest}:hold"


# -- scheduling ---------------------------------------------------------------------------------
# Hand out the due feeds: each one's due time moves a lease ahead, and the hand-out's token is
# noted, so that only one fetch per hand-out runs (begin_fetch), and only within its lease.
# KEYS: due, lease. ARGV: now, lease, limit, token
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[i])
  redis.call('HSET', KEYS[2], due[i], ARGV[4])
  table.insert(out, due[i])
  table.insert(out, due[i + 1])
end
return out
"""

# A hand-out is published, then confirmed: the feeds' leases, short until then (a hand-out
# whose publisher died is handed out again soon), move on to the full lease. Only the leases
# this hand-out set and still holds move. KEYS: due, lease. ARGV: token, until, new, feeds...
_CONFIRM_DUE = """
local untl = tonumber(ARGV[2])
local n = 0
for i = 4, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1]
     and tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0') == untl then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[i])
    n = n + 1
  end
end
return n
"""

# A fetch begins only with the token of the feed's latest hand-out, within its lease (a
# redelivery of a task whose worker died runs again); the token goes when the fetch records
# its outcome. KEYS: due, lease. ARGV: feed, token, now. Returns 1 to go ahead.
_BEGIN_FETCH = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local leased = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if leased <= tonumber(ARGV[3]) then return 0 end
return 1
"""

# One step of a poll cycle: add the increments; the caller that completes the cycle (every feed
# polled, every batch processed) gets its fields back, once. KEYS: cycle. ARGV: ttl, failed
# feed or "", then field, increment pairs.
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

# -- story identity -------------------------------------------------------------------------------
# Commit a story claim decided by dedupe.claim_story, if what it read still holds: the article
# is not claimed yet; for a new story, no story was added since (version) and its exact keys
# are still unowned; for a copy, its story is still alive. Then record it: the story's
# lifetime, its fired markers' and the copy's exact keys' move to now + retention.
# Exact keys hold "story until_ms". Returns {story, new, fresh} or false (read again).
# KEYS: art, version, stats, story, fired, signature, exact keys (ntake), band buckets (one a field)
# ARGV: article, story, new, version, now ms, until ms, signature, epoch, band until ms,
#       ntake, owners read (ntake), band fields
_COMMIT_STORY = """
local art, story, new = ARGV[1], ARGV[2], ARGV[3] == '1'
local now, untl, ntake = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[10])
local ttl = untl - now
local known = redis.call('HMGET', KEYS[1], 'story', 'new', 'until')
if known[1] and tonumber(known[3]) > now then return {known[1], known[2], '0'} end
if new and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then return false end
local function owner(v)
  if not v then return '' end
  local sid, u = string.match(v, '^(%S+) (%d+)$')
  if sid and tonumber(u) > now then return sid end
  return ''
end
local take = {}
for i = 1, ntake do
  if owner(redis.call('GET', KEYS[6 + i])) == ARGV[10 + i] then table.insert(take, KEYS[6 + i])
  elseif new then return false end
end
if new then
  redis.call('HSET', KEYS[4], 'first', art, 'created', now, 'seen', now, 'copies', 1,
             'epoch', ARGV[8])
  redis.call('SET', KEYS[6], ARGV[7])
  redis.call('INCR', KEYS[2])
  redis.call('HINCRBY', KEYS[3], 'stories', 1)
else
  local seen = tonumber(redis.call('HGET', KEYS[4], 'seen') or '-1')
  if seen < 0 or seen + ttl <= now then return false end
  redis.call('HINCRBY', KEYS[4], 'copies', 1)
  redis.call('HSET', KEYS[4], 'seen', now)
  if #ARGV > 10 + ntake then redis.call('HSET', KEYS[4], 'epoch', ARGV[8]) end
  redis.call('HINCRBY', KEYS[3], 'duplicates', 1)
end
redis.call('PEXPIREAT', KEYS[4], untl)
redis.call('PEXPIREAT', KEYS[5], untl)
redis.call('PEXPIREAT', KEYS[6], untl)
for _, key in ipairs(take) do redis.call('SET', key, story .. ' ' .. untl, 'PXAT', untl) end
local first = 7 + ntake
for j = 11 + ntake, #ARGV do
  local key = KEYS[first + j - 11 - ntake]
  local kept = {}
  for id in string.gmatch(redis.call('HGET', key, ARGV[j]) or '', '%S+') do
    if id ~= story then table.insert(kept, id) end
  end
  table.insert(kept, story)
  while #kept > BAND_CAP do table.remove(kept, 1) end
  redis.call('HSET', key, ARGV[j], table.concat(kept, ' '))
  redis.call('PEXPIREAT', key, ARGV[9])
end
redis.call('HSET', KEYS[1], 'story', story, 'new', ARGV[3], 'until', untl)
redis.call('PEXPIREAT', KEYS[1], untl)
redis.call('HINCRBY', KEYS[3], 'articles', 1)
return {story, ARGV[3], '1'}
""".replace("BAND_CAP", str(BAND_CAP))

# What a story claim reads, in one reply: the article's claim, the index version, the exact
# keys' values and the ids in the band slots (joined by spaces). Reads only.
# KEYS: art, version, exact keys (nexact), band buckets. ARGV: nexact, band fields
_READ_CLAIM = """
local out = redis.call('HMGET', KEYS[1], 'story', 'new', 'until')
table.insert(out, redis.call('GET', KEYS[2]) or '0')
local n = tonumber(ARGV[1])
for i = 1, n do table.insert(out, redis.call('GET', KEYS[2 + i]) or '') end
local members = {}
for j = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1 + n + j], ARGV[j])
  if v then table.insert(members, v) end
end
table.insert(out, table.concat(members, ' '))
return out
"""

# The text of an article's dump, fixed by the first run that got here.
# KEYS: art. ARGV: text. Returns the stored text.
_FIRST_TEXT = """
redis.call('HSETNX', KEYS[1], 'text', ARGV[1])
return redis.call('HGET', KEYS[1], 'text')
"""

# The sequence number of an article's dump file: assigned once, the same on every retry.
# KEYS: art, seq of the day. ARGV: force (1: the number taken is occupied by another file),
# until ms
_CLAIM_SEQ = """
local seq = redis.call('HGET', KEYS[1], 'seq')
if seq and ARGV[1] ~= '1' then return tonumber(seq) end
seq = redis.call('INCR', KEYS[2]) - 1  -- the first file is 000, as offline
redis.call('PEXPIREAT', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'seq', seq)
return seq
"""

# A stream entry id at the caller's time, after the stream's last one (a clock never goes back).
_NEXT_ID = """
local function next_id(stream, now_ms)
  local ms, seq = tonumber(now_ms), 0
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if last then
    local lms, lseq = string.match(last[1], '^(%d+)-(%d+)$')
    if tonumber(lms) >= ms then ms, seq = tonumber(lms), tonumber(lseq) + 1 end
  end
  return string.format('%d-%d', ms, seq)
end
"""

# Append a new story's article to the stream once (the article's own flag says whether), and
# trim entries older than the retention. Entry ids follow the caller's clock, never going back.
# KEYS: art, stream. ARGV: entry JSON, now ms, min id ms, file. Returns 1 if appended.
_RECORD_ARTICLE = _NEXT_ID + """
if redis.call('HGET', KEYS[1], 'streamed') then return 0 end
redis.call('XADD', KEYS[2], next_id(KEYS[2], ARGV[2]), 'article', ARGV[1])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
redis.call('HSET', KEYS[1], 'streamed', 1, 'file', ARGV[4])
return 1
"""

# The article is processed to the end: its first text is no longer needed.
# KEYS: art
_MARK_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'done', 1)
redis.call('HDEL', KEYS[1], 'text')
return 1
"""

# -- alerts -------------------------------------------------------------------------------------
# A watchlist fires at most once per story. The article whose claim set the marker notes it,
# so a retry of that article (and only that one) makes sure the alert exists.
# KEYS: art, fired. ARGV: watchlist, new alert id, until ms. Returns {alert id, ours 0/1}.
_CLAIM_FIRED = """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner then
  return {owner, redis.call('HGET', KEYS[1], 'a:' .. ARGV[1]) == owner and 1 or 0}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'a:' .. ARGV[1], ARGV[2])
return {ARGV[2], 1}
"""

# An alert record with its stream entry and outbox slot, created once (never again after it
# aged out). KEYS: alert, by-time, outbox, stream, stats, gone.
# ARGV: id, record JSON, created, watchlist, stream entry JSON, now ms, stream min id ms,
#       state ("pending": into the outbox; "shaping": alert shaping routes it, see the end)
_CREATE_ALERT = _NEXT_ID + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('ZSCORE', KEYS[6], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'state', ARGV[8], 'created', ARGV[3],
           'watchlist', ARGV[4], 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[8] == 'pending' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
redis.call('XADD', KEYS[4], next_id(KEYS[4], ARGV[6]), 'alert', ARGV[5])
redis.call('XTRIM', KEYS[4], 'MINID', ARGV[7])
redis.call('HINCRBY', KEYS[5], 'alerts', 1)
return 1
"""

# A feed health event into the outbox, once per id (its id derives from what happened).
# KEYS: alert, outbox, gone. ARGV: event id, event JSON, created
_ADD_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('ZSCORE', KEYS[3], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'state', 'pending', 'created', ARGV[3],
           'watchlist', '', 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# Remove finished alerts whose time has come (their expiry score is still due), with their
# dead-letter members; remember each as gone, and forget the gone older than ``kept``.
# KEYS: expiry, by-time, gone, dead, outbox, alerts (one per id). ARGV: now, gone before, ids
_FORGET_ALERTS = """
local now, removed = tonumber(ARGV[1]), 0
for i = 3, #ARGV do
  local id, a = ARGV[i], KEYS[3 + i]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    for dest in string.gmatch(redis.call('HGET', a, 'dests') or '', '%S+') do
      redis.call('ZREM', KEYS[4], id .. '|' .. dest)
      redis.call('ZREM', KEYS[5], id .. '|' .. dest)
    end
    redis.call('ZREM', KEYS[5], id)
    redis.call('DEL', a)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[3], now, id)
    removed = removed + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2])
return removed
"""


def _ms(seconds: float) -> int:
    return int(math.ceil(seconds * 1000))


def pack_signature(sig: Sequence[int]) -> str:
    """A signature as base64 of its 32-bit values (4 bytes a value, 684 characters for 128)."""
    return base64.b64encode(struct.pack(f">{len(sig)}I", *sig)).decode()


def unpack_signature(packed: str) -> tuple[int, ...]:
    raw = base64.b64decode(packed)
    return struct.unpack(f">{len(raw) // 4}I", raw)


class StoryClaim(NamedTuple):
    story_id: str
    is_new: bool
    fresh: bool = True      # False: an earlier run already claimed this article (a retry)


class RedisStoryIndex:
    """dedupe's IndexStorage on Redis: reads in one round trip, the commit in one script."""

    def __init__(self, store: Store):
        self.s = store
        self.retention = store.ttl
        self._commit = store.r.register_script(_COMMIT_STORY)
        self._read = store.r.register_script(_READ_CLAIM)

    def read(self, article_id: str, keys: StoryKeys, epochs: tuple[int, ...],
             now: float) -> IndexRead:
        k = self.s.keys
        exact = exact_keys(keys)
        slots = [(k.band(epoch, bucket), field) for epoch in epochs
                 for bucket, field in band_slots(keys.signature)]
        reply = self._read(keys=[k.art(article_id), k.version, *(k.exact(e) for e in exact),
                                 *(key for key, _ in slots)],
                           args=[len(exact), *(field for _, field in slots)])
        story, new, until, version, *rest = reply
        now_ms = _ms(now)
        owners = tuple(self._owner(v, now_ms) for v in rest[:len(exact)])
        claimed = (story, new == "1") if story and until and int(until) > now_ms else None
        return IndexRead(claimed, version, owners, tuple(rest[-1].split()))

    @staticmethod
    def _owner(value: str | None, now_ms: int) -> str:
        if not value:
            return ""
        sid, _, until = value.partition(" ")
        return sid if until.isdigit() and int(until) > now_ms else ""

    def stories(self, ids: Sequence[str], now: float,
                signatures: bool) -> dict[str, StoryRecord]:
        pipe = self.s.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self.s.keys.story(sid), ["seen", "epoch"])
            if signatures:
                pipe.get(self.s.keys.signature(sid))
        replies = pipe.execute()
        step = 2 if signatures else 1
        out = {}
        for n, sid in enumerate(ids):
            values = replies[n * step]
            if values[0] is None or int(values[0]) / 1000 + self.retention <= now:
                continue
            packed = replies[n * step + 1] if signatures else None
            sig = unpack_signature(packed) if packed else ()
            out[sid] = StoryRecord(int(values[0]) / 1000, int(values[1] or 0), sig)
        return out

    def commit(self, plan: ClaimPlan, now: float) -> Claim | None:
        k = self.s.keys
        until = _ms(now + self.retention)
        band_until = _ms((plan.epoch + 1 + EPOCHS_READ - 1) * self.retention / 2)
        keys = [k.art(plan.article_id), k.version, k.idx_stats, k.story(plan.story_id),
                k.fired(plan.story_id), k.signature(plan.story_id),
                *(k.exact(key) for key, _ in plan.take),
                *(k.band(plan.epoch, bucket) for bucket, _ in plan.bands)]
        out = self._commit(keys=keys, args=[
            plan.article_id, plan.story_id, "1" if plan.is_new else "0", plan.version,
            _ms(now), until, pack_signature(plan.signature) if plan.signature else "",
            plan.epoch, band_until, len(plan.take), *(owner for _, owner in plan.take),
            *(field for _, field in plan.bands)])
        if not out:
            return None
        return Claim(out[0], out[1] == "1", fresh=out[2] == "1")


class Store:
    """newsmon's Redis state behind a small interface. Safe to share between threads."""

    def __init__(self, client: redis.Redis, retention_days: float = 30.0, prefix: str = PREFIX,
                 alert_retention_days: float = 30.0):
        self.r = client
        self.p = prefix
        self.keys = Keys(prefix)
        self.ttl = retention_days * 86400
        self.alert_ttl = alert_retention_days * 86400
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._begin_fetch = client.register_script(_BEGIN_FETCH)
        self._confirm_due = client.register_script(_CONFIRM_DUE)
        self._first_text = client.register_script(_FIRST_TEXT)
        self._claim_seq = client.register_script(_CLAIM_SEQ)
        self._record_article = client.register_script(_RECORD_ARTICLE)
        self._mark_done = client.register_script(_MARK_DONE)
        self._claim_fired = client.register_script(_CLAIM_FIRED)
        self._create_alert = client.register_script(_CREATE_ALERT)
        self._add_event = client.register_script(_ADD_EVENT)
        self._forget_alerts = client.register_script(_FORGET_ALERTS)
        self.index = RedisStoryIndex(self)
        self._cycle_step = client.register_script(_CYCLE_STEP)
        self.hosts = HostLeases(client, prefix)          # scale-out block, end of module
        self.versions = ConfigVersions(client, prefix)

    @classmethod
    def from_url(cls, url: str, retention_days: float = 30.0,
                 alert_retention_days: float = 30.0, mode: str = "standalone",
                 master: str | None = None, **options: Any) -> Store:
        return cls(connect(url, mode, master, **options), retention_days,
                   alert_retention_days=alert_retention_days)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, **options: Any) -> Store:
        """The state store the settings name (``url``: the embedded Redis when REDIS_URL is
        unset), in their NEWSMON_REDIS_MODE."""
        url = url or settings.redis_url
        if not url:
            raise ValueError("no state store URL")
        return cls.from_url(url, settings.retention_days, settings.alert_retention_days,
                            settings.redis_mode, settings.redis_master, **options)

    def close(self) -> None:
        close(self.r)

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # -- scheduling ------------------------------------------------------------------------
    def sync_feeds(self, names: list[str], now: float) -> None:
        """New feeds become due now; feeds no longer configured stop being handed out and
        their state is deleted."""
        pipe = self.r.pipeline()
        if names:
            pipe.zadd(self.keys.due, {name: now for name in names}, nx=True)
        pipe.zrange(self.keys.due, 0, -1)
        scheduled = pipe.execute()[-1]
        removed = set(scheduled) - set(names)
        if removed:
            self.r.zrem(self.keys.due, *removed)
            self.r.hdel(self.keys.lease, *removed)
            for name in removed:
                self.r.delete(self.keys.feed(name), self.keys.feed_ids(name))

    def claim_due(self, now: float, lease: float, limit: int = 10_000,
                  token: str = "") -> list[tuple[str, float]]:
        """Hand out the feeds due at ``now``, each once: their due time moves ``lease`` ahead
        and ``token`` is noted as the hand-out's (see begin_fetch)."""
        flat = self._claim_due(keys=[self.keys.due, self.keys.lease],
                               args=[now, lease, limit, token])
        return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]

    def confirm_due(self, names: list[str], token: str, until: float, lease_until: float) -> int:
        """The hand-out ``token`` of these feeds was published: their leases, set to ``until``
        by claim_due, move to ``lease_until`` (those still this hand-out's). Returns how many."""
        if not names:
            return 0
        return int(self._confirm_due(keys=[self.keys.due, self.keys.lease],
                                     args=[token, until, lease_until, *names]))

    def begin_fetch(self, name: str, token: str, now: float) -> bool:
        """Whether a fetch handed out with ``token`` may run: it is the feed's latest hand-out,
        its outcome is not recorded yet, and its lease has not run out (a backlog never
        fetches a feed twice for one due time)."""
        return bool(self._begin_fetch(keys=[self.keys.due, self.keys.lease],
                                      args=[name, token, now]))

    def set_due(self, name: str, when: float) -> None:
        # XX: a feed removed from the configuration while it was being fetched stays removed.
        self.r.zadd(self.keys.due, {name: when}, xx=True)

    def set_due_many(self, names: list[str], when: float, chunk: int = 10_000) -> None:
        """``set_due`` for many feeds at once (in pipelined chunks)."""
        for start in range(0, len(names), chunk):
            self.r.zadd(self.keys.due, dict.fromkeys(names[start:start + chunk], when), xx=True)

    def due_times(self) -> dict[str, float]:
        return dict(self.r.zrange(self.keys.due, 0, -1, withscores=True))

    def feed_state(self, name: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.feed(name))

    def feed_states(self, names: list[str]) -> list[dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.feed(name))
        return pipe.execute()

    def record_fetch(self, name: str, fields: dict[str, Any], next_due: float) -> None:
        """Save a poll's outcome, unless the feed left the configuration meanwhile."""
        if self.r.zscore(self.keys.due, name) is None:
            return
        clean = {k: ("" if v is None else v) for k, v in fields.items()}
        self.r.hset(self.keys.feed(name), mapping={**clean, "next_due": next_due})
        pipe = self.r.pipeline(transaction=True)  # one slot: the hand-out is over
        pipe.zadd(self.keys.due, {name: next_due}, xx=True)
        pipe.hdel(self.keys.lease, name)
        pipe.execute()

    def feed_ids(self, name: str) -> set[str]:
        """The article ids of the feed's latest document (see remember_feed_ids)."""
        return self.r.smembers(self.keys.feed_ids(name))

    def remember_feed_ids(self, name: str, ids: Sequence[str]) -> None:
        """Remember the ids a feed lists now, for as long as it is configured: an item that
        stays in its feed is never processed again, however long it stays."""
        pipe = self.r.pipeline(transaction=True)  # one key: one slot
        pipe.delete(self.keys.feed_ids(name))
        if ids:
            pipe.sadd(self.keys.feed_ids(name), *ids)
        pipe.execute()

    def add_event(self, event: dict[str, Any], now: float) -> bool:
        """Queue a feed health event for the health webhook (False: it was queued before).
        It is delivered like an alert whose watchlist is "" (see Service.claim_deliveries)."""
        k = self.keys
        return bool(self._add_event(keys=[k.alert(event["id"]), k.outbox, k.gone],
                                    args=[event["id"], json.dumps(event), now]))

    # -- figures for metrics ---------------------------------------------------------------------
    def feed_health_summary(self) -> list[dict[str, Any]]:
        """Health, staleness and last outcome of every scheduled (configured) feed."""
        names = self.r.zrange(self.keys.due, 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.feed(name), ["health", "stale", "outcome"])
        return [{"health": h or "healthy", "stale": s == "1", "outcome": o or ""}
                for h, s, o in pipe.execute()]

    def outbox_counts(self, now: float) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.zcount(self.keys.outbox, "-inf", now)
        pipe.zcount(self.keys.outbox, f"({now}", "+inf")
        pipe.zcard(self.keys.dead)
        due, waiting, dead = pipe.execute()
        return {"due": due, "waiting": waiting, "dead": dead}

    # -- poison tasks --------------------------------------------------------------------------
    def task_started(self, task_id: str) -> int:
        """Count a start of this task; the count is how many starts never finished."""
        key = f"{self.p}{{sched}}:runs:{task_id}"
        pipe = self.r.pipeline(transaction=True)  # one key
        pipe.incr(key)
        pipe.expire(key, 86400)
        return int(pipe.execute()[0])

    def task_finished(self, task_id: str) -> None:
        self.r.delete(f"{self.p}{{sched}}:runs:{task_id}")

    def park_task(self, task_id: str, record: dict[str, Any]) -> None:
        """Set a task aside that will not be run again (status lists it, metrics count it)."""
        self.r.hset(self.p + "{sched}:parked", task_id, json.dumps(record))
        self.task_finished(task_id)

    def parked_tasks(self, now: float) -> dict[str, dict[str, Any]]:
        """Parked tasks of the last PARKED_KEPT seconds; older ones are dropped."""
        key = self.p + "{sched}:parked"
        records = {tid: json.loads(raw) for tid, raw in self.r.hgetall(key).items()}
        old = [tid for tid, rec in records.items() if rec.get("at", 0) < now - PARKED_KEPT]
        if old:
            self.r.hdel(key, *old)
        return {tid: rec for tid, rec in records.items() if tid not in old}

    def mark_beat(self, now: float) -> None:
        self.r.set(self.keys.beat, now)

    def last_beat(self) -> float | None:
        value = self.r.get(self.keys.beat)
        return float(value) if value else None

    def open_cycle(self, cycle: str, feeds: int) -> None:
        """A poll cycle of ``feeds`` feeds handed out together."""
        key = f"{self.p}{{sched}}:cycle:{cycle}"
        self.r.pipeline().hset(key, "feeds", feeds).expire(key, CYCLE_TTL).execute()

    def cycle_step(self, cycle: str, failed_feed: str = "", **increments: int) -> \
            dict[str, str] | None:
        """Count one step of a cycle; returns the cycle's fields to the one step that completes
        it (None to every other step, and for an unknown or expired cycle)."""
        pairs = [x for field, n in increments.items() for x in (field, n)]
        out = self._cycle_step(keys=[f"{self.p}{{sched}}:cycle:{cycle}"],
                               args=[CYCLE_TTL, failed_feed, *pairs])
        return dict(zip(out[::2], out[1::2], strict=True)) if out else None

    # -- articles and stories ----------------------------------------------------------------
    def done_articles(self, article_ids: list[str]) -> set[str]:
        """Which of these articles were processed to the end already."""
        pipe = self.r.pipeline(transaction=False)
        for aid in article_ids:
            pipe.hget(self.keys.art(aid), "done")
        return {aid for aid, done in zip(article_ids, pipe.execute(), strict=True) if done}

    def claim_story(self, article_id: str, keys: StoryKeys, now: float) -> StoryClaim:
        """The story this article belongs to (dedupe.claim_story on the Redis index)."""
        claim = claim_story(self.index, article_id, keys, article_id, now)
        return StoryClaim(claim.story_id, claim.is_new, claim.fresh)

    def first_text(self, article_id: str, text: str) -> str:
        """The dump text of the article's first run (``text`` if this is the first)."""
        return str(self._first_text(keys=[self.keys.art(article_id)], args=[text]))

    def story(self, story_id: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.story(story_id))

    def story_copies(self, story_id: str) -> int:
        return int(self.r.hget(self.keys.story(story_id), "copies") or 1)

    def claim_seq(self, article_id: str, day: str, now: float, *,
                  force_new: bool = False) -> int:
        return int(self._claim_seq(keys=[self.keys.art(article_id), self.keys.seq(day)],
                                   args=["1" if force_new else "0", _ms(now + self.ttl)]))

    def add_article(self, article_id: str, article_json: dict[str, Any], now: float) -> bool:
        """Append a new story's article to the stream, once per article."""
        return bool(self._record_article(
            keys=[self.keys.art(article_id), self.keys.articles],
            args=[json.dumps(article_json), _ms(now), _ms(now - self.ttl),
                  article_json.get("file") or ""]))

    def article_file(self, article_id: str) -> str | None:
        """The dump file recorded for this article (with its stream entry), if any."""
        return self.r.hget(self.keys.art(article_id), "file") or None

    def mark_done(self, article_id: str) -> None:
        self._mark_done(keys=[self.keys.art(article_id)])

    # -- alerts --------------------------------------------------------------------------------
    def claim_alert(self, story_id: str, watchlist: str, alert_id: str, alert_json: dict[str, Any],
                    created: float, article_id: str | None = None, *,
                    shaped: bool = False) -> tuple[str, bool]:
        """Record an alert unless this watchlist already fired for this story (True: the
        alert was created now). A retry of the article that fired it creates it if missing.
        ``shaped``: it waits in state "shaping" for ``ShapingStore.shape_alert`` instead of
        the outbox."""
        k = self.keys
        aid, ours = self._claim_fired(
            keys=[k.art(article_id or alert_json["article"]["id"]), k.fired(story_id)],
            args=[watchlist, alert_id, _ms(created + self.ttl)])
        if not int(ours):
            return aid, False
        record = {**alert_json, "id": aid}
        streamed = {**record, "article": {key: value for key, value in record["article"].items()
                                          if key != "dump"}}
        made = self._create_alert(
            keys=[k.alert(aid), k.by_time, k.outbox, k.alerts, k.out_stats, k.gone],
            args=[aid, json.dumps(record), created, watchlist, json.dumps(streamed),
                  _ms(created), _ms(created - self.alert_ttl),
                  "shaping" if shaped else "pending"])
        return aid, bool(made)

    def alerts(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        ids = self.r.zrangebyscore(self.keys.by_time, since or "-inf", "+inf",
                                   start=0, num=limit) if since else \
            self.r.zrange(self.keys.by_time, -limit, -1)
        pipe = self.r.pipeline(transaction=False)
        for aid in ids:
            pipe.hgetall(self.keys.alert(aid))
        return [self._alert_view(h) for h in pipe.execute() if h]

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        record = self.r.hgetall(self.keys.alert(alert_id))
        return self._alert_view(record) if record else None

    def alert_gone(self, alert_id: str) -> float | None:
        """When this alert was removed by the alert retention (None: not known as removed)."""
        return self.r.zscore(self.keys.gone, alert_id)

    def forget_alerts(self, now: float) -> int:
        """Remove the finished alerts whose retention ran out, and stream entries older than their
        retention; returns how many alerts went."""
        k = self.keys
        removed = 0
        # the streams are trimmed when they grow; also here, for a service gone quiet
        self.r.xtrim(k.alerts, minid=_ms(now - self.alert_ttl))
        self.r.xtrim(k.articles, minid=_ms(now - self.ttl))
        while True:
            ids = self.r.zrangebyscore(k.expiry, "-inf", now, start=0, num=FORGET_BATCH)
            if not ids:
                return removed
            removed += int(self._forget_alerts(
                keys=[k.expiry, k.by_time, k.gone, k.dead, k.outbox,
                      *(k.alert(a) for a in ids)],
                args=[now, now - GONE_KEPT * self.alert_ttl, *ids]))
            if len(ids) < FORGET_BATCH:
                return removed

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
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.idx_stats)
        pipe.hgetall(self.keys.out_stats)
        raw = {k: v for part in pipe.execute() for k, v in part.items()}
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
            ("record", _RECORD_DELIVERY), ("replay", _REPLAY), ("confirm", _CONFIRM_CLAIMS))}

    def claim_deliveries(self, now: float, lease: float, token: str, limit: int = 1000,
                         members: list[str] | None = None) -> list[DeliveryClaim]:
        """Hand out due outbox members (or only those of ``members`` that are due), each once:
        their score moves ``lease`` ahead and ``token`` becomes their owner."""
        k = self.keys
        if not members:
            members = self.r.zrangebyscore(k.outbox, "-inf", now, start=0, num=limit)
        if not members:
            return []
        flat = self._delivery_scripts["claim"](
            keys=[k.outbox, *(k.alert(m.partition("|")[0]) for m in members)],
            args=[now, lease, token, *members])
        return [DeliveryClaim(flat[i], token, flat[i + 1], now + lease)
                for i in range(0, len(flat), 2)]

    def confirm_claims(self, claims: Sequence[DeliveryClaim], extra: float) -> int:
        """These claims' deliver messages were published: each member whose score is still
        the one its claim set (``until``: not begun, not claimed again) moves ``extra`` seconds
        further. Returns how many moved."""
        if not claims:
            return 0
        k = self.keys
        return int(self._delivery_scripts["confirm"](
            keys=[k.outbox, *(k.alert(c.member.partition("|")[0]) for c in claims)],
            args=[extra, *(x for c in claims for x in (c.member, c.token, c.until))]))

    def expand_alert(self, claim: DeliveryClaim, story: str, dests: list[str], now: float,
                     lease: float) -> list[DeliveryClaim]:
        """Turn a claimed alert into claimed per-destination members (none: state recorded)."""
        k = self.keys
        members = self._delivery_scripts["expand"](
            keys=[k.outbox, k.alert(claim.member), k.expiry],
            args=[claim.member, claim.token, now, lease, story, self.alert_ttl, *dests])
        return [DeliveryClaim(m, claim.token, claim.watchlist, now + lease) for m in members]

    def alert_stories(self, alert_ids: list[str]) -> list[str]:
        """The story id of each alert ("" for an alert that does not exist)."""
        pipe = self.r.pipeline(transaction=False)
        for aid in alert_ids:
            pipe.hget(self.keys.alert(aid), "data")
        return [json.loads(d).get("story", "") if d else "" for d in pipe.execute()]

    def start_delivery(self, claim: DeliveryClaim, now: float, *, run_lease: float, slots: int,
                       busy_wait: float, max_lost: int, handout_lease: float) -> DeliveryStart:
        """Begin an attempt on a claimed member: its lease becomes ``run_lease`` and it takes
        one of its destination's ``slots``; see ``_START_DELIVERY`` for the other verdicts."""
        k = self.keys
        alert_id, _, dest = claim.member.partition("|")
        out = self._delivery_scripts["start"](
            keys=[k.alert(alert_id), k.outbox, k.hold(dest), k.inflight(dest)],
            args=[claim.member, claim.token, now, run_lease, slots, busy_wait, max_lost,
                  handout_lease])
        verdict = out[0]
        if verdict == "go":
            # The story's copies are read apart: they live in the identity slot, not this one.
            return DeliveryStart("go", attempts=int(out[1]), alert=json.loads(out[2]),
                                 watchlist=out[3], copies=self.story_copies(out[4]))
        if verdict == "busy":
            return DeliveryStart(verdict, wait=float(out[1]), until=float(out[2]))
        if verdict == "held":
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
        k = self.keys
        alert_id, _, dest = claim.member.partition("|")
        return str(self._delivery_scripts["record"](
            keys=[k.alert(alert_id), k.outbox, k.inflight(dest), k.hold(dest), k.dead, k.expiry],
            args=[claim.member, claim.token, now,
                  json.dumps(entry, ensure_ascii=False) if entry else "", state, when or 0,
                  reason, hold_until or 0, self.alert_ttl]))

    def replay(self, alert_id: str, now: float) -> int:
        """Queue an alert's dead destinations again; -1 if there is no such alert."""
        k = self.keys
        return int(self._delivery_scripts["replay"](
            keys=[k.alert(alert_id), k.outbox, k.dead, k.expiry],
            args=[alert_id, now, self.alert_ttl]))

    def dead_alerts(self) -> list[str]:
        """Ids of alerts with a dead-lettered destination, oldest first."""
        members = self.r.zrange(self.keys.dead, 0, -1)
        return list(dict.fromkeys(m.split("|", 1)[0] for m in members))

    def outbox_next(self) -> float | None:
        """When the earliest outbox member is due (None: the outbox is empty)."""
        first = self.r.zrange(self.keys.outbox, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def delivery_states(self, alert_ids: list[str]) -> dict[str, str | None]:
        """The delivery state of each alert (None: no such alert)."""
        pipe = self.r.pipeline(transaction=False)
        for aid in alert_ids:
            pipe.hget(self.keys.alert(aid), "state")
        return dict(zip(alert_ids, pipe.execute(), strict=True))

    def disable_webhook(self, digest: str, reason: dict[str, Any]) -> None:
        """Disable a webhook configuration (by its digest) until the configuration changes."""
        self.r.hset(self.keys.disabled, digest, json.dumps(reason))

    def webhook_disabled(self, digest: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.keys.disabled, digest)
        return json.loads(raw) if raw else None

    def keep_disabled(self, digests: set[str]) -> None:
        """Forget disabled webhook digests that are no longer configured (bounded by config)."""
        stale = set(self.r.hkeys(self.keys.disabled)) - digests
        if stale:
            self.r.hdel(self.keys.disabled, *stale)


# -- delivery scripts ---------------------------------------------------------------------------
# Shared by the scripts below: split a member, and fold the destinations' states into the
# alert's own ``state`` and ``next_attempt``; a finished alert gets its removal time in the
# expiry zset (``keep`` seconds after now), an unfinished one leaves it.
_DELIVERY_LIB = """
local function split(m)
  local sep = string.find(m, '|', 1, true)
  if not sep then return m, '' end
  return string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
end
local function finish(a, id, expiry, state, now, keep)
  if state == 'retrying' or state == 'pending' then redis.call('ZREM', expiry, id)
  else redis.call('ZADD', expiry, now + keep, id) end
end
local function aggregate(a, id, expiry, now, keep)
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
  finish(a, id, expiry, state, now, keep)
  return state
end
"""

# Hand out the named outbox members that are still due, each to one caller.
# KEYS: outbox, the alert of each member. ARGV: now, lease, token, members...
_CLAIM_DELIVERIES = _DELIVERY_LIB + """
local now, lease, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV do
  local m, a = ARGV[i], KEYS[i - 2]
  local score = redis.call('ZSCORE', KEYS[1], m)
  if score and tonumber(score) <= now then
    local id, dest = split(m)
    if redis.call('EXISTS', a) == 0 then
      redis.call('ZREM', KEYS[1], m)
    else
      redis.call('ZADD', KEYS[1], now + lease, m)
      redis.call('HSET', a, 'lease:' .. dest, token)
      table.insert(out, m)
      table.insert(out, redis.call('HGET', a, 'watchlist') or '')
    end
  end
end
return out
"""

# Replace a claimed bare alert id by one member per destination, claimed by the same token.
# No destination: the alert is only recorded. KEYS: outbox, alert, expiry.
# ARGV: id, token, now, lease, story, keep, dests...
_EXPAND_ALERT = _DELIVERY_LIB + """
local id, token, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local outbox, a, keep = KEYS[1], KEYS[2], tonumber(ARGV[6])
if redis.call('HGET', a, 'lease:') ~= token then return {} end
if redis.call('ZREM', outbox, id) == 0 then return {} end
redis.call('HDEL', a, 'lease:')
if #ARGV < 7 then
  redis.call('HSET', a, 'state', 'recorded', 'dests', '')
  redis.call('HDEL', a, 'next_attempt')
  finish(a, id, KEYS[3], 'recorded', now, keep)
  return {}
end
local dests, out = {}, {}
for i = 7, #ARGV do
  local dest, m = ARGV[i], id .. '|' .. ARGV[i]
  table.insert(dests, dest)
  redis.call('HSET', a, 'st:' .. dest, 'pending', 'n:' .. dest, 0, 'starts:' .. dest, 0,
             'lease:' .. dest, token)
  redis.call('HDEL', a, 'next:' .. dest, 'why:' .. dest)
  redis.call('ZADD', outbox, now + lease, m)
  table.insert(out, m)
end
redis.call('HSET', a, 'dests', table.concat(dests, ' '), 'story', ARGV[5])
aggregate(a, id, KEYS[3], now, keep)
return out
"""

# Begin one attempt on a claimed member, unless the claim went stale, the destination is
# held (Retry-After: the member goes back to the outbox, due when the hold ends), or it already
# has ``slots`` attempts in flight (busy: the claim stays the caller's, who asks again after
# the wait), or too many attempts began and never reported (lost: the caller dead-letters it).
# KEYS: alert, outbox, hold of its destination, in-flight of its destination
# ARGV: member, token, now, run lease, slots, least busy wait, max lost, hand-out lease
# Returns {verdict, ...}: {'go', attempts recorded, data, watchlist, story},
#   {'busy', seconds to wait, the member's score}, {'held', seconds to wait}, {'stale'},
#   {'lost', attempts lost}.
_START_DELIVERY = _DELIVERY_LIB + """
local m, token, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local id, dest = split(m)
local a, outbox, inflight = KEYS[1], KEYS[2], KEYS[4]
if redis.call('HGET', a, 'lease:' .. dest) ~= token then return {'stale'} end
if not redis.call('ZSCORE', outbox, m) then return {'stale'} end
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
if hold > now then
  redis.call('ZADD', outbox, hold, m)
  redis.call('HDEL', a, 'lease:' .. dest)
  return {'held', tostring(hold - now)}
end
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now - tonumber(ARGV[4]))
if redis.call('ZSCORE', inflight, m) == false
   and redis.call('ZCARD', inflight) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  local busy = math.min(math.max(now - tonumber(oldest[2]), tonumber(ARGV[6])), 5)
  local untl = now + busy + tonumber(ARGV[8])
  redis.call('ZADD', outbox, untl, m)
  return {'busy', tostring(busy), string.format('%.17g', untl)}
end
local recorded = tonumber(redis.call('HGET', a, 'n:' .. dest) or '0')
local starts = redis.call('HINCRBY', a, 'starts:' .. dest, 1)
if starts - recorded > tonumber(ARGV[7]) then return {'lost', tostring(starts - 1 - recorded)} end
redis.call('ZADD', inflight, now, m)
redis.call('EXPIRE', inflight, 86400)
redis.call('ZADD', outbox, now + tonumber(ARGV[4]), m)
return {'go', tostring(recorded), redis.call('HGET', a, 'data'), redis.call('HGET', a, 'watchlist'),
        redis.call('HGET', a, 'story') or ''}
"""

# Confirm published claims: a member whose score is still the one its claim set (and whose
# lease is still the claim's) moves ``extra`` further. KEYS: outbox, the alert of each member.
# ARGV: extra, then member, token, until per claim
_CONFIRM_CLAIMS = _DELIVERY_LIB + """
local extra, n, a = tonumber(ARGV[1]), 0, 1
for i = 2, #ARGV, 3 do
  local m, untl = ARGV[i], tonumber(ARGV[i + 2])
  local id, dest = split(m)
  a = a + 1
  if redis.call('HGET', KEYS[a], 'lease:' .. dest) == ARGV[i + 1]
     and tonumber(redis.call('ZSCORE', KEYS[1], m) or '0') == untl then
    redis.call('ZADD', KEYS[1], 'XX', untl + extra, m)
    n = n + 1
  end
end
return n
"""

# Record one attempt's outcome: append it to the alert's log, then (if the claim is still
# ours) move the member on: delivered and dead leave the outbox, retrying is due at ``when``.
# KEYS: alert, outbox, in-flight and hold of its destination, dead, expiry
# ARGV: member, token, now, log entry (JSON), state, when, reason, hold until (0: none), keep
_RECORD_DELIVERY = _DELIVERY_LIB + """
local m, token, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local id, dest = split(m)
local a, outbox = KEYS[1], KEYS[2]
redis.call('ZREM', KEYS[3], m)
if tonumber(ARGV[8]) > now then
  redis.call('SET', KEYS[4], ARGV[8], 'EX', math.ceil(ARGV[8] - now) + 1)
end
if ARGV[4] ~= '' then
  local log = redis.call('HGET', a, 'log')
  if not log or log == '' or log == '[]' then log = '[' .. ARGV[4] .. ']'
  else log = string.sub(log, 1, -2) .. ',' .. ARGV[4] .. ']' end
  redis.call('HSET', a, 'log', log)
  redis.call('HINCRBY', a, 'attempts', 1)
  redis.call('HINCRBY', a, 'n:' .. dest, 1)
end
if redis.call('HGET', a, 'lease:' .. dest) ~= token then return 'stale' end
local state = ARGV[5]
redis.call('HSET', a, 'st:' .. dest, state)
if state == 'retrying' then
  redis.call('ZADD', outbox, ARGV[6], m)
  redis.call('HSET', a, 'next:' .. dest, ARGV[6])
else
  redis.call('ZREM', outbox, m)
  redis.call('HDEL', a, 'next:' .. dest, 'lease:' .. dest)
  if state == 'dead' then
    redis.call('ZADD', KEYS[5], now, m)
    redis.call('HSET', a, 'why:' .. dest, ARGV[7])
  end
end
return aggregate(a, id, KEYS[6], now, tonumber(ARGV[9]))
"""

# Send an alert's dead destinations again, from the first attempt of the schedule; an alert
# that was only recorded goes back to the outbox to find its destinations anew.
# KEYS: alert, outbox, dead, expiry. ARGV: alert id, now, keep.
# Returns the number of destinations queued (-1: no such alert).
_REPLAY = _DELIVERY_LIB + """
local id, now = ARGV[1], tonumber(ARGV[2])
local a, outbox, dead = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', a) == 0 then return -1 end
if redis.call('HGET', a, 'state') == 'recorded' then
  redis.call('ZADD', outbox, now, id)
  redis.call('HSET', a, 'state', 'pending')
  redis.call('ZREM', KEYS[4], id)
  return 1
end
local queued = 0
for dest in string.gmatch(redis.call('HGET', a, 'dests') or '', '%S+') do
  if redis.call('HGET', a, 'st:' .. dest) == 'dead' then
    local m = id .. '|' .. dest
    redis.call('ZREM', dead, m)
    redis.call('ZADD', outbox, now, m)
    redis.call('HSET', a, 'st:' .. dest, 'pending', 'n:' .. dest, 0, 'starts:' .. dest, 0)
    redis.call('HDEL', a, 'why:' .. dest, 'lease:' .. dest)
    queued = queued + 1
  end
end
aggregate(a, id, KEYS[4], now, tonumber(ARGV[3]))
return queued
"""


@dataclass(frozen=True)
class DeliveryClaim:
    """An outbox member handed to one caller; ``token`` proves the claim is still its own."""

    member: str
    token: str
    watchlist: str
    until: float = 0.0              # the member's score the claim set (see confirm_claims)


@dataclass(frozen=True)
class DeliveryStart:
    """What beginning an attempt found: ``verdict`` go | busy | held | stale | lost."""

    verdict: str
    wait: float = 0.0               # busy, held: seconds until it may be tried again
    until: float = 0.0              # busy: the member's score it set (see confirm_claims)
    attempts: int = 0               # go: attempts recorded before this one; lost: attempts lost
    alert: dict[str, Any] | None = None
    watchlist: str = ""
    copies: int = 1


# == alert shaping (issue 15) ===================================================================
# Digest windows, throttle slots, held-back alerts and update markers per watchlist (keys
# tagged {w:<watchlist>}), and a story's copies per outlet with its breaking candidates (keys
# tagged {c:<story>}), so every script below touches one Redis Cluster slot. Expiry is absolute
# (PEXPIREAT at the caller's now + retention), trims are by the caller's time. The events they
# make are alert records ({out}:alert:<id>, the outbox, by-time: the alert family's keys).
SHAPE_LIFETIMES: list[Lifetime] = [
    Lifetime("{w:<watchlist>}:window", "hash", "ttl",
             "open digest window (start, end, held_since): retention after the last beat tick"),
    Lifetime("{w:<watchlist>}:items", "hash", "ttl",
             "alert id -> alert of the open window: emptied when sealed; retention after the "
             "last add"),
    Lifetime("{w:<watchlist>}:sealed", "hash", "ttl",
             "closed window -> its alerts: a field lives until its digest is queued; retention"),
    Lifetime("{w:<watchlist>}:held", "hash", "ttl",
             "alerts a throttle without digest holds: emptied when flushed; retention after "
             "each tick"),
    Lifetime("{w:<watchlist>}:sent", "zset", "ttl",
             "alerts let through by the throttle: trimmed to its period; retention after the last"),
    Lifetime("{w:<watchlist>}:recent", "zset", "ttl",
             "alerts already routed -> when: trimmed to the retention, and expires after it"),
    Lifetime("{w:<watchlist>}:upd", "zset", "ttl",
             "story -> last alert.updated: trimmed to the 10-minute gap; retention after the last"),
    Lifetime("{w:<watchlist>}:upd:held", "hash", "ttl",
             "story -> updates held by the gap: until sent; retention after the last update"),
    Lifetime("{w:<watchlist>}:upd:due", "zset", "ttl",
             "story -> when its held updates may leave: until sent; retention after the last "
             "update"),
    Lifetime("{w:<watchlist>}:upd:seen", "zset", "ttl",
             "update ids handled -> when: trimmed to the retention, and expires after it"),
    Lifetime("{c:<story>}:copies", "hash", "ttl",
             "feed -> first copy from it: retention after the story's last copy"),
    Lifetime("{c:<story>}:breaking", "hash", "ttl",
             "watchlist -> alert it fires at the bar: retention after the story's last copy"),
    Lifetime("{r:<article>}:rev", "hash", "ttl",
             "text digests of a tracked article, its corrections' dump numbers: retention "
             "after the last correction"),
]
LIFETIMES += SHAPE_LIFETIMES

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

# An event made by shaping (digest.created, alert.updated) into the outbox, once per id (never
# again after it aged out). KEYS: alert, outbox, by-time, gone.
# ARGV: id, record JSON, created, watchlist
_ADD_SHAPED = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'state', 'pending', 'created', ARGV[3],
           'watchlist', ARGV[4], 'attempts', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
"""

# Where a routed alert goes: "send" queues it in the outbox, anything else marks it as
# leaving in a digest, which finishes it (the alert retention runs from now, as for a delivered
# one). Only an alert still being shaped changes. KEYS: alert, outbox, expiry
# ARGV: id, verdict, now, alert retention (s)
_SET_ROUTE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'shaping' then return 0 end
if ARGV[2] == 'send' then
  redis.call('HSET', KEYS[1], 'state', 'pending')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'state', 'digest')
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
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
        self.keys, self.alert_ttl = store.keys, store.alert_ttl
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
        k = self.keys
        self._scripts["route"](keys=[k.alert(alert_id), k.outbox, k.expiry],
                               args=[alert_id, verdict, repr(now), repr(self.alert_ttl)])

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
            pipe.hset(self.keys.alert(aid), "digest", digest_id)
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
        aid, k = record["id"], self.keys
        return bool(self._scripts["add"](
            keys=[k.alert(aid), k.outbox, k.by_time, k.gone],
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
        aid = self.r.hget(self.keys.fired(story), watchlist)
        created = self.r.hget(self.keys.alert(aid), "created") if aid else None
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

    def revision_seq(self, article_id: str, rev: str, day: str, now: float,
                     taken: int | None = None) -> int:
        """The dump sequence number of a correction, the same on every retry (``taken``: that
        number is another file's, take a new one). A number taken by a worker that died before
        recording it is skipped, never given twice."""
        key, field = f"{self.p}{{r:{article_id}}}:rev", f"seq:{rev}"
        known = self.r.hget(key, field)
        if known is not None and taken is None:
            return int(known)
        pipe = self.r.pipeline()                          # as _CLAIM_SEQ: the first file is 000
        pipe.incr(self.keys.seq(day))
        pipe.pexpireat(self.keys.seq(day), self._until(now))
        seq = pipe.execute()[0] - 1
        if taken is not None:
            self.r.hset(key, field, seq)
            return seq
        self.r.hsetnx(key, field, seq)
        return int(self.r.hget(key, field))


# -- scale-out: politeness across workers, configuration versions --------------------------------
# Each script touches one key family of one hash tag (one host, or the configuration), so it
# runs unchanged on Redis Cluster.

# Grant a connection lease to one host unless it has ``total`` live leases already, or ``kind``
# has its own budget and ``budget`` of them. Times are the server's, so workers' clocks need not
# agree (the one family not on the caller's clock: a lease is a request's few seconds, and no
# simulated clock drives requests). KEYS: {h:<host>}:leases. ARGV: seconds, member
# ("kind:token"), total, kind budget (0: none), kind. Returns 1 when granted.
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
        return f"{self.p}{{h:{host}}}:leases"

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
