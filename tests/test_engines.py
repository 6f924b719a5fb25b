"""The service on the engines users already run: state on Redis Cluster or Sentinel, the broker
apart (RabbitMQ, Sentinel, another Redis). Every engine is a real server this test session
started (tests/engines.py); RabbitMQ tests use a vhost of their own."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import yaml
from kombu import Connection

from tests import engines
from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from tests.processes import Processes, wait_until
from worker.broker import QUEUES, queue_depths, redact, resolve, sentinel_broker_url
from worker.errors import ConfigError
from worker.metrics import ClusterCollector
from worker.settings import Settings
from worker.store import Store, close, connect

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}
WATCHLISTS = [{"name": "japan", "entities": ["Japan"]}, {"name": "rice", "entities": ["rice"]}]
needs_rabbitmq = pytest.mark.skipif(not engines.rabbitmq_available(),
                                    reason="no RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")


# -- engines (the session's Redis Cluster: cluster_url in tests/conftest.py) ---------------------
@pytest.fixture(scope="session")
def sentinel_engines(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[str, engines.Servers, int]]:
    with engines.redis_sentinel(tmp_path_factory.mktemp("sentinel")) as found:
        yield found


@pytest.fixture
def sentinel_url(sentinel_engines: tuple[str, engines.Servers, int]) -> str:
    url = sentinel_engines[0]
    client = connect(url, "sentinel", engines.SENTINEL_MASTER)
    client.flushall()
    close(client)
    return url


@pytest.fixture
def amqp_url() -> Iterator[str]:
    if not engines.rabbitmq_available():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")
    with engines.rabbitmq_vhost() as (url, _vhost):
        yield url


def cluster_env(broker: str) -> dict[str, str]:
    return {"NEWSMON_REDIS_MODE": "cluster", "CELERY_BROKER_URL": broker}


def sentinel_env() -> dict[str, str]:
    return {"NEWSMON_REDIS_MODE": "sentinel", "NEWSMON_REDIS_MASTER": engines.SENTINEL_MASTER}


def write_feeds(procs: Processes, feeds: list[dict], webhook: str | None = None) -> None:
    doc: dict = {"feeds": feeds, "watchlists": [dict(w) for w in WATCHLISTS]}
    if webhook:
        doc["webhooks"] = {"desk": {"url": webhook, "secret": engines_secret(),
                                    "retry": ["1s", "1s", "2s"]}}
        for w in doc["watchlists"]:
            w["webhook"] = "desk"
    (procs.config / "feeds.yaml").write_text(yaml.safe_dump(doc))


def engines_secret() -> str:
    from tests.deliveries import SECRET

    return SECRET


def newsmon(procs: Processes, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=procs.env,
                          capture_output=True, text=True, timeout=timeout)


def two_feeds(http_server) -> list[dict]:
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Rice harvest to grow", RICE_STORY)]))
    http_server.routes["/b"] = (200, RSS, rss([item(2, "Japan LNG imports jump", LNG_STORY)]))
    return [{"url": http_server.url(p), "name": p[1:], "every": "2s", "full_text": "never"}
            for p in ("/a", "/b")]


# -- configuration -------------------------------------------------------------------------------
def test_state_redis_is_the_broker_unless_celery_broker_url_names_one():
    alone = Settings.from_env({"REDIS_URL": "redis://r:1/0"})
    assert resolve(alone, "redis://r:1/0").url == "redis://r:1/0"
    apart = Settings.from_env({"REDIS_URL": "redis://r:1/0",
                               "CELERY_BROKER_URL": "amqp://u:p@mq:5672/v"})
    broker = resolve(apart, "redis://r:1/0")
    assert (broker.url, broker.kind) == ("amqp://u:p@mq:5672/v", "amqp")
    assert broker.transport_options == {"confirm_publish": True}
    assert broker.celery["task_create_missing_queue_type"] == "quorum"
    classic = Settings.from_env({"CELERY_BROKER_URL": "amqp://mq//",
                                 "NEWSMON_BROKER_QUEUE_TYPE": "classic"})
    assert resolve(classic, "redis://r:1/0").celery == {
        "task_default_queue_type": "classic", "task_create_missing_queue_type": "classic"}


def test_sentinel_state_is_also_a_sentinel_broker_with_its_master_name():
    settings = Settings.from_env({"REDIS_URL": "redis://:pw@h1:26401,h2:26380/2",
                                  **sentinel_env()})
    broker = resolve(settings, settings.redis_url)
    assert broker.url == "sentinel://:pw@h1:26401;sentinel://h2:26380/2"
    assert broker.transport_options["master_name"] == engines.SENTINEL_MASTER
    assert sentinel_broker_url("redis://h1") == "sentinel://h1/0"
    assert redact(broker.url) == "sentinel://***@h1:26401;sentinel://h2:26380/2"


def test_a_cluster_or_sentinel_without_what_it_needs_is_refused():
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
        resolve(Settings.from_env({"REDIS_URL": "redis://n:7000", "NEWSMON_REDIS_MODE":
                                   "cluster"}), "redis://n:7000")
    with pytest.raises(ConfigError, match="NEWSMON_REDIS_MASTER"):
        Settings.from_env({"REDIS_URL": "redis://s:26401", "NEWSMON_REDIS_MODE": "sentinel"})
    with pytest.raises(ConfigError, match="needs REDIS_URL"):
        Settings.from_env({"NEWSMON_REDIS_MODE": "cluster"})
    with pytest.raises(ConfigError, match="standalone, cluster, sentinel"):
        Settings.from_env({"NEWSMON_REDIS_MODE": "proxy"})
    with pytest.raises(ConfigError, match="NEWSMON_REDIS_MASTER"):
        resolve(Settings.from_env({"CELERY_BROKER_URL": "sentinel://s:26401"}), "redis://r")
    with pytest.raises(ConfigError, match="amqp://"):
        resolve(Settings.from_env({"CELERY_BROKER_URL": "sqs://"}), "redis://r")


def test_run_on_a_cluster_without_a_broker_says_why(tmp_path, cluster_url):
    procs = Processes(tmp_path, cluster_url, NEWSMON_REDIS_MODE="cluster")
    write_feeds(procs, [])
    done = newsmon(procs, "run")
    assert done.returncode == 1
    assert "Celery has no Redis Cluster transport" in done.stderr
    procs.stop_all()


# -- Sentinel ------------------------------------------------------------------------------------
def test_store_on_sentinel_writes_to_the_master_the_sentinels_name(sentinel_url,
                                                                   sentinel_engines):
    _, _, master_port = sentinel_engines
    store = Store.from_url(sentinel_url, mode="sentinel", master=engines.SENTINEL_MASTER)
    store.sync_feeds(["a"], 100.0)
    assert store.claim_due(100.0, 60.0) == [("a", 100.0)]
    direct = Store.from_url(f"redis://127.0.0.1:{master_port}/0")
    assert direct.due_times() == {"a": 160.0}
    direct.close()
    store.close()


def test_the_store_follows_a_sentinel_failover_to_the_new_master(tmp_path):
    with engines.redis_sentinel(tmp_path) as (url, servers, master_port):
        store = Store.from_url(url, mode="sentinel", master=engines.SENTINEL_MASTER,
                               socket_timeout=2, socket_connect_timeout=2)
        store.mark_beat(1.0)
        servers.kill(master_port)

        def written() -> bool:
            try:
                store.mark_beat(2.0)
                return store.last_beat() == 2.0
            except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                return False  # until the sentinel has promoted the replica

        wait_until(written, 30, "a write on the promoted replica")
        assert store.r.connection_pool.get_master_address()[1] != master_port
        store.close()


@pytest.fixture
def sentinel_procs(tmp_path, sentinel_url) -> Iterator[Processes]:
    procs = Processes(tmp_path, sentinel_url, **sentinel_env())
    yield procs
    procs.stop_all()


def test_run_once_status_and_alerts_on_sentinel(sentinel_procs, http_server):
    procs = sentinel_procs
    write_feeds(procs, two_feeds(http_server))
    done = newsmon(procs, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert "polled 2 feeds (0 failed), 2 new items, 2 alerts" in done.stdout
    status = json.loads(newsmon(procs, "status", "--json").stdout)
    assert [f["outcome"] for f in status["feeds"]] == ["ok", "ok"]
    assert status["state_store"]["mode"] == "sentinel"
    assert status["broker"]["kind"] == "sentinel" and status["broker"]["up"]
    assert set(status["broker"]["queues"]) == set(QUEUES)
    listed = newsmon(procs, "alerts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(a["watchlist"] for a in json.loads(listed.stdout)) == ["japan", "rice"]
    shown = newsmon(procs, "alerts", "show", json.loads(listed.stdout)[0]["id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "recorded"
    replayed = newsmon(procs, "alerts", "replay", "--dead")
    assert (replayed.returncode, replayed.stdout) == (0, "no dead-lettered alerts\n")


def test_worker_and_beat_on_sentinel_use_it_as_broker_too(sentinel_procs, http_server):
    procs = sentinel_procs
    write_feeds(procs, two_feeds(http_server))
    procs.worker()
    procs.beat()
    wait_until(lambda: procs.alerts() == ["japan", "rice"], 60, "alerts through Sentinel")
    wait_until(lambda: newsmon(procs, "health").returncode == 0, 30, "health")
    said = newsmon(procs, "health").stdout
    assert "broker (sentinel) answers" in said and "worker(s) answered" in said


# -- RabbitMQ ------------------------------------------------------------------------------------
@needs_rabbitmq
def test_rabbitmq_broker_with_redis_state_uses_quorum_queues(tmp_path, redis_url, amqp_url,
                                                             http_server):
    procs = Processes(tmp_path, redis_url, CELERY_BROKER_URL=amqp_url)
    write_feeds(procs, two_feeds(http_server))
    procs.worker()
    procs.beat()
    try:
        wait_until(lambda: procs.alerts() == ["japan", "rice"], 60, "alerts through RabbitMQ")
        vhost = amqp_url.rsplit("/", 1)[1]
        listed = engines.rabbitmqctl("list_queues", "-p", vhost, "name", "type", "--quiet")
        types = dict(line.split() for line in listed.splitlines()[1:] if line.strip())
        assert {types.get(q) for q in QUEUES} == {"quorum"}, listed
        # nothing of the broker went to the state Redis
        assert not [k for k in procs.redis.keys("*") if not k.startswith("newsmon:")]
        wait_until(lambda: newsmon(procs, "health").returncode == 0, 30, "health")
        assert "broker (amqp) answers" in newsmon(procs, "health").stdout
    finally:
        procs.stop_all()


@needs_rabbitmq
def test_a_busy_webhook_waits_through_rabbitmq_delayed_delivery(tmp_path, redis_url, amqp_url,
                                                                http_server):
    """More alerts than a destination's slots, to a slow receiver: the waiting attempts go
    through RabbitMQ's native delayed delivery, which takes whole seconds only."""
    procs = Processes(tmp_path, redis_url, CELERY_BROKER_URL=amqp_url)

    def slow(handler):
        time.sleep(1.5)
        return 204, {}, b""

    http_server.routes["/hook"] = slow
    http_server.routes["/a"] = (200, RSS, rss([item(n, f"Japan story number {n}",
                                                    distinct_story(n)) for n in range(10)]))
    write_feeds(procs, [{"url": http_server.url("/a"), "name": "a", "every": "1h",
                         "full_text": "never"}], webhook=http_server.url("/hook"))
    procs.worker("--pool", "threads", "-c", "16")
    procs.beat()
    try:
        wait_until(lambda: len(procs.alert_ids()) == 10
                   and all(procs.state(a) == "delivered" for a in procs.alert_ids()),
                   60, "every alert delivered")
        assert "countdown must be a positive number" not in procs.logs()
    finally:
        procs.stop_all()


