"""The Redis store against a real Redis: claims are atomic and idempotent."""

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from worker.dedupe import story_keys
from worker.models import Article
from worker.store import Store

pytestmark = pytest.mark.integration
T0 = time.time()  # the store's expiry is absolute: times are near the wall clock

BODY = ("Japan's imports of liquefied natural gas rose in January as utilities stocked up "
        "for a cold snap, the finance ministry said on Thursday, with shipments from Australia "
        "and the United States making up most of the increase over the previous month.")


def article(aid: str, url: str, title: str = "Japan LNG imports rise", body: str = BODY) -> Article:
    return Article(id=aid, canonical_url=url, url=url, guid=None, title=title, author="A",
                   source="S", published=datetime(2025, 2, 6, tzinfo=UTC), paragraphs=(body,),
                   feed="https://feed.example/rss")


@pytest.fixture
def store(redis_url):
    s = Store.from_url(redis_url)
    yield s
    s.r.close()


def run_at_once(n, fn):
    barrier = threading.Barrier(n)
    results = [None] * n

    def go(i):
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_beats_never_hand_out_one_feed_twice(store):
    store.sync_feeds([f"feed{i}" for i in range(50)], now=100)
    handed = run_at_once(4, lambda i: store.claim_due(now=200, lease=900))
    names = [name for batch in handed for name, _ in batch]
    assert sorted(names) == sorted(f"feed{i}" for i in range(50))
    assert store.claim_due(now=200, lease=900) == []
    assert len(store.claim_due(now=1101, lease=900)) == 50  # the lease ran out: handed out again


def test_removed_feeds_stop_and_new_feeds_start(store):
    store.sync_feeds(["a", "b"], now=100)
    store.set_due("a", 500)
    store.sync_feeds(["a", "c"], now=200)
    assert store.due_times() == {"a": 500, "c": 200}
    store.record_fetch("b", {"outcome": "ok"}, next_due=300)  # b finished after its removal
    assert "b" not in store.due_times()


def test_the_same_story_at_two_workers_at_once_is_one_story(store):
    copies = [article(f"{i:016x}", f"https://site{i}.example/story?utm_source=x") for i in range(8)]
    claims = run_at_once(8, lambda i: store.claim_story(copies[i].id, story_keys(copies[i]), T0))
    assert sum(c.is_new for c in claims) == 1
    assert len({c.story_id for c in claims}) == 1
    assert store.stats() == {"articles": 8, "stories": 1, "duplicates": 7, "alerts": 0}
    assert store.story(claims[0].story_id)["copies"] == "8"


def test_a_reprint_with_an_added_sentence_is_the_same_story(store):
    first = article("a" * 16, "https://one.example/a")
    reprint = article("b" * 16, "https://two.example/b", title="JAPAN LNG IMPORTS RISE",
                      body=BODY + " Prices in Asia eased later in the week.")
    other = article("c" * 16, "https://three.example/c", title="Japan cuts LNG imports",
                    body="Japan cut its imports of liquefied natural gas in March as nuclear "
                         "reactors restarted and mild weather curbed demand for heating, "
                         "according to preliminary customs data released on Monday.")
    assert store.claim_story(first.id, story_keys(first), T0 + 1).is_new
    assert store.claim_story(reprint.id, story_keys(reprint), T0 + 2).story_id == first.id
    assert store.claim_story(other.id, story_keys(other), T0 + 3).is_new


def test_claiming_an_article_again_counts_it_once(store):
    a = article("d" * 16, "https://one.example/d")
    b = article("e" * 16, "https://one.example/d?fbclid=123")
    first = store.claim_story(a.id, story_keys(a), T0 + 1)
    again = store.claim_story(a.id, story_keys(a), T0 + 2)  # a retried task
    assert (again.story_id, again.is_new, first.fresh, again.fresh) == (first.story_id, True, True,
                                                                       False)
    assert store.claim_story(b.id, story_keys(b), T0 + 3).story_id == first.story_id
    assert store.claim_story(b.id, story_keys(b), T0 + 4).story_id == first.story_id
    assert store.stats()["duplicates"] == 1
    assert store.story(first.story_id)["copies"] == "2"


