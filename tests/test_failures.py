"""Every command against every expected failure: one line naming what is wrong and what to do,
the documented exit code (worker/failures.py), never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main

SECRET = "whsec_c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz"
COMMANDS = {
    "check": ["check"],
    "run --once": ["run", "--once", "--timeout", "1"],
    "status": ["status"],
    "alerts list": ["alerts", "list"],
    "alerts show": ["alerts", "show", "alert_nosuch"],
    "alerts replay": ["alerts", "replay", "--dead"],
    "webhook list": ["webhook", "list"],
    "webhook test": ["webhook", "test", "desk"],
    "match": ["match", "{dump}"],
    "normalize": ["normalize", "{feed}", "--out", "{out}", "--config", "{config}"],
    "health": ["health", "--component", "beat"],
    "backtest": ["backtest", "{out}"],
}
# failure: (exit code, words the line must hold, commands it must stop)
FAILURES = {
    "bad setting": (1, "NEWSMON_ALLOW_NETWORKS", set(COMMANDS)),
    "Redis unreachable": (3, "Redis", {"run --once", "status", "alerts list", "alerts show",
                                       "alerts replay", "webhook list"}),
    "configuration error": (1, "bad.yaml", {"check", "run --once", "status", "webhook list",
                                            "webhook test", "match", "normalize", "backtest"}),
    "missing folder": (1, "configuration folder not found", {
        "check", "run --once", "status", "webhook list", "webhook test", "match", "normalize",
        "backtest"}),
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def world(tmp_path, redis_url):
    config = tmp_path / "config"
    config.mkdir()
    hook = f"http://127.0.0.1:{_closed_port()}/hook"
    (config / "a.yaml").write_text(
        f"feeds:\n  - url: http://127.0.0.1:{_closed_port()}/rss\n    name: wire\n"
        f"webhooks:\n  desk:\n    url: {hook}\n    secret: {SECRET}\n"
        "watchlists:\n  - name: japan\n    webhook: desk\n    entities: [Japan]\n")
    dump = tmp_path / "a.txt"
    dump.write_text(" date 2025-02-06 Japan\nStaff Published February 06, 2025 | 04:30 PM\nx\n")
    paths = {"dump": str(dump), "feed": str(Path(__file__).parent / "data" / "seed.xml"),
             "out": str(tmp_path / "out"), "config": str(config)}
    env = {"REDIS_URL": redis_url, "NEWSMON_CONFIG": str(config),
           "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_DUMP_DIR": str(tmp_path / "dump")}
    return config, paths, env


def _break(failure: str, config: Path, env: dict[str, str | None]) -> None:
    if failure == "bad setting":
        env["NEWSMON_ALLOW_NETWORKS"] = "localhost"
    elif failure == "Redis unreachable":
        env["REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
    elif failure == "configuration error":
        (config / "bad.yaml").write_text("feeds:\n  - url: https://x.example/rss\n    every: 5\n")
    else:
        missing = config.parent / "no-such-folder"
        env["NEWSMON_CONFIG"] = str(missing)
        config.rename(config.parent / "moved")  # --config of normalize names it too


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reports_every_failure_in_one_line(world, command, failure):
    config, paths, env = world
    code, words, stopped = FAILURES[failure]
    _break(failure, config, env)
    args = [a.format(**paths) for a in COMMANDS[command]]
    result = CliRunner().invoke(main, args, env=env)
    # CliRunner keeps an uncaught exception (a traceback on a terminal) in result.exception
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    if command not in stopped:
        return
    assert result.exit_code == code, (result.exit_code, result.output)
    said = [line for line in result.output.splitlines()
            if line.startswith(("newsmon: ", "unhealthy: "))]
    assert len(said) == 1 and words in said[0], result.output  # one line names the mistake


def test_a_bad_setting_stops_run_with_one_line_in_a_real_process(tmp_path):
    """As a user runs it: no traceback on the terminal, exit 1, the variable named."""
    config = tmp_path / "feeds.yaml"
    config.write_text("feeds:\n  - url: https://x.example/rss\n")
    for bad in ({"NEWSMON_ALLOW_NETWORKS": "localhost"}, {"NEWSMON_TICK_SECONDS": "soon"},
                {"NEWSMON_METRICS_PORT": "99999"}, {"NEWSMON_LOG_LEVEL": "loud"}):
        done = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **bad},
                              capture_output=True, text=True, timeout=60)
        [name] = bad
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and name in done.stderr, done.stderr


def test_the_service_does_not_start_against_an_unreachable_redis(world):
    config, paths, env = world
    env["REDIS_URL"] = f"redis://127.0.0.1:{_closed_port()}/0"
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 3, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("newsmon: ")]
    assert "Redis cannot be reached" in line and "REDIS_URL" in line


def test_a_celery_worker_started_by_hand_reports_a_bad_setting_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", "worker"],
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "NEWSMON_ALLOW_NETWORKS": "localhost"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "newsmon: invalid setting: NEWSMON_ALLOW_NETWORKS: expected comma-separated CIDR "
        "networks such as 127.0.0.0/8,10.0.0.0/8, got 'localhost'"]