@needs_rabbitmq
def test_queue_depths_come_from_the_broker_in_use(redis_url, amqp_url):
    settings = Settings.from_env({"REDIS_URL": redis_url, "CELERY_BROKER_URL": amqp_url})
    broker = resolve(settings, redis_url)
    with Connection(amqp_url) as conn:
        queue = conn.SimpleQueue("fetch", queue_args={"x-queue-type": "quorum"})
        for n in range(3):
            queue.put({"n": n})
        queue.close()
    expected = {"schedule": 0, "fetch": 3, "process": 0, "deliver": 0}
    # a quorum queue's message count lags its publishes by a moment under load
    depths: dict[str, int] = {}
    try:
        wait_until(lambda: depths.update(queue_depths(broker, QUEUES)) or depths == expected, 30,
                   "the three messages counted")
    finally:
        print("depths", depths)
    store = Store.from_url(redis_url)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in ClusterCollector(store, QUEUES, broker).collect()
               for s in family.samples}
    assert samples[("newsmon_queue_depth", (("queue", "fetch"),))] == 3
    assert samples[("newsmon_broker_up", ())] == 1
    store.close()


def test_another_redis_as_broker_keeps_celery_off_the_state_store(tmp_path, redis_url,
                                                                  http_server):
    servers = engines.Servers(tmp_path)
    port = engines.free_port()
    servers.start(port)
    broker_url = f"redis://127.0.0.1:{port}/0"
    procs = Processes(tmp_path, redis_url, CELERY_BROKER_URL=broker_url)
    write_feeds(procs, two_feeds(http_server))
    try:
        procs.worker()
        procs.beat()
        wait_until(lambda: procs.alerts() == ["japan", "rice"], 60, "alerts through the broker")
        assert not [k for k in procs.redis.keys("*") if not k.startswith("newsmon:")]
        broker = connect(broker_url)
        assert broker.exists("_kombu.binding.fetch") and not broker.keys("newsmon:*")
        close(broker)
        view = json.loads(newsmon(procs, "status", "--json").stdout)["broker"]
        assert (view["kind"], view["up"], set(view["queues"])) == ("redis", True, set(QUEUES))
    finally:
        procs.stop_all()
        servers.stop()


