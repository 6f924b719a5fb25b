"""The worker pools newsmon runs: one per kind of work, so that waiting on the network never
starves the CPU work or the schedule, and one black-holed webhook or slow site never stops
polling. ``newsmon run`` starts them; the recipes in deploy/ run the same commands.

Bounds hold under each pool: the thread pools ignore Celery's time limits, so every network
exchange carries its own deadline (fetch.py) and parsing runs in a child process killed past
its deadline (isolate.py); the prefork pool is bounded by the task time limits (app.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    """One Celery worker: the queue it consumes, its pool, and its default size."""

    queue: str
    pool: str            # Celery's --pool
    concurrency: int     # the default; the sizing rule is in docs/scaling.md
    why: str


CORES = os.cpu_count() or 1
POOLS = (
    Pool("schedule", "threads", 2, "the tick and the outbox sweep never wait behind other work"),
    Pool("fetch", "threads", 16, "waits on feed servers; parsing in child processes"),
    Pool("process", "prefork", CORES, "CPU: normalize, dedupe, match, dump"),
    Pool("deliver", "threads", 8, "waits on webhooks; each attempt ends within 15 s"),
)
QUEUE_POOLS = {p.queue: p.pool for p in POOLS}


def worker_argv(pool: Pool, concurrency: int | None = None, *, beat_schedule: str | None = None,
                quiet: bool = False) -> list[str]:
    """The ``celery`` arguments of one pool's worker (after the program); with
    ``beat_schedule`` the schedule worker runs the beat too."""
    argv = ["-A", "worker.app", *(["--quiet"] if quiet else []), "worker",
            "--queues", pool.queue, "--pool", pool.pool,
            "--concurrency", str(concurrency or pool.concurrency),
            "--hostname", f"{pool.queue}@%h", "--loglevel", "INFO"]
    if beat_schedule:
        argv += ["--beat", "--schedule", beat_schedule]
    return argv


def node_names(hostname: str) -> list[str]:
    """The Celery node names the pools' workers take on one host."""
    return [f"{p.queue}@{hostname}" for p in POOLS] + [f"celery@{hostname}"]
