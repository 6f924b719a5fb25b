"""The Celery broker: which one (``CELERY_BROKER_URL``, else the state Redis), how Celery is set
up for it, and what ``status``, ``health`` and the metrics read from it (queue depths, a ping).

Brokers: Redis (``redis://``, ``rediss://``), Redis Sentinel (``sentinel://h1:26379;sentinel://
h2:26379/0``, its master named by ``NEWSMON_REDIS_MASTER``) and RabbitMQ (``amqp://``,
``amqps://``: quorum queues and publisher confirms). Celery has no Redis Cluster transport
(celery/celery#2852), so a state store in cluster mode needs a broker of its own.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.settings import Settings

QUEUES = ("schedule", "fetch", "process", "deliver")  # one per kind of work (worker.app)
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss", "sentinel")


@dataclass(frozen=True)
class Broker:
    """A broker URL with the Celery settings that go with its transport."""

    url: str
    transport_options: dict[str, Any] = field(default_factory=dict)
    celery: dict[str, Any] = field(default_factory=dict)   # more Celery settings (app.conf)

    @property
    def kind(self) -> str:
        """redis | sentinel | amqp"""
        scheme = urlsplit(self.url).scheme
        return "amqp" if scheme in AMQP_SCHEMES else ("sentinel" if scheme == "sentinel"
                                                      else "redis")


def redact(url: str) -> str:
    """A broker or state store URL for display: passwords hidden (every host of a list)."""
    return re.sub(r"//[^/@;]*@", "//***@", url)


def sentinel_broker_url(state_url: str) -> str:
    """The state store's sentinel list (``redis://h1:26379,h2:26379/0``) in kombu's form
    (``sentinel://h1:26379;sentinel://h2:26379/0``); credentials stay on the first."""
    parts = urlsplit(state_url)
    auth, _, hosts = parts.netloc.rpartition("@")
    auth = auth + "@" if auth else ""
    path = parts.path or "/0"
    nodes = [h.strip() for h in hosts.split(",") if h.strip()]
    urls = [f"sentinel://{auth if i == 0 else ''}{host}{path if i == len(nodes) - 1 else ''}"
            for i, host in enumerate(nodes)]
    return ";".join(urls)


def resolve(settings: Settings, state_url: str) -> Broker:
    """The broker of this deployment: CELERY_BROKER_URL, else the state store itself."""
    url = settings.broker_url
    if url is None:
        if settings.redis_mode == "cluster":
            raise ConfigError("environment: NEWSMON_REDIS_MODE=cluster needs CELERY_BROKER_URL: "
                              "Celery has no Redis Cluster transport (use RabbitMQ, or another "
                              "Redis)")
        url = sentinel_broker_url(state_url) if settings.redis_mode == "sentinel" else state_url
    scheme = urlsplit(url.split(";", 1)[0]).scheme
    if scheme in AMQP_SCHEMES:
        return _amqp(url, settings)
    if scheme in REDIS_SCHEMES:
        return _redis(url, settings)
    raise ConfigError(f"environment: CELERY_BROKER_URL: expected redis://, rediss://, "
                      f"sentinel:// or amqp://, got {scheme or url!r}://")


def _redis(url: str, settings: Settings) -> Broker:
    vt = settings.visibility_timeout
    options: dict[str, Any] = {
        # Longer than the longest task; a task of a vanished worker is delivered again after it.
        "visibility_timeout": vt,
        # Look for tasks of vanished workers every few seconds (kombu's default sweep is
        # ~100 s apart), so a killed worker's work restarts soon after the visibility timeout.
        "unacked_restore_interval": max(1, min(10, int(vt / 2))),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(2, min(300, int(vt / 2))),
    }
    if url.startswith("sentinel://"):
        if not settings.redis_master:
            raise ConfigError("environment: a sentinel:// broker needs NEWSMON_REDIS_MASTER, "
                              "the service name the sentinels watch")
        from worker.store import SENTINEL_CLIENT

        options |= {"master_name": settings.redis_master, "sentinel_kwargs": SENTINEL_CLIENT}
    return Broker(url, options)


def _amqp(url: str, settings: Settings) -> Broker:
    # Publisher confirms: a publish returns once RabbitMQ has the message (a tick's hand-outs
    # are not lost in a broker crash). Quorum queues are replicated and keep a message until
    # it is acknowledged; they have no global QoS, which Celery detects and avoids.
    # Countdowns (a busy destination asks again in a few seconds) then use Celery's native
    # delayed delivery, which needs topic exchanges.
    kind = settings.broker_queue_type
    celery: dict[str, Any] = {"task_default_queue_type": kind,
                              "task_create_missing_queue_type": kind}
    if kind == "quorum":
        celery |= {"task_default_exchange_type": "topic",
                   "task_create_missing_queue_exchange_type": "topic"}
    return Broker(url, {"confirm_publish": True}, celery)


def connection(broker: Broker, timeout: float = 3.0) -> Any:
    from kombu import Connection

    options = {**broker.transport_options}
    if broker.kind != "amqp":
        options |= {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return Connection(broker.url, connect_timeout=timeout, transport_options=options)


def ping(broker: Broker, timeout: float = 3.0) -> str | None:
    """None when the broker answers, else why not."""
    conn = connection(broker, timeout)
    try:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        conn.default_channel  # noqa: B018  (opens a channel: the broker really answers)
        return None
    except Exception as exc:  # any transport's error: the reason is what matters here
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        conn.release()


def queue_depths(broker: Broker, queues: tuple[str, ...], timeout: float = 3.0) -> dict[str, int]:
    """Messages waiting in each Celery queue, from whichever broker is in use (a queue that
    does not exist yet holds none)."""
    conn = connection(broker, timeout)
    try:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        depths = {}
        for queue in queues:
            # a passive declare of a missing queue closes an AMQP channel: one channel each
            channel = conn.channel()
            try:
                depths[queue] = int(channel.queue_declare(queue, passive=True).message_count)
            except conn.channel_errors:
                depths[queue] = 0
            finally:
                with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
                    channel.close()  # already closed by the broker after a NOT_FOUND
        return depths
    finally:
        conn.release()
