"""The embedded Redis has an owner: one ``newsmon run`` per data folder, children that die with
it even after SIGKILL, and a new owner that ends what a crashed one left."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.feeds import LNG_STORY, item, rss
from tests.processes import wait_until
from worker.embedded import LOCK_FILE, PORT_FILE, DataDirLock, owner, running_url
from worker.errors import DataDirBusy

RSS = {"Content-Type": "application/rss+xml"}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _group(pgid: int) -> list[int]:
    """Live members of a process group."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


@pytest.fixture
def instance(tmp_path, http_server):
    """The environment of a newsmon run with an embedded Redis (no REDIS_URL), a config file."""
    http_server.routes["/a"] = (200, RSS, rss([item(1, "Japan LNG imports jump", LNG_STORY)]))
    config = tmp_path / "newsmon.yaml"  # one YAML file, not a folder
    config.write_text(f"feeds:\n  - url: {http_server.url('/a')}\n    name: wire\n"
                      "    full_text: never\n    every: 2s\n"
                      "watchlists:\n  - name: japan\n    entities: [Japan]\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(NEWSMON_ALLOW_NETWORKS="127.0.0.0/8", NEWSMON_TICK_SECONDS="1",
               NEWSMON_DUMP_DIR=str(tmp_path / "dump"))
    data = Path(env["XDG_STATE_HOME"]) / "newsmon"  # the per-user default (conftest sets it)
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, cwd: Path = tmp_path) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"run{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "worker", *args], env=env, cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        procs.append(proc)
        return proc

    yield config, env, data, start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _newsmon(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.integration
def test_a_second_run_refuses_and_views_from_anywhere_see_the_first(instance, tmp_path):
    config, env, data, start = instance
    first = start("run", "--config", str(config))
    wait_until(lambda: running_url(data), 30, "the embedded Redis of the first run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    for second in (["run", "--config", str(config)], ["run", "--once", "--config", str(config)]):
        refused = _newsmon(env, *second, cwd=elsewhere)
        assert refused.returncode == 4, refused.stderr
        [line] = refused.stderr.splitlines()
        assert f"pid {first.pid}" in line and str(data) in line and "NEWSMON_DATA_DIR" in line

    # No configuration folder here: the views read the running instance's state.
    def listed() -> list[str]:
        done = _newsmon(env, "alerts", "list", "--json", cwd=elsewhere)
        return [a["watchlist"] for a in json.loads(done.stdout)] if done.returncode == 0 else []

    wait_until(lambda: listed() == ["japan"], 30, "the alert, seen from another folder")
    status = json.loads(_newsmon(env, "status", "--json", cwd=elsewhere).stdout)
    # "unchanged" once a later poll got the same bytes again (the feed sends no ETag).
    assert [(f["name"], f["outcome"] in ("ok", "unchanged")) for f in status["feeds"]] == [
        ("wire", True)]
    assert _newsmon(env, "health", "--component", "beat", cwd=elsewhere).returncode == 0
    assert not (elsewhere / ".newsmon").exists() and list(elsewhere.iterdir()) == []
    assert first.poll() is None  # the refused runs changed nothing of the first

    # Calm by default: a start-up line, a line per poll cycle, no Celery banner or chatter.
    wait_until(lambda: "poll cycle: 1 feeds polled, 1 new articles, 1 alerts, 0 failed"
               in (tmp_path / "run0.log").read_text(), 10, "the first poll cycle's line")
    log = (tmp_path / "run0.log").read_text()
    assert "starting: 1 feeds, 1 watchlists, 0 webhooks" in log
    assert "embedded Redis redis://127.0.0.1:" in log and str(data) in log
    assert "celery@" not in log and "[tasks]" not in log and " INFO celery" not in log
    assert "feed=wire outcome=ok" not in log  # per-feed lines are debug


@pytest.mark.integration
def test_every_child_dies_with_a_sigkilled_run_and_the_next_run_starts_clean(instance):
    config, env, data, start = instance
    first = start("run", "--config", str(config))
    from worker.layout import POOLS

    wait_until(lambda: len((owner(data) or {}).get("children", [])) == 1 + len(POOLS), 60,
               "Redis and the worker pools to start")
    groups = owner(data)["children"]  # Redis, then one worker per pool, the schedule one first
    wait_until(lambda: len(_group(groups[1])) >= 2, 30, "the schedule worker's embedded beat")
    children = [pid for g in groups for pid in _group(g)]
    os.kill(first.pid, signal.SIGKILL)  # only newsmon run itself, not its children
    first.wait()
    wait_until(lambda: not any(_alive(p) for p in children), 30,
               f"Redis, worker and beat ({children}) to die with newsmon run")

    again = start("run", "--config", str(config))
    wait_until(lambda: (owner(data) or {}).get("pid") == again.pid and running_url(data), 30,
               "a new run to own the data folder")
    assert again.poll() is None


def test_a_new_owner_ends_only_the_processes_a_crashed_owner_left(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    # A leftover of the crashed owner (working in the data folder, as redis-server does) and
    # an unrelated process in a recorded group (a pid reused since): only the first is ended.
    leftover = subprocess.Popen(["sleep", "60"], cwd=data, process_group=0)
    stranger = subprocess.Popen(["sleep", "60"], cwd=tmp_path, process_group=0)
    (data / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "command": "run",
                                              "children": [leftover.pid, stranger.pid]}))
    (data / PORT_FILE).write_text("1")
    try:
        lock = DataDirLock(data, "run")
        lock.acquire()
        assert leftover.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None
        assert not (data / PORT_FILE).exists()
        assert owner(data)["pid"] == os.getpid()
        lock.release()
        assert owner(data) is None
    finally:
        for proc in (leftover, stranger):
            proc.kill()
            proc.wait()


def test_a_held_data_folder_is_refused_with_the_holder_named(tmp_path):
    held = DataDirLock(tmp_path, "run")
    held.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(DataDirBusy, match=f"in use by newsmon run \\(pid {os.getpid()}"):
            DataDirLock(tmp_path, "view").acquire(wait=5.0)  # never waits for a run
        assert time.monotonic() - started < 1.0
    finally:
        held.release()
    view = DataDirLock(tmp_path, "view")
    view.acquire()
    view.release()


def test_a_view_is_told_where_a_run_with_its_own_redis_keeps_its_state(tmp_path):
    held = DataDirLock(tmp_path, "run", redis="redis://***@db.example:6380/0")
    held.acquire()
    try:
        with pytest.raises(DataDirBusy, match="set REDIS_URL to see it"):
            DataDirLock(tmp_path, "view").acquire()
        with pytest.raises(DataDirBusy, match="stop it first"):
            DataDirLock(tmp_path, "run").acquire()
    finally:
        held.release()


def test_a_port_file_left_by_a_crash_is_not_trusted(tmp_path, redis_server):
    """Another server may have taken the port since: only an owned data folder is served."""
    port = redis_server.rsplit(":", 1)[1]
    (tmp_path / PORT_FILE).write_text(port)  # a Redis answers there, but nobody owns the folder
    assert running_url(tmp_path) is None
    lock = DataDirLock(tmp_path, "run")
    lock.acquire()
    try:
        assert not (tmp_path / PORT_FILE).exists()  # the new owner drops it
    finally:
        lock.release()


def test_a_view_asking_who_owns_the_folder_does_not_make_a_run_refuse(tmp_path):
    """owner() takes a shared lock for a moment; a run starting meanwhile waits for it, even
    when the file still names the run that held the folder before (dead now)."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "command": "run"}))
    probe = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)
    threading.Timer(0.5, os.close, (probe,)).start()
    lock = DataDirLock(tmp_path, "run")
    lock.acquire()
    assert owner(tmp_path)["pid"] == os.getpid()
    lock.release()
