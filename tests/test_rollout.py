"""Configuration skew: during a rollout, workers that still run the old configuration never
make feeds flap (removed and added again) or drop their fetches."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from worker.schedule import fetch_decision
from worker.service import Service
from worker.settings import Settings
from worker.store import ConfigVersion, Store


def _worker(folder: Path, redis_url: str, feeds: list[str], mtime: float) -> Service:
    """A process that runs a configuration of ``feeds`` written at ``mtime``."""
    folder.mkdir()
    lines = [f"  - url: https://{name}.example/rss\n    name: {name}\n" for name in feeds]
    path = folder / "feeds.yaml"
    path.write_text("feeds:\n" + "".join(lines))
    os.utime(path, (mtime, mtime))
    return Service(Settings.from_env({"NEWSMON_CONFIG": str(folder)}), redis_url)


@pytest.fixture
def old_and_new(tmp_path, redis_url) -> tuple[Service, Service]:
    """One worker still on the old configuration (a, b), one on the new (a, c)."""
    now = time.time()
    old = _worker(tmp_path / "old", redis_url, ["a", "b"], now - 3600)
    new = _worker(tmp_path / "new", redis_url, ["a", "c"], now - 60)
    return old, new


def test_ticks_alternating_between_versions_never_flap_a_feed(old_and_new):
    old, new = old_and_new
    now = time.time()
    assert sorted(f.name for f in old.due_feeds(now)) == ["a", "b"]  # alone, the old one acts
    assert sorted(f.name for f in new.due_feeds(now + 1)) == ["c"]   # new feed; b removed
    due = new.store.due_times()
    for step in range(2, 10):  # ticks land on either worker
        (old if step % 2 else new).due_feeds(now + step)
        assert new.store.due_times() == due  # nothing added, removed or handed out again
    assert sorted(due) == ["a", "c"]


def test_a_worker_behind_gives_a_fetch_back_instead_of_dropping_it(old_and_new):
    old, new = old_and_new
    now = time.time()
    new.due_feeds(now)
    handed_out = new.store.due_times()["c"]
    assert handed_out > now  # leased to the fetch in flight
    assert old.feed_to_fetch("c", new.config_digest(), now + 1) is None
    assert new.store.due_times()["c"] == now + 1  # due again at once, for the next tick
    assert [f.name for f in new.due_feeds(now + 2)] == ["c"]
    assert new.feed_to_fetch("c", new.config_digest(), now + 3).name == "c"


def test_a_worker_behind_does_not_poll_its_old_view_of_a_feed(tmp_path, redis_url):
    now = time.time()
    old = _worker(tmp_path / "old", redis_url, ["a"], now - 3600)
    new_folder = tmp_path / "new"
    new_folder.mkdir()
    (new_folder / "feeds.yaml").write_text("feeds:\n  - url: https://moved.example/rss\n"
                                           "    name: a\n")
    new = Service(Settings.from_env({"NEWSMON_CONFIG": str(new_folder)}), redis_url)
    new.due_feeds(now)
    assert old.feed_to_fetch("a", new.config_digest(), now) is None  # not the old URL
    assert new.feed_to_fetch("a", new.config_digest(), now).url == "https://moved.example/rss"


def test_the_newest_version_wins_whoever_reports_last(redis_url):
    versions = Store.from_url(redis_url).versions
    now = time.time()
    assert versions.publish(ConfigVersion("new", 200.0), now).digest == "new"
    assert versions.publish(ConfigVersion("old", 100.0), now + 1).digest == "new"


def test_a_version_no_process_reports_any_more_stops_counting(redis_url):
    versions = Store.from_url(redis_url).versions
    now = time.time()
    versions.publish(ConfigVersion("new", 200.0), now)
    assert versions.publish(ConfigVersion("old", 100.0), now + 5, hold=10).digest == "new"
    # the process that ran "new" is gone (a rollback, a crash): "old" acts again
    assert versions.publish(ConfigVersion("old", 100.0), now + 11, hold=10).digest == "old"


@pytest.mark.parametrize(("known", "same", "newest", "expected"), [
    (True, True, True, "fetch"),
    (True, False, True, "fetch"),        # this worker is ahead of the tick: its view is newer
    (True, False, False, "give back"),   # behind: its view of the feed may be outdated
    (False, False, False, "give back"),  # behind: a feed added by the rollout
    (False, False, True, "drop"),        # the newest configuration removed it
    (False, True, True, "drop"),
])
def test_fetch_decision(known, same, newest, expected):
    assert fetch_decision(known, same, newest) == expected


def test_the_tick_sends_the_feed_list_only_when_the_configuration_changed(tmp_path, redis_url):
    now = time.time()
    service = _worker(tmp_path / "conf", redis_url, ["a", "b"], now - 60)

    def zranges() -> int:  # sync_feeds is the only ZRANGE over the whole due set
        return int(service.store.r.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))

    before = zranges()

    def syncs() -> int:
        return zranges() - before

    for step in range(3):
        service.due_feeds(now + step)
    assert syncs() == 1
    path = tmp_path / "conf" / "feeds.yaml"
    path.write_text(path.read_text() + "  - url: https://c.example/rss\n    name: c\n")
    os.utime(path, (now, now))
    assert sorted(f.name for f in service.due_feeds(now + 4)) == ["c"]
    assert syncs() == 2
