"""newsmon and Celery as subprocesses, the way users run them, for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from worker.store import Keys, close, connect

KEYS = Keys()

CELERY = [sys.executable, "-m", "celery", "-A", "worker.app"]


def wait_until(check: Callable[[], object], timeout: float, what: str,
               explain: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until true; on timeout, fail with ``explain()`` (what was seen instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    seen = f": {explain()}" if explain else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")


class Processes:
    """A config folder, the environment of one test, and the processes it started."""

    def __init__(self, tmp_path: Path, redis_url: str, **env: str):
        """``env``: more settings (NEWSMON_REDIS_MODE, CELERY_BROKER_URL...) of every process."""
        self.tmp = tmp_path
        self.config = tmp_path / "config"
        self.config.mkdir()
        self.redis = connect(redis_url, env.get("NEWSMON_REDIS_MODE", "standalone"),
                             env.get("NEWSMON_REDIS_MASTER"))
        self.env = {**os.environ, **env, "REDIS_URL": redis_url,
                    "NEWSMON_CONFIG": str(self.config),
                    "NEWSMON_DUMP_DIR": str(tmp_path / "dump"),
                    "NEWSMON_DATA_DIR": str(tmp_path / "data"),
                    "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_TICK_SECONDS": "1",
                    "NEWSMON_VISIBILITY_TIMEOUT": "4",
                    # tests read the per-feed lines (debug) in the processes' logs
                    "NEWSMON_LOG_LEVEL": "debug"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"proc{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def newsmon_run(self) -> subprocess.Popen[bytes]:
        return self.start(sys.executable, "-m", "worker", "run", "--concurrency", "4")

    def worker(self, *options: str) -> subprocess.Popen[bytes]:
        """A Celery worker on every queue; by default 8 threads."""
        options = options or ("--pool", "threads", "-c", "8")
        return self.start(*CELERY, "worker", "-Q", "schedule,fetch,process,deliver",
                          "--loglevel", "INFO", *options)

    def beat(self, schedule: str = "beat-schedule") -> subprocess.Popen[bytes]:
        return self.start(*CELERY, "beat", "--schedule", str(self.tmp / schedule))

    def alert_ids(self) -> list[str]:
        return self.redis.zrange(KEYS.by_time, 0, -1)

    def alerts(self) -> list[str]:
        """The watchlists of the alerts recorded so far, sorted."""
        return sorted(self.redis.hget(KEYS.alert(a), "watchlist") for a in self.alert_ids())

    def state(self, alert_id: str) -> str | None:
        return self.redis.hget(KEYS.alert(alert_id), "state")

    def alert_states(self) -> str:
        """How many alerts are in each state, the outbox's counts and the error lines logged:
        what a test prints when its alerts never arrive."""
        states = Counter(self.state(a) for a in self.alert_ids())
        outbox = {"due": self.redis.zcount(KEYS.outbox, "-inf", time.time()),
                  "waiting": self.redis.zcount(KEYS.outbox, f"({time.time()}", "+inf"),
                  "dead": self.redis.zcard(KEYS.dead)}
        errors = [line for line in self.logs().splitlines()
                  if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]
        return (f"{len(self.alert_ids())} alerts {dict(states)}, outbox {outbox}, "
                f"{len(errors)} error lines, last: {errors[-8:]}")

    def stats(self) -> dict[str, str]:
        return {**self.redis.hgetall(KEYS.idx_stats), **self.redis.hgetall(KEYS.out_stats)}

    def logs(self) -> str:
        return "\n".join((self.tmp / f"proc{i}.log").read_text(errors="replace")
                         for i in range(len(self.procs)))

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        close(self.redis)
