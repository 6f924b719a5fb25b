"""Process settings from the environment (the YAML folder is ``config``; this is everything else).

Every variable newsmon reads is listed in ``KNOWN_VARIABLES``; a bad value raises a ConfigError
that names the variable, what was expected and what was found.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ConfigError

ALLOW_NETWORKS_ENV = "NEWSMON_ALLOW_NETWORKS"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Every NEWSMON_ variable newsmon reads (check flags any other one as a likely typo).
KNOWN_VARIABLES = (
    "NEWSMON_CONFIG", "NEWSMON_DATA_DIR", "NEWSMON_DUMP_DIR", ALLOW_NETWORKS_ENV,
    "NEWSMON_TICK_SECONDS", "NEWSMON_RETENTION_DAYS", "NEWSMON_ALERT_RETENTION_DAYS",
    "NEWSMON_VISIBILITY_TIMEOUT",
    "NEWSMON_METRICS_PORT", "NEWSMON_LOG_FORMAT", "NEWSMON_LOG_LEVEL",
)


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    """The per-user data folder: ``$XDG_STATE_HOME/newsmon``, else ``~/.local/state/newsmon``,
    so every command finds the same instance whatever folder it runs in."""
    env = dict(os.environ if env is None else env)
    state = env.get("XDG_STATE_HOME", "").strip()
    if state and Path(state).is_absolute():  # the XDG spec: a relative value is ignored
        return Path(state) / "newsmon"
    home = env.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".local" / "state" / "newsmon"


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"environment: {name}: expected a number, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"environment: {name}: expected a positive number, got {raw!r}")
    return value


def _networks(env: dict[str, str]) -> tuple[str, ...]:
    """NEWSMON_ALLOW_NETWORKS: comma-separated CIDRs (a bare address is one host)."""
    cidrs = tuple(c.strip() for c in env.get(ALLOW_NETWORKS_ENV, "").split(",") if c.strip())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f"; did you mean {ipaddress.ip_network(cidr, strict=False)}?"
            raise ConfigError(
                f"environment: {ALLOW_NETWORKS_ENV}: expected comma-separated CIDR networks such "
                f"as 127.0.0.0/8,10.0.0.0/8, got {cidr!r}{hint}") from None
    return cidrs


def _port(env: dict[str, str]) -> int | None:
    raw = env.get("NEWSMON_METRICS_PORT", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"environment: NEWSMON_METRICS_PORT: expected a port number "
                          f"(1-65535), got {raw!r}")
    return int(raw)


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"environment: {name}: expected one of {', '.join(choices)}, "
                          f"got {env[name]!r}")
    return value


def unknown_variables(env: dict[str, str], referenced: frozenset[str] = frozenset()) -> list[str]:
    """NEWSMON_ variables that newsmon does not read (a typo, most likely), unless the
    configuration refers to them (``${NEWSMON_DESK_SECRET}``)."""
    return sorted(name for name in env if name.startswith("NEWSMON_")
                  and name not in KNOWN_VARIABLES and name not in referenced)


@dataclass(frozen=True)
class Settings:
    """Everything a process reads from its environment, typed, read once."""

    redis_url: str | None            # None: start the embedded Redis under data_dir
    data_dir: Path
    dump_dir: Path
    config_dir: Path                 # a folder of *.yaml files, or one YAML file
    allow_networks: tuple[str, ...]
    tick_seconds: float              # how often beat hands out due feeds
    retention_days: float            # how long story identity keys live
    alert_retention_days: float      # how long finished alerts are kept after their last attempt
    visibility_timeout: float        # seconds before an unacknowledged task is delivered again
    metrics_port: int | None
    log_format: str                  # text | json
    log_level: str = "info"          # newsmon's own loggers; libraries log warnings only
    config_given: bool = True        # False: config_dir is the default ./schedules

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        redis_url = env.get("REDIS_URL", "").strip()
        if redis_url and "://" not in redis_url:
            raise ConfigError(f"environment: REDIS_URL: expected a URL such as "
                              f"redis://host:port/0, got {redis_url!r}")
        return cls(
            redis_url=redis_url or None,
            data_dir=Path(env.get("NEWSMON_DATA_DIR") or default_data_dir(env)).expanduser(),
            dump_dir=Path(env.get("NEWSMON_DUMP_DIR") or "dump").expanduser(),
            config_dir=Path(env.get("NEWSMON_CONFIG") or "schedules").expanduser(),
            allow_networks=_networks(env),
            tick_seconds=_float(env, "NEWSMON_TICK_SECONDS", 5.0),
            retention_days=_float(env, "NEWSMON_RETENTION_DAYS", 30.0),
            alert_retention_days=_float(env, "NEWSMON_ALERT_RETENTION_DAYS", 30.0),
            visibility_timeout=_float(env, "NEWSMON_VISIBILITY_TIMEOUT", 1800.0),
            metrics_port=_port(env),
            log_format=_choice(env, "NEWSMON_LOG_FORMAT", ("text", "json"), "text"),
            log_level=_choice(env, "NEWSMON_LOG_LEVEL", LOG_LEVELS, "info"),
            config_given=bool(env.get("NEWSMON_CONFIG")),
        )
