"""No credential is ever printed or stored: feeds, webhooks and notification URLs configured
with userinfo and secret-looking query parameters, every failure path driven (refused address,
500 echoing the request, timeout, DNS failure, redirect loop, parse error), every command run
as a user runs it, then all output, every log line, every Redis record and every dump file
searched for the credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import redis
import yaml

from tests.feeds import LNG_STORY, item, rss
from worker.config import load_config
from worker.fetch import Fetcher
from worker.pipeline import poll_feed
from worker.store import Store

pytestmark = pytest.mark.integration

# Each credential appears in the configuration only; none may appear anywhere else.
CREDENTIALS = {
    "feed_user": "feedUSERs3cr3t", "feed_pw": "feedPWs3cr3t", "feed_apikey": "feedAPIKEYs3cr3t",
    "feed_token": "feedTOKENs3cr3t", "feed_sig": "feedSIGs3cr3t", "feed_password": "feedPASSs3cr3t",
    "hook_pw": "hookPWs3cr3t", "hook_token": "hookTOKENs3cr3t", "hook_auth": "hookAUTHs3cr3t",
    "hook_secret": "whsec_aG9va1NJR05JTkdzM2NyM3Q=",
    "notify_pw": "notifyPWs3cr3t", "notify_key": "notifyKEYs3cr3t",
    "notify_secret": "notifySECRETs3cr3t",
}
C = CREDENTIALS
SIGNING_KEY_B64 = "aG9va1NJR05JTkdzM2NyM3Q"  # the base64 inside the whsec_ value


def feed_url(port: int, path: str, host: str = "127.0.0.1") -> str:
    return (f"http://{C['feed_user']}:{C['feed_pw']}@{host}:{port}{path}"
            f"?apikey={C['feed_apikey']}&token={C['feed_token']}&sig={C['feed_sig']}&page=2")


def echo(status: int):
    """An error page that echoes the request line, query and credentials included."""
    def reply(h):
        return status, {"Content-Type": "text/html"}, f"<html>bad request {h.path}</html>".encode()
    return reply


@pytest.fixture
def setup(tmp_path, redis_url, http_server):
    port = http_server.port
    # (An item link is article data, kept as the feed gave it: no credential of ours there.)
    ok = rss([item(1, "Japan LNG imports jump", LNG_STORY)])
    http_server.routes["/ok"] = (200, {"Content-Type": "application/rss+xml"}, ok)
    http_server.routes["/500"] = echo(500)
    http_server.routes["/notafeed"] = echo(200)
    http_server.routes["/loop"] = lambda h: (302, {"Location": h.path}, b"")  # relative, to itself
    http_server.routes["/hook"] = echo(500)
    http_server.routes["/notify"] = echo(500)

    def slow(h):
        time.sleep(3)
        return 200, {}, b""
    http_server.routes["/slow"] = slow
    config = tmp_path / "config"
    config.mkdir()
    feeds = [{"url": feed_url(port, "/ok"), "name": "ok", "full_text": "never"},
             {"url": feed_url(port, "/500"), "name": "five-hundred"},
             {"url": feed_url(port, "/notafeed"), "name": "not-a-feed"},
             {"url": feed_url(port, "/loop"), "name": "loop"},
             {"url": feed_url(port, "/rss", host="no-such-host.invalid"), "name": "dns"},
             {"url": feed_url(port, "/rss", host="10.255.255.1"), "name": "refused"},
             {"url": feed_url(port, "/slow"), "name": "slow", "every": "1h"},
             {"url": f"http://127.0.0.1:{port}/rss?password={C['feed_password']}",
              "name": "password"}]
    hook_url = (f"http://robot:{C['hook_pw']}@127.0.0.1:{port}/hook"
                f"?token={C['hook_token']}&auth={C['hook_auth']}")
    notify = [f"json://user:{C['notify_pw']}@127.0.0.1:{port}/notify?key={C['notify_key']}",
              f"json://user:{C['notify_pw']}@192.168.1.1/x?secret={C['notify_secret']}"]
    document = {"failing_after": "1s", "feeds": feeds, "health_webhook": "desk",
                "webhooks": {"desk": {"url": hook_url, "secret": C["hook_secret"],
                                      "retry": ["1s"]}},
                "watchlists": [{"name": "energy", "webhook": "desk", "notify": notify,
                                "entities": ["LNG"]}]}
    (config / "config.yaml").write_text(yaml.safe_dump(document))
    env = {**os.environ, "REDIS_URL": redis_url, "NEWSMON_CONFIG": str(config),
           "NEWSMON_DUMP_DIR": str(tmp_path / "dump"), "NEWSMON_DATA_DIR": str(tmp_path / "data"),
           "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"}
    return env, config, tmp_path


def newsmon(env, *args, **extra_env) -> str:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "worker", *args], env={**env, **extra_env},
                         capture_output=True, text=True, timeout=120)
    print(f"{time.monotonic() - started:5.1f} s  newsmon {args[0]}")
    # The header names the command only: its arguments are the test's, credentials included.
    return f"$ newsmon {' '.join(args[:2])} (exit {run.returncode})\n{run.stdout}\n{run.stderr}"


def redis_dump(url: str) -> str:
    r = redis.Redis.from_url(url, decode_responses=True)
    out = []
    for key in r.scan_iter("*"):
        kind = r.type(key)
        value = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1),
                 "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
                 "stream": lambda k: r.xrange(k)}.get(kind, lambda k, t=kind: t)(key)
        out.append(f"{key} {value}")
    r.close()
    return "\n".join(out)


def leaks(text: str) -> dict[str, list[str]]:
    found = {}
    for name, secret in (*CREDENTIALS.items(), ("signing_key", SIGNING_KEY_B64)):
        lines = [line for line in text.splitlines() if secret in line]
        if lines:
            found[name] = lines[:3]
    return found


@pytest.mark.timeout(300)
def test_no_credential_in_any_output_or_stored_record(setup, redis_url):
    env, config, tmp_path = setup
    outputs = [newsmon(env, "check"), newsmon(env, "run", "--once", "--timeout", "3")]
    time.sleep(1.2)  # past failing_after: the second poll makes the failing feeds "failing"
    outputs.append(newsmon(env, "run", "--once", "--timeout", "3"))
    outputs.append(newsmon(env, "run", "--once", "--timeout", "3", NEWSMON_LOG_FORMAT="json"))
    # The timeout path, with a short deadline (the service's is 30 s).
    loaded = load_config(config, env=env).config
    slow = next(f for f in loaded.feeds if f.name == "slow")
    with Fetcher(["127.0.0.0/8"], total_timeout=1) as fetcher:
        store = Store.from_url(redis_url)
        outcome = poll_feed(slow, store, fetcher, time.time(), lambda *a: None)
        store.r.close()
    assert "no complete response within 1 s" in outcome["error"]

    outputs += [newsmon(env, "status"), newsmon(env, "status", "--json"),
                newsmon(env, "alerts", "list"), newsmon(env, "alerts", "list", "--json"),
                newsmon(env, "webhook", "list"), newsmon(env, "webhook", "test", "desk"),
                newsmon(env, "alerts", "replay", "--dead"),
                newsmon(env, "normalize", "--out", str(tmp_path / "n"), feed_url(1, "/x")),
                newsmon(env, "normalize", "--out", str(tmp_path / "n"), "--config", str(config),
                        loaded.feeds[3].url),
                newsmon(env, "health", "--component", "beat")]
    alerts = json.loads(newsmon(env, "alerts", "list", "--json").split("\n", 1)[1]
                        .split("\n\n", 1)[0] or "[]")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    events = [k.rsplit(":", 1)[1] for k in r.scan_iter("newsmon:*alert:evt_*")]
    r.close()
    assert alerts and events, "an alert and a feed health event to show"
    for alert_id in [alerts[0]["id"], *sorted(events)[:2]]:
        outputs += [newsmon(env, "alerts", "show", alert_id),
                    newsmon(env, "alerts", "show", "--json", alert_id)]
    everything = "\n".join(outputs)
    stored = redis_dump(redis_url)
    dumps = "\n".join(p.read_text() for p in (tmp_path / "dump").rglob("*.txt"))

    # The failure paths really happened, and their reasons are there to read.
    status = json.loads(next(o for o in outputs if o.startswith("$ newsmon status --json"))
                        .split("\n", 1)[1].split("\n\n", 1)[0])
    errors = {f["name"]: f["error"] or "" for f in status["feeds"]}
    assert "HTTP 500" in errors["five-hundred"] and "DNS" in errors["dns"]
    assert "redirect loop" in errors["loop"] and "refused address 10.255.255.1" in errors["refused"]
    assert "no complete response" in errors["slow"] and errors["not-a-feed"]
    assert "feed.failing" in stored and "HTTP 500" in stored
    assert "webhook desk: HTTP 500" in everything and "bad request /hook" in everything

    assert leaks(everything) == {}, leaks(everything)
    assert leaks(stored) == {}, leaks(stored)
    assert leaks(dumps) == {}
    # Redaction keeps what is useful: hosts, paths and harmless parameters.
    assert "127.0.0.1" in everything and "page=2" in everything and "apikey=***" in everything
