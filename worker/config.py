"""The configuration folder: every ``*.yaml`` file in it merged into one typed, validated document.

Errors name the file, the key path (``watchlists[2].entities[0].aliases``) and what was expected.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import idna
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.errors import ConfigError
from worker.health import DEFAULT_FAILING_AFTER
from worker.query import parse_query

log = logging.getLogger("newsmon.config")
DEFAULT_CONFIG_DIR = "schedules"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"2d"`` (or a number of seconds) to seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 2h or 2d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"expected a duration such as 30s, 5m, 2h or 2d, got {value!r}")
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f]")


def url_problem(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """What is wrong with a URL newsmon will connect to, or None: the scheme, the host (a
    DNS name or an IP address), the port (1-65535), no spaces or control characters."""
    if _CONTROL_OR_SPACE.search(url):
        return "a URL may not contain spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 address
        return "not a valid URL (an IPv6 address must be written [address])"
    if parts.scheme.lower() not in schemes:
        return f"expected an http(s) URL, got scheme {parts.scheme or 'none'!r}"
    try:
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return f"port {parts.netloc.rpartition(':')[2]!r} is not a port number (1-65535)"
    if port == 0:
        return "port 0 is not a port number (1-65535)"
    if not host:
        return "the URL has no host"
    if _HOST_NAME.fullmatch(host):
        return None
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        literal = re.fullmatch(r"\[([^\]]*)\](:[0-9]*)?", hostport)
        return None if literal and _ip_literal(literal.group(1)) else (
            "not a valid URL (an IPv6 address must be written [address] or [address]:port)")
    if _ip_literal(host):
        return None
    try:  # an internationalised name, as the HTTP client will encode it (IDNA 2008)
        ascii_host = idna.encode(host.lower()).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return f"host {host!r} is not a valid host name"
    return None if _HOST_NAME.fullmatch(ascii_host) else f"host {host!r} is not a valid host name"


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an http(s) URL")
    problem = url_problem(value.strip())
    if problem:
        raise ValueError(problem)
    return value.strip()


def _notify_url(value: Any) -> Any:
    """An Apprise URL: a scheme and no spaces or control characters (the scheme itself is
    checked against Apprise by ``newsmon check`` and before every send)."""
    if not isinstance(value, str):
        raise ValueError("expected an Apprise URL such as ntfy://host/topic")
    value = value.strip()
    if not re.match(r"[A-Za-z0-9][A-Za-z0-9+.-]*://", value) or _CONTROL_OR_SPACE.search(value):
        raise ValueError("expected an Apprise URL such as ntfy://host/topic, without spaces")
    return value


def _duration(value: Any, info: ValidationInfo) -> float:
    # In YAML a bare number is ambiguous (``every: 5`` is not 5 minutes): ask for a unit.
    # Python callers (a model_dump validated again) still pass seconds as numbers.
    from_yaml = isinstance(info.context, dict) and info.context.get("yaml")
    if from_yaml and isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"expected a duration with a unit such as 30s, 5m, 2h or 2d, got "
                         f"{value!r} (a bare number would mean seconds: write {value:g}s)")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeedConfig(_Strict):
    url: HttpUrl
    name: str = ""
    every: Duration = 300.0
    timezone: str | None = None
    full_text: Literal["auto", "always", "never"] = "auto"
    failing_after: Duration = DEFAULT_FAILING_AFTER   # failing after failing this long
    stale_after: Duration | None = None               # None: judged from the feed's rhythm
    language: str | None = None                       # lang: in queries; None: detected

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch("[a-z]{2,3}", value.strip().casefold()):
            raise ValueError(f"expected an ISO 639-1 language code such as en or ja, got {value!r}")
        return None if value is None else value.strip().casefold()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone such as Asia/Tokyo, got {value!r}") from None
        return value

    def model_post_init(self, _context: Any) -> None:
        if not self.name:
            object.__setattr__(self, "name", feed_name_from_url(self.url))


def _secret_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class WebhookConfig(_Strict):
    url: Annotated[SecretStr, BeforeValidator(_http_url)]
    # Several secrets sign every delivery while receivers rotate keys.
    secret: Annotated[list[SecretStr], BeforeValidator(_secret_list)] = Field(min_length=1)
    retry: list[Duration] | None = None


class EntityConfig(_Strict):
    name: str = Field(min_length=1)
    aliases: list[Annotated[str, Field(min_length=1)]] = []
    case_sensitive: bool | None = None

    @property
    def terms(self) -> list[str]:
        return [self.name, *self.aliases]


def _entity(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?\s*[smhd]|[smhd])\s*$")


def _rate(value: Any) -> Any:
    """``"20/h"`` or ``"5/10m"`` to ``{"count": 20, "per": "1h"}``; a mapping stays as it is."""
    if not isinstance(value, str):
        return value
    m = _RATE.match(value)
    if not m:
        raise ValueError(f"expected a rate such as 20/h or 5/10m, got {value!r}")
    per = m.group(2).strip()
    return {"count": int(m.group(1)), "per": per if per[0].isdigit() else "1" + per}


class ThrottleConfig(_Strict):
    """At most ``count`` alerts in any ``per`` seconds (a sliding window)."""

    count: int = Field(ge=1)
    per: Duration


class BreakingConfig(_Strict):
    """Fire when ``outlets`` distinct feeds carry a story within ``within`` of its first copy."""

    outlets: int = Field(ge=1)
    within: Duration


class WatchlistConfig(_Strict):
    name: str = Field(min_length=1)
    webhook: str | None = None
    notify: list[Annotated[SecretStr, BeforeValidator(_notify_url)]] = []
    match: Literal["any", "all"] = "any"
    # Without a query, the entities are what fires the watchlist; with one, they give aliases
    # to the query's terms (a term equal to an entity's name matches any of its terms).
    entities: list[Annotated[EntityConfig, BeforeValidator(_entity)]] = []
    query: str | None = None
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    # Alert shaping (docs/shaping.md): each optional.
    digest: Duration | None = None
    throttle: Annotated[ThrottleConfig, BeforeValidator(_rate)] | None = None
    breaking: BreakingConfig | None = None
    updates: bool = False
    min_salience: float = Field(default=0.0, ge=0.0, le=1.0)

    @property
    def shaped(self) -> bool:
        """Whether its alerts wait for a digest or a throttle before they leave."""
        return self.digest is not None or self.throttle is not None

    @field_validator("query")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_query(value)    # QuerySyntaxError is a ValueError: "column 14: expected ..."
        return value

    @model_validator(mode="after")
    def _entities_or_query(self) -> WatchlistConfig:
        if self.query is None and not self.entities:
            raise ValueError("expected entities, a query, or both")
        if self.query is not None and "match" in self.model_fields_set:
            raise ValueError("match applies to entities without a query; with a query, write "
                             "AND or OR in it")
        return self


class Config(_Strict):
    feeds: list[FeedConfig] = []
    webhooks: dict[str, WebhookConfig] = {}
    watchlists: list[WatchlistConfig] = []
    health_webhook: str | None = None
    failing_after: Duration | None = None     # the default of every feed that sets none


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and the files it came from (for reload checks)."""

    config: Config
    files: tuple[str, ...]