def test_a_broker_that_does_not_answer_is_reported(tmp_path, redis_url):
    dead = f"amqp://guest:guest@127.0.0.1:{engines.free_port()}//"
    procs = Processes(tmp_path, redis_url, CELERY_BROKER_URL=dead)
    write_feeds(procs, [])
    said = newsmon(procs, "health", "--component", "beat")
    assert said.returncode == 1
    assert said.stdout.startswith("unhealthy: broker at amqp://***@127.0.0.1:")
    status = json.loads(newsmon(procs, "status", "--json").stdout)
    assert status["broker"]["up"] is False and status["broker"]["error"]
    broker = resolve(Settings.from_env({"CELERY_BROKER_URL": dead}), redis_url)
    store = Store.from_url(redis_url)
    samples = {s.name: s.value for family in ClusterCollector(store, QUEUES, broker).collect()
               for s in family.samples}
    store.close()
    assert samples["newsmon_broker_up"] == 0
    assert "newsmon_outbox_due" in samples  # the state store's gauges still come
    procs.stop_all()


# -- Redis Cluster -------------------------------------------------------------------------------
# Every Lua script declares its keys in KEYS, all in one slot (the store's hash tags).


def test_every_command_outside_scripts_works_on_a_cluster(cluster_url):
    """Pipelines over keys of every node and the reads and writes outside the scripts."""
    store = Store.from_url(cluster_url, mode="cluster")
    names = [f"feed-{n}" for n in range(40)]
    store.sync_feeds(names, 100.0)
    assert store.feed_states(names) == [{}] * 40
    assert sorted(n for n, _ in store.claim_due(100.0, 60.0)) == sorted(names)
    for n, name in enumerate(names):
        store.record_fetch(name, {"outcome": "ok", "health": "healthy", "etag": None}, 200.0 + n)
    assert store.due_times()["feed-7"] == 207.0
    assert {s["outcome"] for s in store.feed_health_summary()} == {"ok"}
    store.sync_feeds(names[:10], 300.0)
    assert sorted(store.due_times()) == sorted(names[:10])
    store.mark_beat(123.0)
    assert store.last_beat() == 123.0
    ids = [f"{n:016x}" for n in range(30)]  # keys on every node
    assert store.delivery_states(ids) == dict.fromkeys(ids)
    assert store.alert_stories(ids) == [""] * 30
    assert store.alerts() == [] and store.alert(ids[0]) is None
    assert store.dead_alerts() == [] and store.outbox_next() is None
    assert store.outbox_counts(100.0) == {"due": 0, "waiting": 0, "dead": 0}
    store.disable_webhook("d1", {"reason": "gone"})
    assert store.webhook_disabled("d1") == {"reason": "gone"}
    assert store.webhook_disabled("d2") is None
    assert store.stats()["alerts"] == 0
    store.close()


