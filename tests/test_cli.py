"""The command line as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.feeds import LNG_STORY, RICE_STORY, item, rss
from worker.cli import main

DATA = Path(__file__).parent / "data"
SEED = Path("/work/shared/seed/000_d2c0166b2a2dd97c.txt")
DESK_SECRET = "whsec_c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz"  # 24 bytes, as Standard Webhooks asks
CONFIG = """
feeds:
  - url: https://news.example/world.rss
    name: world
webhooks:
  desk:
    url: https://user:pw@hooks.example.com/newsmon?token=abc
    secret: ${DESK_SECRET}
watchlists:
  - name: japan-energy
    webhook: desk
    entities:
      - Japan
      - name: LNG
        aliases: [liquefied natural gas]
    exclude: [Japan Airlines]
  - name: rice
    entities: [rice]
"""


@pytest.fixture
def config(tmp_path):
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "watchlists.yaml").write_text(CONFIG)
    return folder


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_normalize_writes_one_dump_per_entry_and_prints_paths(tmp_path):
    out = tmp_path / "dump"
    result = invoke("normalize", str(DATA / "seed.xml"), str(DATA / "atom.xml"), "--out", str(out),
                    "--full-text", "never")
    assert result.exit_code == 0, result.output
    paths = [Path(p) for p in result.stdout.split()]
    assert paths and all(p.is_file() for p in paths)
    seed = next(p for p in paths if p.parent.name == "2025-02-06")
    assert seed.name.startswith("000_") and seed.read_bytes() == (DATA / "seed.txt").read_bytes()


def test_the_seed_article_renders_byte_for_byte(tmp_path):
    if not SEED.exists():
        pytest.skip("the shared seed file is not on this machine")
    out = tmp_path / "dump"
    invoke("normalize", str(DATA / "seed.xml"), "--out", str(out), "--full-text", "never")
    [written] = (out / "2025-02-06").glob("*.txt")
    assert written.read_bytes() == SEED.read_bytes()


def test_normalize_reports_a_source_that_is_not_a_feed_after_the_others(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><body><p>Hello</p></body></html>")
    result = CliRunner().invoke(main, ["normalize", str(page), str(DATA / "seed.xml"), "--out",
                                       str(tmp_path / "dump"), "--full-text", "never"])
    assert result.exit_code == 1
    assert "page.html" in result.output and "HTML" in result.output
    assert list((tmp_path / "dump").rglob("*.txt"))  # the good source was still written


def test_normalize_reads_urls(tmp_path, http_server):
    http_server.routes["/feed"] = (200, {"Content-Type": "application/rss+xml"},
                                   rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    result = invoke("normalize", http_server.url("/feed"), "--out", str(tmp_path / "d"),
                    "--full-text", "never", env={"NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"})
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).read_text().startswith(" date 2025-02-06 Japan LNG")


def test_match_prints_a_json_line_per_file_and_watchlist(tmp_path, config):
    dump = tmp_path / "a.txt"
    dump.write_text(" date 2025-02-06 Japan buys more LNG\nStaff Published February 06, 2025 | "
                    "04:30 PM\n" + RICE_STORY + "\n")
    quiet = tmp_path / "b.txt"
    quiet.write_text(" date 2025-02-06 Weather\nStaff Published February 06, 2025 | 04:30 PM\n"
                     "Sunny.\n")
    result = invoke("match", "--config", str(config), str(dump), str(quiet),
                    env={"DESK_SECRET": "whsec_x"})
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(x["file"], x["watchlist"]) for x in lines] == [(str(dump), "japan-energy"),
                                                           (str(dump), "rice")]
    assert lines[0]["entities"] == ["Japan", "LNG"]
    assert {"entity", "term", "field", "start", "end", "snippet"} <= set(lines[0]["matches"][0])


def test_check_prints_a_summary_with_secrets_hidden(config):
    result = invoke("check", "--config", str(config), env={"DESK_SECRET": DESK_SECRET})
    assert result.exit_code == 0, result.output
    assert "feeds: 1" in result.output and "watchlists: 2" in result.output
    assert "terms:" in result.output
    for secret in (DESK_SECRET, DESK_SECRET.removeprefix("whsec_"), "pw", "token=abc", "user:"):
        assert secret not in result.output


def test_check_exits_1_with_the_errors(config):
    (config / "bad.yaml").write_text("feeds:\n  - url: ftp://x\n")
    result = CliRunner().invoke(main, ["check", "--config", str(config)], env={})
    assert result.exit_code == 1
    assert "DESK_SECRET is not set" in result.output and "feeds[0].url" in result.output


@pytest.mark.integration
def test_run_once_status_and_alerts(tmp_path, config, redis_url, http_server):
    http_server.routes["/a"] = (200, {"Content-Type": "application/rss+xml"},
                                rss([item(1, "Japan LNG imports jump", LNG_STORY),
                                     item(2, "Rice harvest to grow", RICE_STORY)]))
    (config / "watchlists.yaml").write_text(CONFIG.replace(
        "https://news.example/world.rss", http_server.url("/a")).replace(
        "https://user:pw@hooks.example.com/newsmon?token=abc", http_server.url("/hook")))
    (config / "more.yaml").write_text("feeds:\n  - url: http://no-such-host.invalid/rss\n")
    http_server.routes["/hook"] = (204, {}, b"")
    env = {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(config), "DESK_SECRET": "whsec_eA==",
           "NEWSMON_DUMP_DIR": str(tmp_path / "dump"), "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"}
    result = invoke("run", "--once", env=env)
    assert result.exit_code == 0  # a failed feed is reported, not fatal
    assert "no-such-host.invalid" in result.output and "2 new items" in result.output

    status = json.loads(invoke("status", "--json", env=env).output)
    world = next(f for f in status["feeds"] if f["name"] == "world")
    assert (world["outcome"], world["http_status"], world["new_items"]) == ("ok", 200, 2)
    broken = next(f for f in status["feeds"] if f["name"] != "world")
    assert broken["failures"] == 1 and "DNS" in broken["error"]
    assert (world["health"], broken["health"]) == ("healthy", "degraded")
    assert broken["failing_since"] is not None and world["stale"] is False
    assert status["totals"] == {"articles": 2, "stories": 2, "duplicates": 0, "alerts": 2}
    table = invoke("status", env=env).output
    assert "world" in table and "NEXT DUE" in table and "HEALTH" in table
    assert "degraded since" in table
    assert status["webhooks"] == [{"name": "desk", "disabled": None}]

    # A receiver answering 410 Gone disables the webhook; status says so.
    from worker.config import load_config
    from worker.deliver import webhook_digest
    from worker.store import Store

    hook = load_config(config, env=env).config.webhooks["desk"]
    store = Store.from_url(redis_url)
    store.disable_webhook(webhook_digest(hook), {"webhook": "desk", "reason": "410 Gone"})
    store.r.close()
    assert json.loads(invoke("status", "--json", env=env).output)["webhooks"] == [
        {"name": "desk", "disabled": "410 Gone"}]
    assert "webhook desk DISABLED: 410 Gone" in invoke("status", env=env).output

    alerts = json.loads(invoke("alerts", "list", "--json", env=env).output)
    assert sorted(a["watchlist"] for a in alerts) == ["japan-energy", "rice"]
    for a in alerts:
        assert {"id", "watchlist", "entities", "created", "state", "article"} <= set(a)
        assert {"id", "title", "url"} <= set(a["article"])
    only = json.loads(invoke("alerts", "list", "--json", "--watchlist", "rice", env=env).output)
    assert [a["watchlist"] for a in only] == ["rice"]
    assert json.loads(invoke("alerts", "list", "--json", "--since", "2999-01-01T00:00:00",
                             env=env).output) == []
    assert len(json.loads(invoke("alerts", "list", "--json", "--since", "1h", env=env).output)) == 2


def test_run_exits_1_on_bad_configuration(config):
    (config / "bad.yaml").write_text("feeds: 3\n")
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(config)],
                                env={"DESK_SECRET": "x"})
    assert result.exit_code == 1 and "bad.yaml: feeds" in result.output


@pytest.mark.integration
def test_run_once_without_redis_url_starts_the_embedded_redis(tmp_path, http_server):
    http_server.routes["/a"] = (200, {"Content-Type": "application/rss+xml"},
                                rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "feeds.yaml").write_text(f"feeds:\n  - url: {http_server.url('/a')}\n"
                                       "    full_text: never\n"
                                       "watchlists:\n  - name: japan\n    entities: [Japan]\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(NEWSMON_CONFIG=str(folder), NEWSMON_DATA_DIR=str(tmp_path / "data"),
               NEWSMON_DUMP_DIR=str(tmp_path / "dump"), NEWSMON_ALLOW_NETWORKS="127.0.0.0/8")
    run = subprocess.run([sys.executable, "-m", "worker", "run", "--once"], env=env,
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    assert "embedded Redis" in run.stderr and "1 new items" in run.stdout
    assert list((tmp_path / "data").glob("appendonly*"))  # persisted under NEWSMON_DATA_DIR
    # The state survived: a second run (a new embedded server on the same data) adds nothing.
    again = subprocess.run([sys.executable, "-m", "worker", "run", "--once"], env=env,
                           capture_output=True, text=True, timeout=90)
    assert "0 new items" in again.stdout
    listed = subprocess.run([sys.executable, "-m", "worker", "alerts", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=90)
    assert [a["watchlist"] for a in json.loads(listed.stdout)] == ["japan"]
