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


@dataclass(frozen=True)
class Settings:
    """Everything a process reads from its environment, typed, read once."""

    redis_url: str | None            # None: start the embedded Redis under data_dir
    data_dir: Path
    dump_dir: Path
    config_dir: Path
    allow_networks: tuple[str, ...]
    tick_seconds: float              # how often beat hands out due feeds
    retention_days: float            # how long story identity keys live
    alert_retention_days: float      # how long finished alerts are kept after their last attempt
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
        if port and not port.isdigit():
            raise ConfigError(f"environment: NEWSMON_METRICS_PORT: expected a port number, "
                              f"got {port!r}")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            data_dir=Path(env.get("NEWSMON_DATA_DIR") or ".newsmon"),
            dump_dir=Path(env.get("NEWSMON_DUMP_DIR") or "dump"),
            config_dir=Path(env.get("NEWSMON_CONFIG") or "schedules"),
            allow_networks=allow,
            tick_seconds=_float(env, "NEWSMON_TICK_SECONDS", 5.0),
            retention_days=_float(env, "NEWSMON_RETENTION_DAYS", 30.0),
            alert_retention_days=_float(env, "NEWSMON_ALERT_RETENTION_DAYS", 30.0),
            visibility_timeout=_float(env, "NEWSMON_VISIBILITY_TIMEOUT", 1800.0),
            metrics_port=int(port) if port else None,
            log_format=log_format,
        )