@pytest.fixture
def cluster_procs(tmp_path, cluster_url, amqp_url) -> Iterator[Processes]:
    procs = Processes(tmp_path, cluster_url, **cluster_env(amqp_url))
    yield procs
    procs.stop_all()


@needs_rabbitmq
def test_status_health_and_metrics_on_a_cluster_with_rabbitmq(cluster_procs, http_server):
    procs = cluster_procs
    feeds = two_feeds(http_server)
    write_feeds(procs, feeds, webhook=http_server.url("/hook"))
    store = Store.from_url(procs.env["REDIS_URL"], mode="cluster")
    store.sync_feeds(["a", "b"], time.time())
    store.record_fetch("a", {"outcome": "ok", "health": "healthy"}, time.time() + 60)
    store.mark_beat(time.time())
    status = newsmon(procs, "status", "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert [f["outcome"] for f in view["feeds"]] == ["ok", "never fetched"]
    assert view["state_store"]["mode"] == "cluster"
    assert view["broker"]["kind"] == "amqp" and view["broker"]["up"]
    text = newsmon(procs, "status").stdout
    assert "(cluster)" in text and "broker: amqp://***@127.0.0.1:5672/" in text
    hooks = newsmon(procs, "webhook", "list")
    assert hooks.returncode == 0 and "desk" in hooks.stdout and "enabled" in hooks.stdout
    said = newsmon(procs, "health", "--component", "beat")
    assert said.returncode == 0, said.stdout
    assert "Redis answers, broker (amqp) answers, beat" in said.stdout
    broker = resolve(Settings.from_env(dict(procs.env)), procs.env["REDIS_URL"])
    samples = [s for family in ClusterCollector(store, QUEUES, broker).collect()
               for s in family.samples]
    assert sum(s.value for s in samples if s.name == "newsmon_feeds") == 2
    assert [s.value for s in samples if s.name == "newsmon_broker_up"] == [1]
    store.close()


@needs_rabbitmq
def test_run_once_and_alerts_on_a_cluster(cluster_procs, http_server):
    procs = cluster_procs
    write_feeds(procs, two_feeds(http_server), webhook=http_server.url("/hook"))
    http_server.routes["/hook"] = (204, {}, b"")
    done = newsmon(procs, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert "polled 2 feeds (0 failed), 2 new items, 2 alerts: 2 delivered" in done.stdout
    assert http_server.hits("/hook") == 2
    listed = json.loads(newsmon(procs, "alerts", "list", "--json").stdout)
    assert sorted(a["watchlist"] for a in listed) == ["japan", "rice"]
    shown = newsmon(procs, "alerts", "show", listed[0]["id"], "--json")
    assert json.loads(shown.stdout)["state"] == "delivered"


# -- many workers --------------------------------------------------------------------------------
def distinct_story(n: int) -> str:
    """A story of its own (no near-duplicate of another n) that mentions Japan."""
    rng = random.Random(n)
    syllables = ["ka", "to", "mi", "ren", "sho", "da", "vel", "qui", "zor", "pan", "lu", "ber"]
    words = ["".join(rng.choice(syllables) for _ in range(3)) for _ in range(60)]
    return f"Japan {n}: " + " ".join(words) + "."


STATE_ENGINES = [
    pytest.param("standalone", id="redis"),
    pytest.param("cluster", id="redis-cluster"),
]


@needs_rabbitmq
@pytest.mark.timeout(400)
@pytest.mark.parametrize("state", STATE_ENGINES)
def test_three_workers_two_beats_one_killed_deliver_each_alert_once(
        state, request, tmp_path, amqp_url, http_server):
    """RabbitMQ broker, three workers (own hostnames), two beats by mistake; one worker is
    SIGKILLed mid-run. Every alert reaches the receiver once, twice only if the killed worker
    had its send in flight (it reached the receiver, the answer was never recorded: the same
    webhook-id again, for the receiver to drop); no feed is fetched twice for one due time (the
    only fast repeat allowed is a fetch the killed worker had in hand)."""
    url = request.getfixturevalue("cluster_url" if state == "cluster" else "redis_url")
    env = cluster_env(amqp_url) if state == "cluster" else {"CELERY_BROKER_URL": amqp_url}
    procs = Processes(tmp_path, url, **env)
    feeds, every, rounds = 8, 3.0, 4
    items: dict[str, list[dict]] = {f"/f{i}": [] for i in range(feeds)}
    hits: dict[str, list[float]] = {path: [] for path in items}

    def feed(handler):
        path = handler.path.split("?")[0]
        hits[path].append(time.monotonic())
        return 200, RSS, rss(list(items[path]))

    def add_round(r: int) -> None:
        for i, path in enumerate(items):
            n = r * feeds + i
            items[path].append(item(n, f"Japan story number {n}", distinct_story(n)))

    posted: dict[str, list[float]] = {}  # webhook-id -> when each copy arrived

    def hook(handler):
        posted.setdefault(handler.headers["webhook-id"], []).append(time.monotonic())
        return 204, {}, b""

    for path in items:
        http_server.routes[path] = feed
    http_server.routes["/hook"] = hook
    add_round(0)
    doc = {"feeds": [{"url": http_server.url(p), "name": p[1:], "every": f"{every:g}s",
                      "full_text": "never"} for p in items],
           "webhooks": {"desk": {"url": http_server.url("/hook"), "secret": engines_secret(),
                                 "retry": ["1s", "1s", "2s", "5s"]}},
           "watchlists": [{"name": "japan", "entities": ["Japan"], "webhook": "desk"}]}
    (procs.config / "feeds.yaml").write_text(yaml.safe_dump(doc))
    try:
        workers = [procs.worker("--pool", "threads", "-c", "4", "--hostname", f"w{n}@%h")
                   for n in range(3)]
        procs.beat("beat-1")
        procs.beat("beat-2")
        wait_until(lambda: len(procs.alert_ids()) >= feeds, 90, "the first round's alerts")
        add_round(1)
        wait_until(lambda: len(procs.alert_ids()) >= feeds + 2, 30, "the second round started")
        killing = time.monotonic()
        procs.kill(workers[0])
        killed = time.monotonic()  # a fetch it had in hand reached the server before this
        for r in range(2, rounds):
            add_round(r)
            time.sleep(every)
        total = feeds * rounds
        wait_until(lambda: len(procs.alert_ids()) == total
                   and all(procs.state(a) == "delivered" for a in procs.alert_ids()),
                   120, f"all {total} alerts delivered", procs.alert_states)
        time.sleep(2 * every)  # a late duplicate would show now
        assert sorted(posted) == sorted(procs.alert_ids()), "an alert was never sent"
        assert len(set(procs.alert_ids())) == total
        for alert_id, times in posted.items():
            # a send in flight in the killed worker began at most a request's timeout before
            in_flight = len(times) == 2 and killing - 15 <= times[0] <= killed <= times[1]
            assert len(times) == 1 or in_flight, (
                f"{alert_id} sent {len(times)} times at {times} "
                f"(worker killed {killing:.3f}..{killed:.3f})")
        for path, times in hits.items():
            repeats = [(a, b) for a, b in zip(times, times[1:], strict=False)
                       if b - a < every / 2 and not (a <= killed and b >= killing)]
            assert not repeats, (f"{path} fetched twice for one due time: {times} "
                                 f"(worker killed {killing:.3f}..{killed:.3f})")
            assert len(times) >= 3, f"{path} was not polled on schedule: {times}"
    finally:
        procs.stop_all()
