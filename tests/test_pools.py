"""Pools that fit the work: under the layout ``newsmon run`` ships (one pool per kind of work),
a webhook that accepts connections and never answers does not stop polling."""

from __future__ import annotations

import random
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
import yaml

from tests.deliveries import hook
from tests.feeds import item, rss
from tests.processes import CELERY, Processes, wait_until
from worker.bench import WORDS
from worker.layout import POOLS, QUEUE_POOLS, worker_argv

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}


@pytest.fixture
def black_hole() -> Iterator[tuple[str, list[socket.socket]]]:
    """A URL whose server accepts every connection and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook", held
    stop.set()
    thread.join()
    listener.close()
    for conn in held:
        conn.close()


def _story(n: int) -> str:
    rng = random.Random(n)
    return f"Japan report {n}: " + " ".join(rng.choice(WORDS) for _ in range(120)) + "."


def _growing_feed(http_server) -> None:
    """Every fetch finds one more item (a new story about Japan) than the one before."""
    def feed(handler) -> tuple[int, dict[str, str], bytes]:
        n = min(http_server.hits("/feed"), 60)
        return 200, RSS, rss([item(i, f"Japan wire {i}", _story(i)) for i in range(1, n + 1)])

    http_server.routes["/feed"] = feed


def test_a_black_holed_webhook_does_not_stop_polling(procs: Processes, http_server, black_hole):
    url, held = black_hole
    _growing_feed(http_server)
    (procs.config / "feeds.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": http_server.url("/feed"), "name": "wire", "every": "1s",
                   "full_text": "never"}],
        "webhooks": {"hole": hook(url, retry=["1s"])},
        "watchlists": [{"name": "japan", "webhook": "hole", "entities": ["Japan"]}]}))
    procs.newsmon_run()  # 4 fetch threads: fewer than the attempts the black hole holds
    wait_until(lambda: len(held) >= 4, 120, "deliveries stuck in the black hole")
    polls, alerts = http_server.hits("/feed"), len(procs.alert_ids())
    wait_until(lambda: http_server.hits("/feed") >= polls + 4, 40, "polling to go on")
    wait_until(lambda: len(procs.alert_ids()) >= alerts + 3, 40, "new items to become alerts")
    states = {procs.state(a) for a in procs.alert_ids()}
    assert "delivered" not in states  # nothing got through the black hole meanwhile


def test_the_layout_gives_every_queue_a_pool_that_fits_it():
    import worker.app

    assert {p.queue for p in POOLS} == set(worker.app.QUEUES)
    assert QUEUE_POOLS == {"schedule": "threads", "fetch": "threads", "deliver": "threads",
                           "process": "prefork"}
    argv = worker_argv(POOLS[0], beat_schedule="/tmp/s")
    assert argv[argv.index("--queues") + 1] == "schedule" and "--beat" in argv


def test_newsmon_run_starts_one_worker_per_pool(procs: Processes, http_server):
    (procs.config / "feeds.yaml").write_text(yaml.safe_dump({"feeds": [
        {"url": http_server.url("/feed"), "name": "wire", "every": "30s"}]}))
    http_server.routes["/feed"] = (200, RSS, rss([item(1, "Japan wire", _story(1))]))
    procs.newsmon_run()
    import subprocess

    def pools() -> dict[str, list[str]]:
        out = subprocess.run([*CELERY, "inspect", "active_queues", "--json", "--timeout", "3"],
                             env=procs.env, capture_output=True, text=True, timeout=60).stdout
        replies = yaml.safe_load(out or "{}") or {}
        return {node.split("@")[0]: sorted(q["name"] for q in queues)
                for node, queues in replies.items()}

    wait_until(lambda: len(pools()) == 4, 60, "four workers to answer")
    assert pools() == {"schedule": ["schedule"], "fetch": ["fetch"], "process": ["process"],
                       "deliver": ["deliver"]}
    assert sys.executable  # the workers run from this interpreter (python -m celery)
