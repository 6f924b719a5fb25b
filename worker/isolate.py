"""A hard deadline for CPU-bound steps on untrusted bytes (parsing a feed) where Celery's time
limits do not apply: the thread pool of the fetch worker and ``newsmon run --once``.

The step runs in a child process (started by a fork server, so never forked from a process
full of threads); a child past its deadline is killed and replaced, and the caller gets
``StepTimeout``. The other calls go on in their own children."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from worker.errors import NewsmonError

T = TypeVar("T")
CALLS_PER_CHILD = 1000  # a child is replaced after this many calls (memory parsers leave)


class StepTimeout(NewsmonError):
    """A step ran past its deadline and its child process was killed."""


def _serve(conn: Connection) -> None:
    """A child's loop: run each (function, args) it is sent and send back the outcome."""
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:  # sent back and raised in the caller, as if run there
            outcome = (False, exc)
        try:
            conn.send(outcome)
        except Exception as exc:  # an outcome that does not pickle
            conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


class _Child:
    def __init__(self, ctx: Any):
        self.conn, theirs = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(theirs,), daemon=True)
        self.process.start()
        theirs.close()
        self.calls = 0

    def stop(self, kill: bool = False) -> None:
        self.conn.close()
        if kill:
            self.process.kill()
        self.process.join(timeout=5)


class Isolated:
    """Up to ``size`` steps at a time, each in a child process with a deadline. Thread-safe."""

    def __init__(self, size: int, preload: tuple[str, ...] = ("worker.parse",)):
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(preload))  # children start with parsers imported
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[_Child] = []
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any, deadline: float) -> T:
        """``fn(*args)`` in a child; StepTimeout if it takes more than ``deadline`` seconds.
        ``fn`` must be importable by name (a module-level function)."""
        with self._slots:
            child = self._take()
            child.conn.send((fn, args))
            if not child.conn.poll(deadline):
                child.stop(kill=True)
                raise StepTimeout(f"took longer than {deadline:g} s and was stopped")
            try:
                ok, value = child.conn.recv()
            except EOFError:  # the child died (a crash in a C extension, out of memory)
                child.stop(kill=True)
                raise StepTimeout("stopped: its process died") from None
            self._give_back(child)
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.stop()

    def _take(self) -> _Child:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Child(self._ctx)

    def _give_back(self, child: _Child) -> None:
        child.calls += 1
        if child.calls >= CALLS_PER_CHILD or not child.process.is_alive():
            child.stop()
            return
        with self._lock:
            self._idle.append(child)
