"""Hand-outs are published, then confirmed: a publisher killed between its claim and its
messages (a tick, a process task, deliver_due) delays what it claimed by HANDOUT_LEASE, not by
a whole lease; a confirmation never moves what was begun, recorded or handed out again."""

from __future__ import annotations

import time

import pytest

from tests.deliveries import hook, make_alert, make_service, posts
from worker.deliver import MAX_LOST, QUEUE_LEASE, RUN_LEASE, deliver_claim
from worker.schedule import CLAIM_LEASE, HANDOUT_LEASE
from worker.service import Service
from worker.settings import Settings
from worker.store import DeliveryClaim, Store

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url):
    s = Store.from_url(redis_url)
    yield s
    s.r.close()


def feed_service(tmp_path, redis_url) -> Service:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "feeds.yaml").write_text("feeds:\n" + "".join(
        f"  - url: https://{name}.example/rss\n    name: {name}\n" for name in "ab"))
    return Service(Settings.from_env({"NEWSMON_CONFIG": str(folder)}), redis_url)


def test_feeds_of_a_tick_that_died_before_publishing_are_handed_out_again_soon(
        tmp_path, redis_url):
    service = feed_service(tmp_path, redis_url)
    now = time.time()
    assert len(service.hand_out(now)) == 2  # ... then the tick dies before queueing fetches
    assert service.hand_out(now + HANDOUT_LEASE - 1) == []
    assert sorted(f.name for f, _ in service.hand_out(now + HANDOUT_LEASE + 1)) == ["a", "b"]


def test_a_confirmed_hand_out_holds_the_whole_lease(tmp_path, redis_url):
    service = feed_service(tmp_path, redis_url)
    now = time.time()
    handed = service.hand_out(now)
    service.confirm_hand_out(handed, now)  # its fetches are queued
    assert service.hand_out(now + HANDOUT_LEASE + 1) == []
    token = handed[0][1]
    assert service.store.begin_fetch("a", token, now + CLAIM_LEASE - 1)  # a queue that far behind
    assert len(service.hand_out(now + CLAIM_LEASE + 1)) == 2


def test_a_confirmation_never_moves_a_fetch_that_finished_or_a_later_hand_out(store):
    now = time.time()
    store.sync_feeds(["a", "b"], now)
    store.claim_due(now, HANDOUT_LEASE, token="t1")
    # a's fetch ran and recorded its next poll before the tick confirmed
    assert store.begin_fetch("a", "t1", now + 1)
    store.record_fetch("a", {"outcome": "ok"}, next_due=now + 60)
    # b's hand-out ran out (a slow publisher) and the other beat handed it out again
    store.claim_due(now + HANDOUT_LEASE + 1, HANDOUT_LEASE, token="t2")
    assert store.confirm_due(["a", "b"], "t1", now + HANDOUT_LEASE, now + CLAIM_LEASE) == 0
    assert store.r.zscore(store.keys.due, "a") == now + 60
    assert store.r.zscore(store.keys.due, "b") == now + HANDOUT_LEASE + 1 + HANDOUT_LEASE


def begin(service, claim, now, slots=4):
    """An attempt begins on ``claim`` (as the deliver task's first step does)."""
    return service.store.start_delivery(claim, now, run_lease=RUN_LEASE, slots=slots,
                                        busy_wait=0.2, max_lost=MAX_LOST,
                                        handout_lease=HANDOUT_LEASE)


def alert_service(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    return make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                        [{"name": "energy", "webhook": "ops"}])


def test_an_alert_claimed_by_a_process_task_that_died_is_sent_within_the_hand_out_lease(
        tmp_path, redis_url, http_server):
    service = alert_service(tmp_path, redis_url, http_server)
    alert_id = make_alert(service.store, "energy")
    now = time.time()
    dead, = service.claim_deliveries(now, [alert_id])  # ... killed before its message went out
    assert service.claim_deliveries(now + HANDOUT_LEASE - 1) == []
    again, = service.claim_deliveries(now + HANDOUT_LEASE + 1)  # the next deliver_due
    assert again.member == dead.member and again.token != dead.token
    assert deliver_claim(again, service.store, service.sender, service.config()).outcome == \
        "delivered"
    [request] = posts(http_server, "/hook")
    assert request["headers"]["webhook-id"] == alert_id


def test_a_confirmed_claim_waits_in_the_queue_for_the_whole_queue_lease(
        tmp_path, redis_url, http_server):
    service = alert_service(tmp_path, redis_url, http_server)
    alert_id = make_alert(service.store, "energy")
    now = time.time()
    claim, = service.claim_deliveries(now, [alert_id])
    assert claim.until == now + HANDOUT_LEASE
    service.confirm_deliveries([claim])
    assert service.claim_deliveries(now + QUEUE_LEASE - 1) == []  # its message is still queued
    again, = service.claim_deliveries(now + QUEUE_LEASE + 1)
    assert deliver_claim(claim, service.store, service.sender, service.config()).outcome == \
        "stale"  # the late message sends nothing: the new claim does
    assert deliver_claim(again, service.store, service.sender, service.config()).outcome == \
        "delivered"
    assert len(posts(http_server, "/hook")) == 1


def test_a_confirmation_never_moves_an_attempt_that_began_or_a_newer_claim(
        tmp_path, redis_url, http_server):
    service = alert_service(tmp_path, redis_url, http_server)
    first, second = make_alert(service.store, "energy", 1), make_alert(service.store, "energy", 2)
    now = time.time()
    a, b = service.claim_deliveries(now, [first, second])
    # a's message was consumed before the publisher confirmed: its attempt began
    assert begin(service, a, now + 1).verdict == "go"
    # b's publisher was slow: b was claimed again by someone else
    b2, = service.claim_deliveries(now + HANDOUT_LEASE + 1, [b.member])
    assert service.store.confirm_claims([a, b], QUEUE_LEASE - HANDOUT_LEASE) == 0
    assert service.store.r.zscore(service.store.keys.outbox, a.member) == now + 1 + RUN_LEASE
    assert service.store.r.zscore(service.store.keys.outbox, b.member) == b2.until
    assert service.store.confirm_claims([b2], QUEUE_LEASE - HANDOUT_LEASE) == 1


def test_a_busy_member_is_confirmed_from_the_score_its_wait_set(tmp_path, redis_url, http_server):
    service = alert_service(tmp_path, redis_url, http_server)
    ids = [make_alert(service.store, "energy", n) for n in range(3)]
    now = time.time()
    claims = service.claim_deliveries(now, ids)
    for claim in claims[:2]:  # two slow attempts take the destination's two slots
        assert begin(service, claim, now, slots=2).verdict == "go"
    busy = begin(service, claims[2], now + 1, slots=2)
    assert busy.verdict == "busy"
    assert busy.until == pytest.approx(now + 1 + busy.wait + HANDOUT_LEASE, abs=1e-3)
    retry = DeliveryClaim(claims[2].member, claims[2].token, claims[2].watchlist, busy.until)
    assert service.store.confirm_claims([retry], QUEUE_LEASE - HANDOUT_LEASE) == 1
    assert service.store.r.zscore(service.store.keys.outbox, retry.member) == \
        busy.until + QUEUE_LEASE - HANDOUT_LEASE
