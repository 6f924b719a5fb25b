"""Alert shaping under a real Celery worker and beat (subprocesses), with a receiver on
127.0.0.1: every watchlist option in one run of the service, and a digest whose assembler was
killed, sent once by beat."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.processes import Processes, wait_until
from tests.stories import entry, events, of_type, serve, story, titles, write_config
from tests.test_shaping_run import ASSEMBLER, service

pytestmark = pytest.mark.integration
WINDOW = 4.0


def by_watchlist(got: list[dict], watchlist: str, kind: str) -> list[dict]:
    return [e for e in of_type(got, kind) if e["data"]["watchlist"] == watchlist]


def test_every_shaping_option_under_celery(procs: Processes, http_server):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [], title="Wire A")
    serve(http_server, "/b", [], title="Paper B")
    write_config(procs.config, http_server, [
        {"name": "digest", "digest": f"{WINDOW:.0f}s"},
        {"name": "throttled", "throttle": "1/h", "digest": f"{WINDOW:.0f}s"},
        {"name": "held", "throttle": "1/3s"},
        {"name": "breaking", "breaking": {"outlets": 2, "within": "30m"}},
        {"name": "updates", "updates": True, "min_salience": 0.3}],
        feeds=("/a", "/b"), every="1s")
    procs.worker()
    procs.beat()
    wait_until(lambda: http_server.hits("/a") >= 2, 60, "the worker to poll the feeds")
    # Publish right after a window opens, so that every story falls in one digest window.
    while time.time() % WINDOW > 0.3:
        time.sleep(0.05)
    passing = story(7, lead="") + "\nLater, an official said LNG was not discussed."
    originals = [entry(1), entry(2), entry(3), entry(7, "Harbour dredging starts", passing)]
    serve(http_server, "/a", originals, title="Wire A")

    def got() -> list[dict]:
        return events(http_server)

    wait_until(lambda: by_watchlist(got(), "digest", "digest.created")
               and by_watchlist(got(), "throttled", "digest.created")
               and len(by_watchlist(got(), "updates", "alert.created")) == 3, 60,
               "the digests and the alerts of the first stories")
    [digest] = by_watchlist(got(), "digest", "digest.created")
    assert titles(digest["data"]["alerts"]) == [
        "Harbour dredging starts", "LNG story 1", "LNG story 2", "LNG story 3"]
    [sent] = by_watchlist(got(), "throttled", "alert.created")
    [overflow] = by_watchlist(got(), "throttled", "digest.created")
    assert sorted([sent["data"]["article"]["title"]] + titles(overflow["data"]["alerts"])) == [
        "Harbour dredging starts", "LNG story 1", "LNG story 2", "LNG story 3"]
    assert by_watchlist(got(), "breaking", "story.breaking") == []     # one outlet so far
    # Without a digest, the throttle sends what it held once it has room again (3 s on).
    wait_until(lambda: by_watchlist(got(), "held", "digest.created"), 30, "the held alerts")
    [first] = by_watchlist(got(), "held", "alert.created")
    [rest] = by_watchlist(got(), "held", "digest.created")
    assert sorted([first["data"]["article"]["title"]] + titles(rest["data"]["alerts"])) == [
        "Harbour dredging starts", "LNG story 1", "LNG story 2", "LNG story 3"]
    assert "Harbour dredging starts" not in titles(
        [e["data"] for e in by_watchlist(got(), "updates", "alert.created")])  # salience 0.04

    # A second outlet carries story 1: it breaks, and its alert gets an update.
    serve(http_server, "/b", [entry(1, site="paper")], title="Paper B")
    wait_until(lambda: by_watchlist(got(), "breaking", "story.breaking")
               and by_watchlist(got(), "updates", "alert.updated"), 60,
               "the breaking story and its update")
    [breaking] = by_watchlist(got(), "breaking", "story.breaking")
    assert breaking["data"]["outlets"] == 2 and breaking["data"]["article"]["title"] == \
        "LNG story 1"
    [outlet] = by_watchlist(got(), "updates", "alert.updated")
    assert outlet["data"]["reason"] == "outlet" and outlet["data"]["outlets"] == 2

    # A correction of story 2 at the same URL.
    corrected = story(2).replace("Officials said", "Officials denied", 1)
    serve(http_server, "/a", [*originals[:1], entry(2, body=corrected), *originals[2:]],
          title="Wire A")
    wait_until(lambda: len(by_watchlist(got(), "updates", "alert.updated")) == 2, 60,
               "the correction's update")
    correction = by_watchlist(got(), "updates", "alert.updated")[1]
    assert correction["data"]["reason"] == "correction"
    assert correction["data"]["article"]["title"] == "LNG story 2"
    story_2 = correction["data"]["article"]["id"]
    versions = sorted((procs.tmp / "dump").rglob(f"*_{story_2}.txt"))
    assert len(versions) == 2 and "Officials denied" in versions[1].read_text()

    # Empty windows come and go: nothing more is sent, nothing twice.
    time.sleep(2 * WINDOW)
    final = got()
    # digest: 1; throttled: 1 alert, 1 digest; held: 1 alert, 1 digest; updates: 3 alerts and
    # 2 updates; breaking: 1
    assert len(final) == len(posts_ids(http_server)) == 1 + 2 + 2 + 5 + 1
    assert len(of_type(final, "digest.created")) == 3
    assert "Traceback" not in procs.logs()


def posts_ids(server) -> set[str]:
    return {r["headers"]["webhook-id"] for r in server.requests if r["path"] == "/hook"}


def test_a_digest_whose_assembler_was_killed_goes_out_once_through_beat(
        procs: Processes, http_server, tmp_path, redis_url):
    http_server.routes["/hook"] = (204, {}, b"")
    serve(http_server, "/a", [entry(n) for n in (1, 2, 3)])
    write_config(procs.config, http_server, [{"name": "desk", "digest": "1h"}])
    svc = service(tmp_path, redis_url)
    svc.poll(svc.config().feeds[0], lambda f, parsed, items: svc.process(f, parsed, items))
    killed = subprocess.run([sys.executable, "-c", ASSEMBLER, "before-queue"],
                            env=procs.env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert svc.store.shaping.pending_counts("desk")["sealed"] == 1
    procs.worker()
    procs.beat()
    wait_until(lambda: events(http_server), 60, "the digest")
    time.sleep(3)   # several beat ticks: still one
    [digest] = events(http_server)
    assert titles(digest["data"]["alerts"]) == ["LNG story 1", "LNG story 2", "LNG story 3"]
