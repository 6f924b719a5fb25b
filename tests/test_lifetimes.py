"""Every key newsmon writes has one lifetime rule in ``store.LIFETIMES``: Redis is filled
through every path (new story, copy, alert, delivery, dead letter, replay, feed event, removed
feed, disabled webhook, Retry-After hold) and each key must match a row of the table, with a
TTL where the rule says so, and every script names only keys of one hash slot."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from worker import store as store_module
from worker.service import Service
from worker.settings import Settings
from worker.store import LIFETIMES, PREFIX

pytestmark = pytest.mark.integration
RSS = {"Content-Type": "application/rss+xml; charset=utf-8"}


def pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(<[^>]+>)", pattern)
    body = "".join(".+" if p.startswith("<") else re.escape(p) for p in parts)
    return re.compile(re.escape(PREFIX) + body + "$")


RULES = [(pattern_regex(row.pattern), row) for row in LIFETIMES]


def rule_of(key: str) -> store_module.Lifetime | None:
    return next((row for regex, row in RULES if regex.match(key)), None)


def write_config(folder: Path, server, feeds: list[str], hook_path: str = "/hook") -> None:
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "health_webhook": "ops",
        "webhooks": {
            "desk": {"url": server.url(hook_path), "secret": ["whsec_" + "A" * 32]},
            "gone": {"url": server.url("/gone"), "secret": ["whsec_" + "B" * 32]},
            "slow": {"url": server.url("/slow"), "secret": ["whsec_" + "C" * 32]},
            "ops": {"url": server.url("/ops"), "secret": ["whsec_" + "D" * 32]},
        },
        "watchlists": [
            {"name": "lng", "entities": [{"name": "LNG", "aliases": ["liquefied natural gas"]}],
             "webhook": "desk"},
            {"name": "gas", "entities": ["LNG"], "webhook": "gone"},
            {"name": "rice", "entities": ["rice"], "webhook": "slow"},
            {"name": "japan", "entities": ["Japan"]},
        ],
        "feeds": [{"url": server.url(f"/{name}"), "name": name, "full_text": "never",
                   "failing_after": "1s"} for name in feeds],
    }))


def service_for(tmp_path: Path, redis_url: str) -> Service:
    settings = Settings.from_env({"NEWSMON_CONFIG": str(tmp_path / "config"),
                                  "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                                  "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"})
    return Service(settings, redis_url)


def fill_every_path(tmp_path: Path, redis_url: str, http_server) -> Service:
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY),
                                               item(2, "Rice harvest to grow", RICE_STORY)]))
    # the same story again at another URL (a copy), and a feed that will break
    http_server.routes["/b"] = (200, RSS, rss([item(7, "Japan LNG imports jump", LNG_STORY)]))
    http_server.routes["/broken"] = (200, RSS, rss([item(9, "Markets wrap", "Stocks. " * 30)]))
    http_server.routes["/hook"] = (200, {}, b"")
    http_server.routes["/gone"] = (410, {}, b"")  # disabled webhook, dead letter
    http_server.routes["/slow"] = (429, {"Retry-After": "120"}, b"")  # hold, retrying
    http_server.routes["/ops"] = (200, {}, b"")
    write_config(tmp_path / "config", http_server, ["a", "b", "broken", "old"])
    http_server.routes["/old"] = (200, RSS, rss([]))
    service = service_for(tmp_path, redis_url)
    service.run_once(delivery_timeout=3)
    http_server.routes["/broken"] = (500, {}, b"")
    time.sleep(1.1)
    service.store.set_due("broken", 0)
    service.run_once(delivery_timeout=3)   # broken: feed.failing event to the ops webhook
    service.replay_dead()                  # replay of the 410 dead letter
    service.deliver_until_done(service.store.dead_alerts(), 3)
    write_config(tmp_path / "config", http_server, ["a", "b", "broken"])  # "old" removed
    service.due_feeds(time.time())
    return service


def test_every_key_has_one_lifetime_rule(tmp_path, redis_url, http_server):
    service = fill_every_path(tmp_path, redis_url, http_server)
    r = service.store.r
    keys = sorted(k for k in r.scan_iter(PREFIX + "*"))
    seen_rules = {rule_of(k).pattern if rule_of(k) else None for k in keys}
    without = [k for k in keys if rule_of(k) is None]
    assert without == [], f"keys without a lifetime rule: {without}"
    for key in keys:
        row = rule_of(key)
        assert r.type(key) == row.type, (key, row)
        if row.rule == "ttl":
            assert r.ttl(key) > 0, f"{key} should expire ({row.how})"
        else:
            assert r.ttl(key) == -1, f"{key}: rule {row.rule} but it has a TTL"
    # every path was taken: each family below was written
    expected = {"{f:<feed>}:feed", "{f:<feed>}:ids", "{idx}:art:<article>",
                "{idx}:x:<kind>:<digest>", "{idx}:s:<story>", "{idx}:fired:<story>",
                "{idx}:b:<epoch>:<bucket>", "{idx}:articles", "{out}:alert:<alert>",
                "{out}:outbox", "{out}:dead", "{out}:expiry", "{out}:alerts",
                "{out}:disabled", "{out}:dest:<dest>:hold", "{sched}:due"}
    assert expected <= seen_rules, expected - seen_rules
    # the removed feed's state went with it
    assert not [k for k in keys if "{f:old}" in k]


def test_a_disabled_webhook_stays_disabled_until_its_configuration_changes(
        tmp_path, redis_url, http_server):
    service = fill_every_path(tmp_path, redis_url, http_server)
    disabled = service.store.r.hgetall(service.store.keys.disabled)
    assert len(disabled) == 1 and service.store.r.ttl(service.store.keys.disabled) == -1
    write_config(tmp_path / "config", http_server, ["a"], hook_path="/hook")
    service.due_feeds(time.time())
    assert len(service.store.r.hgetall(service.store.keys.disabled)) == 1  # same config: kept
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config["webhooks"]["gone"]["url"] = http_server.url("/gone2")
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    time.sleep(0.05)
    service.due_feeds(time.time())
    assert service.store.r.hgetall(service.store.keys.disabled) == {}


SCRIPT_KEYS = re.compile(r"redis\.call\('(\w+)',\s*([^,)]+)")


def test_scripts_touch_only_keys_named_in_keys():
    """No script builds a key name: every key argument is KEYS[...] or a local bound to one."""
    for name in dir(store_module):
        text = getattr(store_module, name)
        if not (name.startswith("_") and isinstance(text, str) and "redis.call" in text):
            continue
        assert "ARGV[1] .. '" not in text and "p .. '" not in text, name
        for command, first in SCRIPT_KEYS.findall(text):
            if command in ("TIME",):
                continue
            assert first.startswith("KEYS[") or re.fullmatch(r"[a-z_]+", first.strip()), \
                (name, command, first)


def test_each_family_sits_in_one_named_slot():
    for row in LIFETIMES:
        assert row.pattern.startswith("{") and "}" in row.pattern, row
        assert row.rule in ("ttl", "trim", "config", "fixed"), row
