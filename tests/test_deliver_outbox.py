"""Delivery from the outbox against a real Redis and real receivers on 127.0.0.1 (no Celery):
what the deliver task and ``newsmon run --once`` do."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.deliveries import (
    SECRET,
    SECRET_2,
    hook,
    make_alert,
    make_service,
    posts,
    verified,
    write_config,
)
from worker.deliver import MAX_LOST, RUN_LEASE, deliver_claim
from worker.embedded import EmbeddedRedis
from worker.schedule import HANDOUT_LEASE
from worker.service import Service
from worker.settings import Settings

pytestmark = pytest.mark.integration
FAST = ["0.3s"] * 8


def states(service, alert_id):
    view = service.store.alert(alert_id)
    return view["state"], {d: v["state"] for d, v in view["deliveries"].items()}


def test_an_alert_is_delivered_signed_and_valid_with_its_id_as_webhook_id(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    service.store.r.hincrby(service.store.keys.story(service.store.alert(alert_id)['story']), "copies", 2)
    assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
    [request] = posts(http_server, "/hook")
    payload = verified(request)
    assert request["headers"]["webhook-id"] == alert_id == payload["data"]["id"]
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"].startswith("newsmon/0.")
    assert payload["data"]["article"]["copies"] == 3  # read when it was sent
    view = service.store.alert(alert_id)
    assert view["state"] == "delivered" and "next_attempt" not in view
    [entry] = view["attempts"]
    assert (entry["dest"], entry["attempt"], entry["status"], entry["outcome"]) == (
        "webhook:ops", 1, 204, "delivered")
    assert entry["latency_ms"] >= 0 and entry["at"] > time.time() - 60
    assert service.store.r.zcard(service.store.keys.outbox) == 0


def test_500_twice_then_204_is_delivered_on_the_third_attempt_with_one_id(
        tmp_path, redis_url, http_server):
    answers = iter([500, 500, 204])
    http_server.routes["/hook"] = lambda h: (next(answers), {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"),
                                                             retry=FAST)},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=15) == {"delivered": 1}
    requests = posts(http_server, "/hook")
    assert len(requests) == 3
    assert {r["headers"]["webhook-id"] for r in requests} == {alert_id}
    for r in requests:  # each signed anew, with its own timestamp
        verified(r)
    log = service.store.alert(alert_id)["attempts"]
    assert [(e["status"], e["outcome"]) for e in log] == [
        (500, "retrying"), (500, "retrying"), (204, "delivered")]
    assert log[1]["at"] - log[0]["at"] >= 0.2 and log[0]["error"] == "HTTP 500"


def test_429_with_retry_after_waits_that_long(tmp_path, redis_url, http_server):
    answers = iter([(429, {"Retry-After": "2"}), (204, {})])

    def limited(handler):
        status, headers = next(answers)
        return status, headers, b""

    http_server.routes["/hook"] = limited
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"),
                                                             retry=FAST)},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=15) == {"delivered": 1}
    first, second = service.store.alert(alert_id)["attempts"]
    assert first["status"] == 429 and first["next"] - first["at"] >= 2.0
    assert second["at"] - first["at"] >= 2.0


def test_400_is_dead_at_once_with_the_reason(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (400, {}, b'{"error": "unknown field"}')
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=10) == {"dead": 1}
    assert len(posts(http_server, "/hook")) == 1
    view = service.store.alert(alert_id)
    assert view["deliveries"]["webhook:ops"]["reason"] == "HTTP 400"
    assert view["attempts"][0]["response"] == '{"error": "unknown field"}'
    assert service.store.dead_alerts() == [alert_id]


def test_a_redirect_is_a_failure_and_is_not_followed(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (302, {"Location": http_server.url("/elsewhere")}, b"")
    http_server.routes["/elsewhere"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=10) == {"dead": 1}
    assert http_server.hits("/elsewhere") == 0
    assert "redirects are not followed" in service.store.alert(alert_id)["attempts"][0]["error"]


def test_410_disables_the_webhook_until_its_configuration_changes(
        tmp_path, redis_url, http_server, caplog):
    http_server.routes["/hook"] = (410, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    first = make_alert(service.store, "energy", n=1)
    with caplog.at_level(logging.INFO, logger="newsmon"):
        assert service.deliver_until_done([first], timeout=10) == {"dead": 1}
    assert "webhook=ops disabled: it answered 410 Gone" in caplog.text
    second = make_alert(service.store, "energy", n=2)
    assert service.deliver_until_done([second], timeout=10) == {"dead": 1}
    assert len(posts(http_server, "/hook")) == 1  # the disabled webhook was not called again
    reason = service.store.alert(second)["deliveries"]["webhook:ops"]["reason"]
    assert "webhook 'ops' is disabled since" in reason and "410 Gone" in reason
    # A new secret is a new configuration: the webhook is on again, and replays go out.
    http_server.routes["/hook"] = (204, {}, b"")
    write_config(tmp_path / "config", {"ops": hook(http_server.url("/hook"), SECRET_2)},
                 [{"name": "energy", "webhook": "ops"}])
    # Read the new configuration before the threads do: ConfigWatcher records a change before
    # it has loaded it, so a second thread may meanwhile still get the old configuration.
    assert service.config().webhooks["ops"].secret[0].get_secret_value() == SECRET_2
    assert service.replay_dead() == {first: 1, second: 1}
    assert service.deliver_until_done([first, second], timeout=10) == {"delivered": 2}
    assert {verified(r, SECRET_2)["data"]["id"] for r in posts(http_server, "/hook")[1:]} == \
        {first, second}


def test_a_receiver_that_never_answers_times_out_and_is_retried(tmp_path, redis_url, http_server):
    release = threading.Event()
    calls = []

    def silent(handler):
        calls.append(time.monotonic())
        if len(calls) == 1:
            release.wait(30)
        return 204, {}, b""

    http_server.routes["/hook"] = silent
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"),
                                                             retry=FAST)},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    claim, = service.claim_deliveries(time.time(), [alert_id])
    started = time.monotonic()
    result = deliver_claim(claim, service.store, service.sender, service.config(),
                           timeouts=(1.0, 1.0))
    assert result.outcome == "retrying" and 0.9 < time.monotonic() - started < 3
    entry = service.store.alert(alert_id)["attempts"][0]
    assert entry["status"] is None and entry["error"] == "no complete response within 1 s"
    release.set()
    assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
    assert {r["headers"]["webhook-id"] for r in posts(http_server, "/hook")} == {alert_id}


def test_the_whole_request_times_out_after_15_seconds(tmp_path, redis_url, http_server):
    release = threading.Event()

    def silent(handler):
        release.wait(30)
        return 204, {}, b""

    http_server.routes["/hook"] = silent
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    claim, = service.claim_deliveries(time.time(), [alert_id])
    started = time.monotonic()
    try:
        assert service.deliver(claim).outcome == "retrying"
    finally:
        release.set()
    assert 14.5 < time.monotonic() - started < 17
    view = service.store.alert(alert_id)
    assert view["attempts"][0]["error"] == "no complete response within 15 s"
    assert 4 <= view["next_attempt"] - view["attempts"][0]["at"] <= 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_receiver_down_for_a_while_then_up_gets_every_alert_once(tmp_path, redis_url):
    port = free_port()
    got: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append({"body": body, "headers": dict(self.headers)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    service = make_service(tmp_path, redis_url,
                           {"ops": hook(f"http://127.0.0.1:{port}/hook", retry=FAST)},
                           [{"name": "energy", "webhook": "ops"}])
    alerts = [make_alert(service.store, "energy", n=i) for i in range(5)]
    assert service.deliver_until_done(alerts, timeout=0.8) == {"retrying": 5}
    errors = {e["error"] for a in alerts for e in service.store.alert(a)["attempts"]}
    assert all(e.startswith("connect failed") for e in errors)
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert service.deliver_until_done(alerts, timeout=15) == {"delivered": 5}
    finally:
        server.shutdown()
        server.server_close()
    ids = [verified(r)["data"]["id"] for r in got]
    assert sorted(ids) == sorted(alerts)  # each once


def test_a_claim_whose_worker_died_is_handed_out_again_after_the_lease(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    now = time.time()
    dead_worker, = service.claim_deliveries(now, [alert_id])
    start = service.store.start_delivery(dead_worker, now, run_lease=RUN_LEASE, slots=4,
                                         busy_wait=0.2, max_lost=MAX_LOST,
                                         handout_lease=HANDOUT_LEASE)
    assert start.verdict == "go"  # ... and the worker is killed before it records anything
    assert service.claim_deliveries(now + RUN_LEASE - 1) == []
    again, = service.claim_deliveries(now + RUN_LEASE + 1)
    assert again.member == dead_worker.member and again.token != dead_worker.token
    assert deliver_claim(again, service.store, service.sender, service.config()).outcome == \
        "delivered"
    # The first worker's claim is stale now: a late attempt of it sends nothing.
    assert deliver_claim(dead_worker, service.store, service.sender,
                         service.config()).outcome == "stale"
    [request] = posts(http_server, "/hook")
    assert request["headers"]["webhook-id"] == alert_id


def test_a_member_whose_attempts_never_finish_is_dead_lettered(tmp_path, redis_url, http_server):
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    now = time.time()
    claim, = service.claim_deliveries(now, [alert_id])
    for _ in range(MAX_LOST):  # each worker dies once its attempt has begun
        start = service.store.start_delivery(claim, now, run_lease=RUN_LEASE, slots=4,
                                             busy_wait=0.2, max_lost=MAX_LOST,
                                             handout_lease=HANDOUT_LEASE)
        assert start.verdict == "go"
        now += RUN_LEASE + 1
        claim, = service.claim_deliveries(now)
    at = now
    result = deliver_claim(claim, service.store, service.sender, service.config(),
                           clock=lambda: at)
    assert result is not None and result.outcome == "dead"
    assert http_server.requests == []
    assert "3 attempts began and never finished" in \
        service.store.alert(alert_id)["deliveries"]["webhook:ops"]["reason"]


def test_two_claimers_never_hand_out_one_member_twice(tmp_path, redis_url, http_server):
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alerts = [make_alert(service.store, "energy", n=i) for i in range(40)]
    out: list[list] = [[], [], [], []]
    barrier = threading.Barrier(4)

    def claim(i: int) -> None:
        barrier.wait()
        out[i] = service.claim_deliveries(time.time())

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    members = [c.member for batch in out for c in batch]
    assert sorted(members) == sorted(f"{a}|webhook:ops" for a in alerts)


def test_a_dead_letter_is_replayed_with_the_same_id(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (400, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=10) == {"dead": 1}
    http_server.routes["/hook"] = (204, {}, b"")
    assert service.replay([alert_id, "alert_nope"]) == {alert_id: 1, "alert_nope": -1}
    assert service.store.dead_alerts() == []
    assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
    first, second = posts(http_server, "/hook")
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == alert_id
    assert [e["status"] for e in service.store.alert(alert_id)["attempts"]] == [400, 204]
    assert service.replay([alert_id]) == {alert_id: 0}  # nothing dead to send again


def test_secret_rotation_signs_with_both_secrets(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url,
                           {"ops": hook(http_server.url("/hook"), SECRET, SECRET_2)},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
    [request] = posts(http_server, "/hook")
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    assert verified(request, SECRET)["data"]["id"] == alert_id
    assert verified(request, SECRET_2)["data"]["id"] == alert_id


def test_an_alert_without_destinations_is_recorded_and_leaves_the_outbox(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    service = make_service(tmp_path, redis_url, {}, [{"name": "quiet"}])
    alert_id = make_alert(service.store, "quiet")
    assert service.deliver_until_done([alert_id], timeout=5) == {"recorded": 1}
    assert service.store.r.zcard(service.store.keys.outbox) == 0
    # A webhook added later: a replay finds the destinations anew.
    write_config(tmp_path / "config", {"ops": hook(http_server.url("/hook"))},
                 [{"name": "quiet", "webhook": "ops"}])
    assert service.config().watchlists[0].webhook == "ops"
    assert service.replay([alert_id]) == {alert_id: 1}
    assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
    assert verified(posts(http_server, "/hook")[0])["data"]["id"] == alert_id


def test_a_webhook_and_apprise_urls_are_delivered_and_retried_separately(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    http_server.routes["/notify"] = (200, {}, b"")
    notify_answers = iter([500, 200])
    http_server.routes["/flaky"] = lambda h: (next(notify_answers), {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))}, [{
        "name": "energy", "webhook": "ops",
        "notify": [f"json://127.0.0.1:{http_server.port}/notify",
                   f"json://127.0.0.1:{http_server.port}/flaky"]}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=0.5) == {"retrying": 1}
    state, dests = states(service, alert_id)
    assert sorted(dests.values()) == ["delivered", "delivered", "retrying"]
    assert dests["webhook:ops"] == "delivered"
    assert service.deliver_until_done([alert_id], timeout=15) == {"delivered": 1}
    assert len(posts(http_server, "/hook")) == 1 and len(posts(http_server, "/notify")) == 1
    import json

    message = json.loads(posts(http_server, "/notify")[0]["body"])
    assert message["title"] == "[energy] Japan LNG imports rise"
    assert "Entities: LNG" in message["message"]
    assert "https://news.example/story/1?utm_source=feed" in message["message"]


def test_a_hanging_webhook_does_not_hold_up_another(tmp_path, redis_url, http_server):
    release = threading.Event()
    received: list[float] = []

    def hang(handler):
        release.wait(30)
        return 204, {}, b""

    def fast(handler):
        received.append(time.monotonic())
        return 204, {}, b""

    http_server.routes["/hang"] = hang
    http_server.routes["/fast"] = fast
    service = make_service(tmp_path, redis_url,
                           {"slow": hook(http_server.url("/hang")),
                            "quick": hook(http_server.url("/fast"))},
                           [{"name": "a", "webhook": "slow"}, {"name": "b", "webhook": "quick"}])
    for i in range(12):
        make_alert(service.store, "a", n=i)
    quick = [make_alert(service.store, "b", n=100 + i) for i in range(12)]
    started = time.monotonic()
    runner = threading.Thread(target=service.deliver_until_done, args=(quick, 10), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while len(received) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == 12 and max(received) - started < 3
        assert http_server.hits("/hang") <= 4  # one destination's slots, not every thread
    finally:
        release.set()
        runner.join(20)
    assert service.store.delivery_states(quick) == {a: "delivered" for a in quick}


def test_the_address_guard_applies_to_webhooks_and_notification_urls(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config", {"ops": hook(http_server.url("/hook"))},
                 [{"name": "energy", "webhook": "ops",
                   "notify": [f"json://127.0.0.1:{http_server.port}/hook"]}])
    settings = Settings.from_env({"NEWSMON_CONFIG": str(tmp_path / "config")})  # no allow list
    service = Service(settings, redis_url)
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=5) == {"dead": 1}
    assert http_server.requests == []
    reasons = [v["reason"] for v in service.store.alert(alert_id)["deliveries"].values()]
    assert all("refused address 127.0.0.1 (loopback)" in r for r in reasons)


def test_no_secret_reaches_logs_or_the_alert_record(tmp_path, redis_url, http_server, caplog):
    http_server.routes["/hook/tok_PATHSECRET1"] = (500, {}, b"")
    port = free_port()  # nothing listens: connection errors
    url = f"http://robot:pw_USERSECRET2@127.0.0.1:{http_server.port}/hook/tok_PATHSECRET1"
    notify = f"json://user:pw_NOTIFYSECRET3@127.0.0.1:{port}/tok_NOTIFYPATH4"
    service = make_service(tmp_path, redis_url, {"ops": hook(url, SECRET, retry=FAST)},
                           [{"name": "energy", "webhook": "ops", "notify": [notify]}])
    alert_id = make_alert(service.store, "energy")
    with caplog.at_level(logging.DEBUG):
        service.deliver_until_done([alert_id], timeout=1.5)
        service.test_webhook("ops")
    record = str(service.store.r.hgetall(service.store.keys.alert(alert_id)))
    keys = " ".join(service.store.r.keys("*"))
    assert "HTTP 500" in caplog.text
    for secret in ("PATHSECRET1", "USERSECRET2", "NOTIFYSECRET3", "NOTIFYPATH4",
                   SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in caplog.text
        assert secret not in record
        assert secret not in keys


def test_alerts_survive_a_redis_restart_with_persistence(tmp_path, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    service = make_service(tmp_path, url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    service.store.r.close()
    server.stop()
    url = server.start()
    try:
        service = make_service(tmp_path, url, {"ops": hook(http_server.url("/hook"))},
                               [{"name": "energy", "webhook": "ops"}])
        assert service.deliver_until_done([alert_id], timeout=10) == {"delivered": 1}
        service.store.r.close()
    finally:
        server.stop()
    assert posts(http_server, "/hook")[0]["headers"]["webhook-id"] == alert_id
