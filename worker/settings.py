"""Process settings from the environment (the YAML folder is ``config``; this is everything else)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigError


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment: {name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"environment: {name}: expected a positive number, got {raw!r}")
    return value


REDIS_MODES = ("standalone", "cluster", "sentinel")


@dataclass(frozen=True)
class Settings:
    """Everything a process reads from its environment, typed, read once."""

    redis_url: str | None            # the state store; None: the embedded Redis under data_dir
    redis_mode: str                  # standalone | cluster | sentinel (how redis_url is read)
    redis_master: str | None         # sentinel mode: the service name the sentinels watch
    broker_url: str | None           # CELERY_BROKER_URL; None: the state Redis is the broker too
    broker_queue_type: str           # RabbitMQ queues: quorum | classic
    data_dir: Path
    dump_dir: Path
    config_dir: Path
    allow_networks: tuple[str, ...]
    tick_seconds: float              # how often beat hands out due feeds
    retention_days: float            # how long story identity keys live
    visibility_timeout: float        # seconds before an unacknowledged task is delivered again
    metrics_port: int | None
    log_format: str                  # text | json

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        allow = tuple(c.strip() for c in env.get("NEWSMON_ALLOW_NETWORKS", "").split(",")
                      if c.strip())
        port = env.get("NEWSMON_METRICS_PORT", "").strip()
        log_format = env.get("NEWSMON_LOG_FORMAT", "text").strip() or "text"
        if log_format not in ("text", "json"):
            raise ConfigError(f"environment: NEWSMON_LOG_FORMAT: expected text or json, "
                              f"got {log_format!r}")
        mode = env.get("NEWSMON_REDIS_MODE", "").strip().lower() or "standalone"
        if mode not in REDIS_MODES:
            raise ConfigError(f"environment: NEWSMON_REDIS_MODE: expected one of "
                              f"{', '.join(REDIS_MODES)}, got {mode!r}")
        master = env.get("NEWSMON_REDIS_MASTER", "").strip() or None
        redis_url = env.get("REDIS_URL") or None
        if mode != "standalone" and not redis_url:
            raise ConfigError(f"environment: NEWSMON_REDIS_MODE={mode} needs REDIS_URL "
                              "(the embedded Redis is standalone)")
        if mode == "sentinel" and not master:
            raise ConfigError("environment: NEWSMON_REDIS_MODE=sentinel needs "
                              "NEWSMON_REDIS_MASTER, the service name the sentinels watch")
        queue_type = env.get("NEWSMON_BROKER_QUEUE_TYPE", "").strip().lower() or "quorum"
        if queue_type not in ("quorum", "classic"):
            raise ConfigError(f"environment: NEWSMON_BROKER_QUEUE_TYPE: expected quorum or "
                              f"classic, got {queue_type!r}")
        if port and not port.isdigit():
            raise ConfigError(f"environment: NEWSMON_METRICS_PORT: expected a port number, "
                              f"got {port!r}")
        return cls(
            redis_url=redis_url,
            redis_mode=mode,
            redis_master=master,
            broker_url=env.get("CELERY_BROKER_URL", "").strip() or None,
            broker_queue_type=queue_type,
            data_dir=Path(env.get("NEWSMON_DATA_DIR") or ".newsmon"),
            dump_dir=Path(env.get("NEWSMON_DUMP_DIR") or "dump"),
            config_dir=Path(env.get("NEWSMON_CONFIG") or "schedules"),
            allow_networks=allow,
            tick_seconds=_float(env, "NEWSMON_TICK_SECONDS", 5.0),
            retention_days=_float(env, "NEWSMON_RETENTION_DAYS", 30.0),
            visibility_timeout=_float(env, "NEWSMON_VISIBILITY_TIMEOUT", 1800.0),
            metrics_port=int(port) if port else None,
            log_format=log_format,
        )