def feed_name_from_url(url: str) -> str:
    """A default feed name: the host without ``www.``, plus the path's words."""
    parts = urlsplit(url)
    host = (parts.hostname or "feed").removeprefix("www.")
    path = re.sub(r"[^A-Za-z0-9]+", "-", parts.path).strip("-")
    return f"{host}-{path}" if path else host


def key_path(loc: tuple[Any, ...]) -> str:
    """``('watchlists', 2, 'entities', 0)`` to ``watchlists[2].entities[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith("function-") and part not in ("str", "list[str]"):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _expand_vars(node: Any, loc: tuple[Any, ...], env: dict[str, str], problems: list[str],
                 file: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_vars(v, (*loc, k), env, problems, file) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_vars(v, (*loc, i), env, problems, file) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            if m.group(2) is not None:
                return m.group(2)
            problems.append(f"{file}: {key_path(loc)}: environment variable {m.group(1)} is not set")
            return ""
        return env[m.group(1)]

    return _VAR.sub(sub, node)


# libyaml's loader when PyYAML has it (the wheels do): the pure-Python one took minutes for a
# folder of 100,000 feeds, in every worker process at start and at every change.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_file(path: Path, env: dict[str, str], problems: list[str]) -> Config | None:
    name = str(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"{name}: not readable YAML: {exc}")
        return None
    if raw is None:
        return Config()
    if not isinstance(raw, dict):
        problems.append(f"{name}: expected a mapping with feeds, webhooks and watchlists")
        return None
    before = len(problems)
    raw = _expand_vars(raw, (), env, problems, name)
    try:
        config = Config.model_validate(raw, context={"yaml": True})
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {key_path(err['loc'])}: {msg}")
        return None
    return config if len(problems) == before else None


def config_files(root: Path) -> list[Path]:
    """The YAML files of a configuration: the folder's ``*.yaml``/``*.yml``, or one file."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"{root}: configuration folder not found (looked in {root.absolute()}); "
                          "give --config PATH (a folder of *.yaml files, or one YAML file) "
                          "or set NEWSMON_CONFIG")
    return sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_config(folder: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None) -> LoadedConfig:
    """Read and merge every ``*.yaml`` in the folder (or the one file given); raise ConfigError
    listing every problem."""
    env = dict(os.environ if env is None else env)
    root = Path(folder or env.get("NEWSMON_CONFIG") or DEFAULT_CONFIG_DIR)
    files = config_files(root)
    problems: list[str] = []
    parts = [(str(p), c) for p in files if (c := _load_file(p, env, problems)) is not None]
    if problems:
        raise ConfigError(problems)
    config = _merge(parts, problems)
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(config=config, files=tuple(str(p) for p in files))


