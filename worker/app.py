"""The Celery application: the broker (worker.broker), one queue per kind of work, at-least-once
delivery of tasks, and the beat schedule. Run with ``celery -A worker.app worker`` and ``... beat``."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, signals

from worker import embedded
from worker.broker import QUEUES, resolve
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.settings import Settings

log = logging.getLogger("newsmon.app")
__all__ = ["QUEUES", "app", "broker", "settings", "state_url"]


def state_url(settings: Settings) -> str:
    """REDIS_URL, else the embedded Redis that ``newsmon run`` started for this data dir."""
    return (settings.redis_url or embedded.running_url(settings.data_dir)
            or "redis://127.0.0.1:6379/0")




def _survive_lost_broker_on_close() -> None:
    """Work around kombu (celery#9250): when the Redis connection drops while tasks are
    unacknowledged, restoring them as the channel closes, or acknowledging a task that
    finished meanwhile, builds a client from the already closed connection and raises
    AttributeError ("'NoneType' object has no attribute 'hostname'"); the worker then exits
    with "Unrecoverable error". Those messages are still in Redis's unacked hash and come back
    after the visibility timeout (every task is safe to run twice), so skipping the step is
    safe; the worker reconnects and carries on."""
    from kombu.transport import redis as kombu_redis

    def guarded(original: Any) -> Any:
        if getattr(original, "newsmon_safe", False):
            return original

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(self, *args, **kwargs)
            except AttributeError:
                if self.channel.connection is not None and \
                        self.channel.connection.client is not None:
                    raise  # not the closed-connection case
                log.warning("Redis connection gone: unacknowledged tasks come back after "
                            "the visibility timeout")
                return None

        call.newsmon_safe = True  # type: ignore[attr-defined]
        return call

    for name in ("restore_unacked", "ack", "reject"):
        setattr(kombu_redis.QoS, name, guarded(getattr(kombu_redis.QoS, name)))


_survive_lost_broker_on_close()
try:
    settings = Settings.from_env()
    broker = resolve(settings, state_url(settings))
except ConfigError as exc:  # `celery -A worker.app ...` with a bad setting: one line, no traceback
    sys.exit("\n".join(f"newsmon: invalid setting: {p.removeprefix('environment: ')}"
                        for p in exc.problems))
app = Celery("newsmon", include=["worker.tasks"])
app.conf.update(
    broker_url=broker.url,
    broker_connection_retry_on_startup=True,
    # A task redelivered when its worker is killed must find it done or do it again safely:
    # every task is idempotent, acknowledged only once it has finished.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Redis: a visibility timeout longer than the longest task (fetch: 30 s feed + full-text
    # pages, under the time limits); Celery countdowns are never used for long waits (the due
    # zset and outbox hold those). RabbitMQ: publisher confirms and quorum queues.
    broker_transport_options=broker.transport_options,
    **broker.celery,
    # Redis going away must not kill the worker: with this True, a worker here exited with
    # "Unrecoverable error: AttributeError ... 'hostname'" in 4 of 9 Redis SIGKILLs
    # (celery#9250; the same error also comes from closing the channel, worked around above).
    # A task running across the outage may then run twice, which every task tolerates.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    broker_connection_retry=True,
    broker_connection_max_retries=None,   # wait for the broker as long as it takes
    task_soft_time_limit=300,
    task_time_limit=360,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="process",
    task_routes={
        "newsmon.tick": {"queue": "schedule"},
        "newsmon.fetch": {"queue": "fetch"},
        "newsmon.process": {"queue": "process"},
        "newsmon.deliver": {"queue": "deliver"},
        "newsmon.deliver_due": {"queue": "schedule"},
        "newsmon.shape_due": {"queue": "schedule"},
        "newsmon.heartbeat": {"queue": "schedule"},
    },
    beat_schedule={
        # Hands out due feeds; a tick not run within its own period is dropped, not queued up.
        "tick": {"task": "newsmon.tick", "schedule": settings.tick_seconds,
                 "options": {"expires": settings.tick_seconds}},
        # Hands out the outbox's due deliveries (retries, and alerts whose first send was lost);
        # new alerts are sent at once by the process task. Dropped, not queued, if late.
        "deliver-due": {"task": "newsmon.deliver_due", "schedule": settings.tick_seconds,
                        "options": {"expires": settings.tick_seconds}},
        # Closes ended digest windows, flushes throttles that have room and held updates that
        # are due (windows close within a tick of their end). Dropped, not queued, if late.
        "shape-due": {"task": "newsmon.shape_due", "schedule": settings.tick_seconds,
                      "options": {"expires": settings.tick_seconds}},
        # Proves beat and a worker both run: Sentry's cron monitor "newsmon-heartbeat".
        "newsmon-heartbeat": {"task": "newsmon.heartbeat", "schedule": 60.0,
                              "options": {"expires": 60.0}},
    },
)


@signals.setup_logging.connect
def _setup_logging(**_: object) -> None:
    configure_logging(settings.log_format, settings.log_level)


@signals.celeryd_init.connect
def _worker_init(**_: object) -> None:
    from worker.sentry import init_sentry

    # already now: Celery warns before it sets logging up
    configure_logging(settings.log_format, settings.log_level)
    init_sentry("worker")


@signals.worker_init.connect
def _load_configuration(**_: object) -> None:
    """Load the configuration before the pool starts: prefork children inherit it, so a child
    that starts while the folder holds a bad edit still runs on the last good configuration."""
    import logging

    from worker.errors import ConfigError
    from worker.tasks import service

    try:
        service().config()
    except ConfigError as exc:  # the tasks that need it fail and run again later
        logging.getLogger("newsmon").error("configuration not loaded at start:\n%s", exc)


@signals.worker_process_init.connect
def _prefork_child(**_: object) -> None:
    """A prefork pool child: Celery's time limits end a stuck task here, so parsing runs in
    the task itself (elsewhere it runs in a child process with a deadline)."""
    from worker import service

    service.ISOLATE_PARSE = False


@signals.beat_init.connect
def _beat_init(**_: object) -> None:
    from worker.sentry import init_sentry

    init_sentry("beat")


@signals.worker_ready.connect
def _worker_ready(**_: object) -> None:
    """Serve /metrics from the worker's main process (its pool's children write beside it)."""
    if settings.metrics_port is not None:
        from worker import metrics
        from worker.store import Store

        metrics.serve(settings.metrics_port, Store.from_settings(settings, state_url(settings)),
                      QUEUES, broker)
