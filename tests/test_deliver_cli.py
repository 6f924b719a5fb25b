"""The delivery commands: ``run --once --timeout``, ``alerts list/show/replay``, ``webhook test``
and ``webhook list``, against a real Redis and real receivers on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.deliveries import SECRET, hook, make_alert, make_service, posts, verified
from tests.feeds import LNG_STORY, item, rss
from worker.cli import main
from worker.service import Service

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml"}
USER_SECRET = "pw_CLIUSERSECRET"
PATH_SECRET = "tok_CLIPATHSECRET"


def newsmon(redis_url: str, config: Path, *args: str) -> Result:
    env = {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(config),
           "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_DUMP_DIR": str(config.parent / "d")}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def with_feed(tmp_path: Path, server, hook_url: str, retry: list[str] | None = None) -> Path:
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": server.url("/feed"), "name": "wire", "full_text": "never"}],
        "webhooks": {"ops": hook(hook_url, retry=retry)},
        "watchlists": [{"name": "energy", "webhook": "ops", "entities": ["LNG"]}]}))
    server.routes["/feed"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    return folder


def test_run_once_waits_for_the_deliveries_and_says_how_they_ended(
        tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    config = with_feed(tmp_path, http_server, http_server.url("/hook"))
    result = newsmon(redis_url, config, "run", "--once")
    assert result.exit_code == 0, result.output
    assert "1 new items, 1 alerts: 1 delivered" in result.output
    alert_id = verified(posts(http_server, "/hook")[0])["data"]["id"]
    listing = newsmon(redis_url, config, "alerts", "list")
    assert "DELIVERY" in listing.output and "delivered" in listing.output
    assert alert_id in listing.output


def test_run_once_gives_up_waiting_after_its_timeout(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (503, {}, b"")
    config = with_feed(tmp_path, http_server, http_server.url("/hook"), retry=["0.3s"] * 20)
    started = time.monotonic()
    result = newsmon(redis_url, config, "run", "--once", "--timeout", "1.5")
    assert 1.4 < time.monotonic() - started < 8
    assert "1 alerts: 1 still retrying; the rest stay in the outbox" in result.output
    assert len(posts(http_server, "/hook")) >= 3
    listing = newsmon(redis_url, config, "alerts", "list", "--json")
    [view] = json.loads(listing.output)
    assert view["state"] == "retrying" and view["next_attempt"]
    assert view["deliveries"]["webhook:ops"]["state"] == "retrying"
    assert "retrying, next 20" in newsmon(redis_url, config, "alerts", "list").output


def test_alerts_show_prints_every_attempt(tmp_path, redis_url, http_server):
    answers = iter([500, 400])
    http_server.routes["/hook"] = lambda h: (next(answers), {}, b"bad payload")
    service = make_service(tmp_path, redis_url,
                           {"ops": hook(http_server.url("/hook"), retry=["0.2s"])},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    assert service.deliver_until_done([alert_id], timeout=10) == {"dead": 1}
    shown = newsmon(redis_url, tmp_path / "config", "alerts", "show", alert_id)
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert f"alert      {alert_id}" in lines and "delivery   dead" in lines
    attempts = [line for line in lines if line.startswith("20") and "webhook:ops" in line]
    assert len(attempts) == 2
    assert "500" in attempts[0] and "retrying" in attempts[0] and " ms " in attempts[0]
    assert "400" in attempts[1] and "dead" in attempts[1] and "HTTP 400" in attempts[1]
    data = json.loads(newsmon(redis_url, tmp_path / "config", "alerts", "show", alert_id,
                              "--json").output)
    assert [a["status"] for a in data["attempts"]] == [500, 400]
    assert data["attempts"][1]["response"] == "bad payload"
    missing = newsmon(redis_url, tmp_path / "config", "alerts", "show", "alert_nope")
    assert missing.exit_code == 1 and "no alert alert_nope" in missing.output


def test_alerts_replay_sends_dead_letters_again(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (400, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                           [{"name": "energy", "webhook": "ops"}])
    first, second = (make_alert(service.store, "energy", n=i) for i in (1, 2))
    assert service.deliver_until_done([first, second], timeout=10) == {"dead": 2}
    config = tmp_path / "config"
    assert newsmon(redis_url, config, "alerts", "replay").exit_code == 2  # ids or --dead
    one = newsmon(redis_url, config, "alerts", "replay", first, "alert_nope")
    assert one.exit_code == 1
    assert f"{first}: 1 destination queued" in one.output and "alert_nope: no such alert" in \
        one.output
    assert "no worker is running" in one.stderr  # queued, but nothing will send it yet
    service.store.mark_beat(time.time())  # a worker ran a beat tick just now
    rest = newsmon(redis_url, config, "alerts", "replay", "--dead")
    assert rest.exit_code == 0 and f"{second}: 1 destination queued" in rest.output
    assert "no worker" not in rest.output
    assert "no dead-lettered alerts" in newsmon(redis_url, config, "alerts", "replay",
                                                "--dead").output
    http_server.routes["/hook"] = (204, {}, b"")
    assert Service(service.settings, redis_url).deliver_until_done([first, second], 10) == \
        {"delivered": 2}
    ids = [r["headers"]["webhook-id"] for r in posts(http_server, "/hook")]
    assert sorted(ids[2:]) == sorted([first, second])


def test_webhook_test_sends_a_signed_ping_and_prints_the_answer(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (200, {}, b'{"ok": true}')
    make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook"))},
                 [{"name": "energy", "webhook": "ops"}])
    result = newsmon(redis_url, tmp_path / "config", "webhook", "test", "ops")
    assert result.exit_code == 0
    assert result.output.startswith("webhook ops: HTTP 200 in ")
    assert '{"ok": true}' in result.output
    [request] = posts(http_server, "/hook")
    ping = verified(request)
    assert ping["type"] == "ping" and ping["data"] == {"webhook": "ops"}
    assert request["headers"]["webhook-id"].startswith("ping_")
    unknown = newsmon(redis_url, tmp_path / "config", "webhook", "test", "nope")
    assert unknown.exit_code == 1 and "no webhook named 'nope'" in unknown.output


def test_webhook_test_reports_a_failure_without_secrets(tmp_path, redis_url, http_server):
    http_server.routes[f"/hook/{PATH_SECRET}"] = (401, {}, b"who are you")
    url = f"http://robot:{USER_SECRET}@127.0.0.1:{http_server.port}/hook/{PATH_SECRET}"
    make_service(tmp_path, redis_url, {"ops": hook(url)}, [{"name": "energy", "webhook": "ops"}])
    result = newsmon(redis_url, tmp_path / "config", "webhook", "test", "ops")
    assert result.exit_code == 1 and "HTTP 401" in result.output
    make_service(tmp_path, redis_url, {"ops": hook(f"http://robot:{USER_SECRET}@127.0.0.1:1/"
                                                   f"{PATH_SECRET}")},
                 [{"name": "energy", "webhook": "ops"}])
    down = newsmon(redis_url, tmp_path / "config", "webhook", "test", "ops")
    assert down.exit_code == 1 and "failed after" in down.output and "connect failed" in \
        down.output
    for output in (result.output, down.output):
        assert USER_SECRET not in output and PATH_SECRET not in output and SECRET not in output


def test_webhook_list_says_when_a_410_disabled_a_webhook(tmp_path, redis_url, http_server):
    http_server.routes["/hook"] = (410, {}, b"")
    service = make_service(tmp_path, redis_url, {"ops": hook(http_server.url("/hook")),
                                                 "other": hook(http_server.url("/other"))},
                           [{"name": "energy", "webhook": "ops"}])
    alert_id = make_alert(service.store, "energy")
    service.deliver_until_done([alert_id], timeout=10)
    listing = newsmon(redis_url, tmp_path / "config", "webhook", "list").output
    ops = next(line for line in listing.splitlines() if line.startswith("ops "))
    other = next(line for line in listing.splitlines() if line.startswith("other "))
    assert "disabled since" in ops and "HTTP 410 Gone" in ops and "energy" in ops
    assert "enabled" in other and "5s 300s 1800s" in other


def test_no_cli_output_shows_a_secret(tmp_path, redis_url, http_server):
    http_server.routes[f"/hook/{PATH_SECRET}"] = (500, {}, b"")
    url = f"http://robot:{USER_SECRET}@127.0.0.1:{http_server.port}/hook/{PATH_SECRET}"
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.yaml").write_text(yaml.safe_dump({
        "feeds": [{"url": http_server.url("/feed"), "name": "wire", "full_text": "never"}],
        "webhooks": {"ops": hook(url, retry=["0.2s"])},
        "watchlists": [{"name": "energy", "webhook": "ops", "entities": ["LNG"],
                        "notify": [f"json://u:{USER_SECRET}@127.0.0.1:1/{PATH_SECRET}"]}]}))
    http_server.routes["/feed"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    outputs = [newsmon(redis_url, config, "run", "--once", "--timeout", "2").output]
    alert_id = json.loads(newsmon(redis_url, config, "alerts", "list", "--json").output)[0]["id"]
    for args in (["alerts", "list"], ["alerts", "list", "--json"], ["alerts", "show", alert_id],
                 ["alerts", "show", alert_id, "--json"], ["webhook", "list"],
                 ["webhook", "test", "ops"], ["status"]):
        outputs.append(newsmon(redis_url, config, *args).output)
    assert "HTTP 500" in outputs[0] or "still retrying" in outputs[0] or "dead" in outputs[0]
    for output in outputs:
        for secret in (USER_SECRET, PATH_SECRET, SECRET, SECRET.removeprefix("whsec_")):
            assert secret not in output
