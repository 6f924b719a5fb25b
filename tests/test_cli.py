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
    # It ends with a table of the feeds, after one start-up line (credentials hidden).
    table = result.stdout.splitlines()
    assert table[0].split() == ["FEED", "OUTCOME", "HTTP", "NEW", "ERROR"]
    rows = {line.split()[0]: line for line in table[1:3]}
    assert rows["world"].split()[1:4] == ["ok", "200", "2"]
    assert "failed" in rows["no-such-host.invalid-rss"] and "DNS" in rows["no-such-host.invalid-rss"]
    [start] = [line for line in result.stderr.splitlines() if " starting: " in line]
    assert "2 feeds, 2 watchlists, 1 webhooks" in start and str(tmp_path / "dump") in start
    assert f"Redis {redis_url}" in start

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
    quiet = invoke("run", "--once", "--log-level", "warning", env=env)
    assert quiet.exit_code == 0 and " starting: " not in quiet.stderr


def test_the_start_up_line_says_what_runs_with_credentials_hidden(config, tmp_path):
    from worker.cli import startup_summary
    from worker.config import load_config
    from worker.settings import Settings

    cfg = load_config(config, env={"DESK_SECRET": DESK_SECRET}).config
    settings = Settings.from_env({"NEWSMON_CONFIG": str(config),
                                  "NEWSMON_DUMP_DIR": str(tmp_path / "d"),
                                  "NEWSMON_DATA_DIR": str(tmp_path / "s")})
    line = startup_summary(settings, cfg, "redis://:hunter2@db.example:6380/2", embedded=False)
    assert "1 feeds, 2 watchlists, 1 webhooks (desk https://hooks.example.com)" in line
    assert f"dumps to {tmp_path / 'd'}" in line and "Redis redis://***@db.example:6380/2" in line
    for secret in ("hunter2", "pw", "token=abc", DESK_SECRET):
        assert secret not in line


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


def test_check_refuses_what_cannot_work_and_says_what_it_checked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("check", "--config", str(empty), env={"NEWSMON_CONFG": "typo"})
    assert result.exit_code == 1
    assert "newsmon: feeds: no feeds are configured" in result.stderr
    assert "newsmon: environment: NEWSMON_CONFG is not a newsmon setting" in result.stderr
    assert "checked: " in result.stdout and "webhook secrets" in result.stdout
    (empty / "a.yaml").write_text(CONFIG)
    bad_secret = invoke("check", "--config", str(empty), env={"DESK_SECRET": "whsec_eA=="})
    assert bad_secret.exit_code == 1
    [line] = bad_secret.stderr.splitlines()
    assert line.startswith("newsmon: webhooks.desk.secret: the key is 1 bytes")
    assert invoke("check", "--config", str(empty / "a.yaml"),
                  env={"DESK_SECRET": DESK_SECRET}).exit_code == 0  # one file will do


def test_status_without_a_configuration_shows_the_state(tmp_path, redis_url, monkeypatch):
    from worker.store import Store

    store = Store.from_url(redis_url)
    store.sync_feeds(["wire", "desk"], 1.0)
    store.r.close()
    monkeypatch.chdir(tmp_path)  # no ./schedules here
    result = invoke("status", "--json", env={"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert [(f["name"], f["url"]) for f in json.loads(result.stdout)["feeds"]] == [
        ("desk", "-"), ("wire", "-")]


def test_views_of_a_data_folder_where_nothing_ran_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["status"], ["alerts", "list"]):
        result = invoke(*args)
        assert result.exit_code == 5
        assert result.stderr.startswith("newsmon: no newsmon state in ")
    assert list(tmp_path.iterdir()) == []  # nothing created where the user stands


def test_bench_names_its_parts(tmp_path):
    for args in (["bench", "--only", "nosuch"], ["bench", "nosuch"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "'nosuch' is not one of 'parse'" in result.output
    ran = CliRunner().invoke(main, ["bench", "--quick", "match"])
    assert ran.exit_code == 0 and "terms" in ran.output and "dedupe" not in ran.output