def test_story_keys_expire_after_the_retention_window(redis_url):
    s = Store.from_url(redis_url, retention_days=1)
    a = article("f" * 16, "https://one.example/f")
    s.claim_story(a.id, story_keys(a), time.time())
    keys = [k for k in s.r.scan_iter("newsmon:{idx}:*") if not k.endswith((":ver", ":stats"))]
    ttls = {k: s.r.ttl(k) for k in keys}
    assert ttls and all(0 < t <= 86400 for k, t in ttls.items() if ":b:" not in k)
    # band entries live while their epoch (half a window) is among the three read
    assert all(0 < t <= 1.5 * 86400 for k, t in ttls.items() if ":b:" in k)
    s.r.close()


def test_a_story_is_remembered_for_the_retention_window_after_its_last_copy(redis_url):
    s = Store.from_url(redis_url, retention_days=4.5 / 86400)  # 4 s
    first = article("1" * 16, "https://one.example/1")
    copies = [article(str(n) * 16, f"https://{n}.example/{n}",
                      body=BODY + f" Analysts expect {n} more cargoes this quarter.")
              for n in (2, 3)]
    s.claim_story(first.id, story_keys(first), time.time())
    time.sleep(2.5)
    assert s.claim_story(copies[0].id, story_keys(copies[0]), time.time()).story_id == first.id
    time.sleep(2.5)  # 5 s after the first copy, 2.5 s after the last
    assert s.claim_story(copies[1].id, story_keys(copies[1]), time.time()).story_id == first.id
    s.r.close()


def test_dump_sequence_is_stable_for_an_article(store):
    assert store.claim_seq("a" * 16, "2025-02-06", T0) == 0
    assert store.claim_seq("b" * 16, "2025-02-06", T0) == 1
    assert store.claim_seq("a" * 16, "2025-02-06", T0) == 0
    assert store.claim_seq("a" * 16, "2025-02-06", T0, force_new=True) == 2
    assert store.claim_seq("c" * 16, "2025-02-07", T0) == 0


def test_a_watchlist_fires_once_per_story(store):
    def record(i):
        return {"id": f"alert_{i}", "watchlist": "japan", "article": {"id": f"{i:016x}"}}

    results = run_at_once(6, lambda i: store.claim_alert("story1", "japan", f"alert_{i}",
                                                         record(i), T0))
    assert sum(new for _, new in results) == 1
    assert len({aid for aid, _ in results}) == 1
    assert store.claim_alert("story1", "lng", "alert_x", record(9), T0 + 1)[1]
    assert store.stats()["alerts"] == 2
    assert store.r.xlen(store.keys.alerts) == 2
    assert store.r.zcard(store.keys.outbox) == 2


