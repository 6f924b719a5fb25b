"""Celery tasks: a few lines each that move names and JSON between Redis and the pipeline."""

from __future__ import annotations

import logging
import math
import time
import uuid
from functools import cache, partial
from typing import Any

from celery import Task

from worker import metrics
from worker.app import app, broker, settings, state_url
from worker.config import FeedConfig
from worker.models import ParsedFeed
from worker.pipeline import Fresh
from worker.schedule import CLAIM_LEASE
from worker.sentry import tag
from worker.service import Service, decode_batch, encode_batch
from worker.store import INFRA_ERRORS, DeliveryClaim

MAX_DEATHS = 3  # runs of one task that killed their worker before it is parked
HANDOUT_CHUNK = 500  # messages published between two confirmations of a hand-out

log = logging.getLogger("newsmon.tasks")


@cache
def service() -> Service:
    return Service(settings, state_url(settings))


class NewsmonTask(Task):
    """Shared policy: late acknowledgement (set on the app), a log line for every failure,
    transient infrastructure errors retried with backoff, and poison tasks parked: a task whose
    runs keep killing their worker is set aside after MAX_DEATHS deaths, not requeued forever."""

    autoretry_for = INFRA_ERRORS
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 50

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if not task_id:  # called directly, not by a worker
            return super().__call__(*args, **kwargs)
        store = service().store
        starts = store.task_started(task_id)
        if starts > MAX_DEATHS:
            reason = f"killed its worker {starts - 1} times (out of memory or a crash?)"
            store.park_task(task_id, {"task": self.name, "args": repr(args)[:300],
                                      "reason": reason, "at": time.time()})
            metrics.PARKED.labels(self.name).inc()
            log.error("task=%s id=%s parked: %s", self.name, task_id, reason)
            return None
        try:
            return super().__call__(*args, **kwargs)
        finally:
            store.task_finished(task_id)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        log.error("task=%s id=%s failed: %s", self.name, task_id, exc)


@app.task(base=NewsmonTask, name="newsmon.tick")
def tick() -> None:
    now = time.time()
    handed = service().hand_out(now)
    if not handed:
        return
    cycle = uuid.uuid4().hex  # the feeds handed out together: one summary line when all done
    service().store.open_cycle(cycle, len(handed))
    publish_fetches(handed, now, cycle, service().config_digest())


def publish_fetches(handed: list[tuple[FeedConfig, str]], now: float, cycle: str,
                    digest: str) -> None:
    """Queue the fetches of a hand-out at ``now``, confirming each chunk once it is queued: a
    tick killed halfway leaves the rest on their short hand-out lease, soon handed out again."""
    for start in range(0, len(handed), HANDOUT_CHUNK):
        chunk = handed[start:start + HANDOUT_CHUNK]
        for feed, token in chunk:
            # dropped by the worker once its lease is over: the feed is handed out anew by then
            fetch.apply_async((feed.name, cycle, token, digest), expires=CLAIM_LEASE)
        service().confirm_hand_out(chunk, now)


@app.task(base=NewsmonTask, name="newsmon.heartbeat")
def heartbeat() -> None:
    """Beat sends it every minute; its run is the Sentry cron monitor's check-in."""
    service().store.ping()


@app.task(base=NewsmonTask, name="newsmon.fetch")
def fetch(feed_name: str, cycle: str = "", token: str = "",
          config_digest: str | None = None) -> None:
    """Poll one feed handed out by a tick: ``token`` is the hand-out's, ``config_digest`` the
    tick's configuration (both empty in messages queued by older versions)."""
    tag(feed=feed_name)
    if token and not service().store.begin_fetch(feed_name, token, time.time()):
        log.info("feed=%s hand-out %s already used or past its lease: skipped", feed_name, token,
                 extra={"feed": feed_name})
        service().cycle_step(cycle, polled=1)  # its cycle still completes
        return
    feed = service().feed_to_fetch(feed_name, config_digest, time.time())
    outcome: dict[str, Any] = {}
    if feed is not None:  # None: removed from the configuration, or given back (a rollout)
        outcome = service().poll(feed, partial(submit_to_queue, cycle=cycle))
    failed = outcome.get("outcome") == "failed"
    service().cycle_step(cycle, feed_name if failed else "", polled=1,
                         new=int(outcome.get("new_items") or 0))


def submit_to_queue(feed: FeedConfig, parsed: ParsedFeed, items: list[Fresh],
                    cycle: str = "") -> None:
    service().cycle_step(cycle, batches=1)  # counted before it can be done
    process.delay(feed.model_dump(), encode_batch(parsed, items), cycle)


@app.task(base=NewsmonTask, name="newsmon.process")
def process(feed: dict[str, Any], batch: dict[str, Any], cycle: str = "") -> None:
    tag(feed=str(feed.get("name")))
    parsed, items = decode_batch(batch)
    alerts = service().process(FeedConfig.model_validate(feed), parsed, items)
    service().cycle_step(cycle, batches=-1, alerts=len(alerts))
    if alerts:  # sent now rather than at the next beat tick; the outbox has them either way
        send_deliveries(service().claim_deliveries(time.time(), alerts))


# -- delivery: the outbox in Redis holds every wait; Celery only carries the attempts due now --
def send_deliveries(claims: list[DeliveryClaim]) -> None:
    """Queue an attempt per claim, confirming each chunk once it is queued (a publisher killed
    in between leaves its claims on the short hand-out lease)."""
    for start in range(0, len(claims), HANDOUT_CHUNK):
        chunk = claims[start:start + HANDOUT_CHUNK]
        for claim in chunk:
            deliver.delay(claim.member, claim.token, claim.watchlist)
        service().confirm_deliveries(chunk)


@app.task(base=NewsmonTask, name="newsmon.deliver_due")
def deliver_due() -> None:
    send_deliveries(service().claim_deliveries(time.time()))
    service().store.forget_alerts(time.time())  # finished alerts past their retention


@app.task(base=NewsmonTask, name="newsmon.shape_due")
def shape_due() -> None:
    """Queue and send ended digests, flushed throttles and due updates (safe to run twice or
    at once: sealing is one script per watchlist, each event has a deterministic id)."""
    events = service().close_shaping(time.time())
    if events:
        send_deliveries(service().claim_deliveries(time.time(), events))


@app.task(base=NewsmonTask, name="newsmon.deliver")
def deliver(member: str, token: str, watchlist: str) -> None:
    tag(alert=member.partition("|")[0], watchlist=watchlist)
    result = service().deliver(DeliveryClaim(member, token, watchlist))
    if result.outcome == "busy":  # its destination's slots are taken by slow attempts
        # RabbitMQ's native delayed delivery (quorum queues) counts whole seconds, and Celery
        # refuses a countdown there that rounds down to 0
        wait = math.ceil(result.wait) if broker.kind == "amqp" else result.wait
        deliver.apply_async((member, token, watchlist), countdown=wait)
        service().confirm_deliveries([DeliveryClaim(member, token, watchlist, result.until)])