def _merge(parts: list[tuple[str, Config]], problems: list[str]) -> Config:
    feeds: list[FeedConfig] = []
    webhooks: dict[str, WebhookConfig] = {}
    watchlists: list[WatchlistConfig] = []
    health: str | None = None
    failing_after: float | None = None
    seen_hooks: dict[str, str] = {}
    seen_lists: dict[str, str] = {}
    seen_feeds: dict[str, str] = {}
    for file, part in parts:
        for i, feed in enumerate(part.feeds):
            if feed.name in seen_feeds:
                problems.append(f"{file}: feeds[{i}].name: feed name {feed.name!r} is already "
                                f"used in {seen_feeds[feed.name]}")
            seen_feeds[feed.name] = file
            feeds.append(feed)
        for key, hook in part.webhooks.items():
            if key in seen_hooks:
                problems.append(f"{file}: webhooks.{key}: webhook {key!r} is already defined in "
                                f"{seen_hooks[key]}")
            seen_hooks[key] = file
            webhooks[key] = hook
        for i, wl in enumerate(part.watchlists):
            if wl.name in seen_lists:
                problems.append(f"{file}: watchlists[{i}].name: duplicate watchlist name "
                                f"{wl.name!r} (also in {seen_lists[wl.name]})")
            seen_lists[wl.name] = file
            watchlists.append(wl)
        if part.health_webhook is not None:
            health = part.health_webhook
        if part.failing_after is not None:
            if failing_after is not None:
                problems.append(f"{file}: failing_after: already set in another file")
            failing_after = part.failing_after
    for file, part in parts:
        for i, wl in enumerate(part.watchlists):
            if wl.webhook is not None and wl.webhook not in webhooks:
                problems.append(f"{file}: watchlists[{i}].webhook: expected the name of a webhook "
                                f"defined under webhooks, got {wl.webhook!r}")
        if part.health_webhook is not None and part.health_webhook not in webhooks:
            problems.append(f"{file}: health_webhook: expected the name of a webhook defined "
                            f"under webhooks, got {part.health_webhook!r}")
    if failing_after is not None:
        feeds = [f if "failing_after" in f.model_fields_set
                 else f.model_copy(update={"failing_after": failing_after}) for f in feeds]
    return Config(feeds=feeds, webhooks=webhooks, watchlists=watchlists, health_webhook=health,
                  failing_after=failing_after)


def files_version(files: tuple[str, ...]) -> tuple[str, float]:
    """A configuration's identity across processes: a digest of its files' names and bytes,
    and its version, the newest modification time among them (when it was written, not when
    a process read it). Secrets from the environment are not part of it."""
    digest = hashlib.sha256()
    newest = 0.0
    for name in sorted(files):
        path = Path(name)
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        newest = max(newest, path.stat().st_mtime)
    return digest.hexdigest()[:16], newest


class ConfigWatcher:
    """The folder's configuration, reloaded when a file changes; an invalid change keeps the
    last good configuration and logs the error (the first load must succeed)."""

    def __init__(self, folder: str | os.PathLike[str], env: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.env = env
        self._signature: tuple[Any, ...] | None = None
        self._good: LoadedConfig | None = None
        self.error: ConfigError | None = None
        self.version: tuple[str, float] = ("", 0.0)  # files_version of the good configuration
        self._loading = threading.Lock()

    def _stat(self) -> tuple[Any, ...]:
        try:
            return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                for p in config_files(self.folder)))
        except (OSError, ConfigError):
            return ()

    def current(self) -> Config:
        signature = self._stat()
        if signature == self._signature and self._good is not None:
            return self._good.config
        # The signature is recorded only once its files are loaded (or rejected): a thread
        # asking meanwhile waits for that load rather than getting the old configuration, and
        # never loads the same files beside it (32 threads loading 100,000 feeds each at once
        # took 9 GB).
        with self._loading:
            if signature != self._signature or self._good is None:
                self._load(signature)
        assert self._good is not None
        return self._good.config

    def _load(self, signature: tuple[Any, ...]) -> None:
        try:
            self._good = load_config(self.folder, self.env)
            self.version = files_version(self._good.files)
            self.error = None
        except ConfigError as exc:
            if self._good is None:
                raise
            log.error("configuration change rejected, keeping the last good one:\n%s", exc)
            self.error = exc
        self._signature = signature