def test_the_suite_uses_a_redis_it_started(redis_url, tmp_path_factory):
    """The README's test command never touches a Redis it did not start (someone's real data)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    folder = client.config_get("dir")["dir"]
    client.close()
    assert Path(folder).resolve().is_relative_to(tmp_path_factory.getbasetemp().resolve())


def generated_claims(n: int, seed: int = 5):
    """Articles as a claim sees them: originals, reprints near and below the threshold,
    repeated URLs and fingerprints, and a hot band that most stories share, over a clock that
    runs through several retention windows so that the hot band fills with expired ids."""
    import random

    from worker.dedupe import NUM_PERM, ROWS, StoryKeys, band_keys

    rng = random.Random(seed)
    boiler = [rng.getrandbits(32) for _ in range(ROWS)]
    bases: list[tuple[int, ...]] = []
    t = 0
    for i in range(n):
        t += rng.choice((1, 2, 3, 5, 8))
        roll = rng.random()
        if bases and roll < 0.55:
            base = rng.choice(bases[-40:])
            keep = rng.choice((0.95, 0.8, 0.7, 0.6, 0.5, 0.3))
            sig = tuple(v if rng.random() < keep else rng.getrandbits(32) for v in base)
        else:
            sig = tuple(rng.getrandbits(32) for _ in range(NUM_PERM))
            if rng.random() < 0.7:
                sig = (*boiler, *sig[ROWS:])  # the hot band
            bases.append(sig)
        url = f"https://u{rng.randrange(n // 3)}.example/" if rng.random() < 0.3 else None
        fp = f"{rng.randrange(n // 4):032x}" if rng.random() < 0.2 else f"{i:032x}"
        yield f"{i:016x}", StoryKeys(url, None, fp, sig, band_keys(sig)), t


def test_memory_and_redis_indexes_decide_alike(redis_url):
    """One decision: the in-memory index and the Redis index run the same claim algorithm
    over their storage, and give the same story for every one of thousands of claims."""
    from worker.dedupe import MemoryStoryIndex

    retention = 400.0
    s = Store.from_url(redis_url, retention_days=retention / 86400)
    memory = MemoryStoryIndex(retention=retention)
    base = int(time.time())
    results = {"same": 0, "new": 0, "copies": 0}
    for aid, keys, t in generated_claims(3000):
        now = base + t
        expected = memory.claim(keys, aid, now, article_id=aid)
        got = s.claim_story(aid, keys, now)
        assert (got.story_id, got.is_new) == expected, (aid, t)
        results["same"] += 1
        results["new" if got.is_new else "copies"] += 1
        if t % 97 == 0:  # a retried claim returns the first answer in both
            assert memory.claim(keys, "other", now + 1, article_id=aid) == expected
            assert s.claim_story(aid, keys, now + 1)[:2] == expected
    # the corpus exercised both outcomes, over more than 10 retention windows
    assert results["new"] > 500 and results["copies"] > 500 and t > 10 * retention
    s.r.close()


def test_a_claim_reads_a_bounded_number_of_candidates(redis_url):
    """A band that every story shares costs no more than BAND_CAP ids per epoch read."""
    from worker.dedupe import BAND_CAP, EPOCHS_READ

    s = Store.from_url(redis_url)
    base = time.time()
    claims = list(generated_claims(600, seed=7))
    for aid, keys, t in claims:
        s.claim_story(aid, keys, base + t)
    for bucket in s.r.scan_iter(s.keys.band(0, "*").replace(":0:", ":*:")):
        for value in s.r.hvals(bucket):
            assert len(value.split()) <= BAND_CAP
    aid, keys, t = claims[-1]
    from worker.dedupe import epoch_of

    epoch = epoch_of(base + t, s.ttl)
    read = s.index.read("f" * 16, keys, (epoch - 2, epoch - 1, epoch), base + t)
    assert len(read.members) <= BAND_CAP * len(keys.bands) * EPOCHS_READ
    s.r.close()


def test_a_hand_out_runs_one_fetch_within_its_lease(store):
    now = time.time()
    store.sync_feeds(["a", "b"], now)
    handed = store.claim_due(now, lease=900, token="t1")
    assert sorted(n for n, _ in handed) == ["a", "b"]
    assert store.begin_fetch("a", "t1", now + 1)
    store.record_fetch("a", {"outcome": "ok"}, next_due=now + 1900)
    assert not store.begin_fetch("a", "t1", now + 2)       # the same message delivered again
    assert not store.begin_fetch("b", "other", now + 2)    # not this hand-out's token
    # a backlog: b's message waited past its lease, and b was handed out again meanwhile
    again = store.claim_due(now + 901, lease=900, token="t2")
    assert [n for n, _ in again] == ["b"]
    assert not store.begin_fetch("b", "t1", now + 902)
    assert store.begin_fetch("b", "t2", now + 902)
    # a message past its lease that was not handed out again yet does not run either
    store.claim_due(now + 2000, lease=900, token="t3")
    assert not store.begin_fetch("a", "t3", now + 2901)


def test_a_poll_cycle_ends_once_every_feed_is_polled_and_every_batch_processed(store):
    from worker.service import cycle_summary

    store.open_cycle("c1", 2)
    assert store.cycle_step("c1", polled=1, new=3, batches=1) is None
    assert store.cycle_step("c1", "down", polled=1) is None  # a batch is still being processed
    fields = store.cycle_step("c1", batches=-1, alerts=2)
    assert fields is not None
    assert cycle_summary(fields) == \
        "poll cycle: 2 feeds polled, 3 new articles, 2 alerts, 1 failed (down)"
    assert store.cycle_step("c1", batches=0) is None  # said once
    assert store.cycle_step("unknown", polled=1) is None
    assert 0 < store.r.ttl("newsmon:{sched}:cycle:c1") <= 3600
