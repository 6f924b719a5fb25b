"""How the command line reports an expected failure: one line saying what is wrong and what to
do, and an exit code per kind of failure (documented in docs/operations.md).

    0  done
    1  the configuration or a setting is invalid, or the command found a problem it reports
       (check found problems, health is unhealthy, an input could not be read)
    2  the command line itself is wrong (click's usage errors)
    3  Redis cannot be reached (try again once it runs, or fix REDIS_URL)
    4  the data folder is in use by another newsmon process
    5  the service cannot start here (no redis-server, data folder not writable)

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import redis.exceptions

from worker.errors import ConfigError, DataDirBusy, ServiceError

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_REDIS = 3
EXIT_BUSY = 4
EXIT_SERVICE = 5


def _broker_errors() -> tuple[type[BaseException], ...]:
    try:  # kombu wraps the broker's connection errors (Celery's control commands)
        from kombu.exceptions import OperationalError
    except ImportError:  # pragma: no cover - kombu comes with celery
        return ()
    return (OperationalError,)


def describe(exc: BaseException) -> tuple[list[str], int] | None:
    """The lines to print and the exit code for an expected failure; None for a bug."""
    if isinstance(exc, ConfigError):
        return [f"invalid configuration: {p}" if not p.startswith("environment:") else
                f"invalid setting: {p.removeprefix('environment: ')}" for p in exc.problems], \
            EXIT_PROBLEM
    if isinstance(exc, DataDirBusy):
        return [str(exc)], EXIT_BUSY
    if isinstance(exc, ServiceError):
        return [str(exc)], EXIT_SERVICE
    if isinstance(exc, redis.exceptions.AuthenticationError):  # before ConnectionError, its base
        return [f"Redis refused the credentials ({exc}): check the user and password in "
                "REDIS_URL"], EXIT_REDIS
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        *_broker_errors())):
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return [f"Redis cannot be reached ({reason}): start it, or point REDIS_URL at a "
                "running Redis (unset it to use the embedded one)"], EXIT_REDIS
    if isinstance(exc, OSError) and exc.filename:
        return [f"{exc.filename}: {exc.strerror or exc}"], EXIT_PROBLEM
    return None
