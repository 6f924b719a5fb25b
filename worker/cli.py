"""The ``newsmon`` command line: offline tools (normalize, match, backtest, check), the service
(run), and views of its state (status, alerts)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click

from worker import __version__, embedded, failures
from worker.config import Config, FeedConfig, load_config
from worker.errors import (
    BadEntryError,
    ConfigError,
    DumpFormatError,
    FetchError,
    NotAFeedError,
    ServiceError,
)
from worker.redact import redact_std_streams, redact_url, remember, url_outline
from worker.settings import LOG_LEVELS, Settings

log = logging.getLogger("newsmon")
SHUTDOWN_GRACE = 30.0


def _setup_logging(settings: Settings) -> None:
    from worker.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


def _settings(config: str | None = None, log_level: str | None = None) -> Settings:
    env = dict(os.environ)
    if config:
        env["NEWSMON_CONFIG"] = config
    if log_level:
        env["NEWSMON_LOG_LEVEL"] = log_level
    return Settings.from_env(env)


def _load(settings: Settings) -> Config:
    """The configuration; its secrets are masked in all output from now on."""
    return _remembered(load_config(settings.config_dir).config)


def _remembered(config: Config) -> Config:
    """Mask the configuration's credentials in everything this process prints or logs."""
    from worker.deliver import config_secrets

    remember(config_secrets(config))
    return config


@contextlib.contextmanager
def _redis(settings: Settings) -> Iterator[str]:
    """REDIS_URL, else the embedded Redis serving the data dir; if none runs, one started here
    on the stopped instance's state (holding the data dir's lock meanwhile)."""
    url = settings.redis_url or embedded.running_url(settings.data_dir)
    if url:
        yield url
        return
    no_state = ServiceError(f"no newsmon state in {settings.data_dir}: nothing has run with "
                            "this data folder; start `newsmon run`, or set NEWSMON_DATA_DIR or "
                            "REDIS_URL to the instance's")
    if not settings.data_dir.is_dir():
        raise no_state
    with embedded.own_data_dir(settings.data_dir, "view", wait=10.0):
        if not embedded.has_state(settings.data_dir):
            raise no_state
        server = embedded.EmbeddedRedis(settings.data_dir)
        try:
            yield server.start()
        finally:
            server.stop()


def _broker(settings: Settings, state_url: str) -> Any:
    """The broker in use: CELERY_BROKER_URL, else the state Redis."""
    from worker.broker import resolve

    try:
        return resolve(settings, state_url)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _Main(click.Group):
    """The command group: an expected failure in any command is one line and an exit code
    (worker/failures.py), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            said = failures.describe(exc)
            if said is None:
                raise
            lines, code = said
            for line in lines:
                click.echo(f"newsmon: {line}", err=True)
            raise click.exceptions.Exit(code) from None


@click.group(cls=_Main)
@click.version_option(__version__, prog_name="newsmon")
def main() -> None:
    """newsmon: monitor news feeds, deduplicate stories, alert on watchlists."""
    redact_std_streams()  # no credential in anything a command prints


# -- offline tools ----------------------------------------------------------------------------
@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder the dump files are written under.")
@click.option("--full-text", type=click.Choice(["auto", "always", "never"]), default=None,
              help="Fetch article pages (default: the feed's setting, else auto).")
@click.option("--config", type=click.Path(), default=None,
              help="Configuration folder: feed settings (timezone, full_text) by URL.")
def normalize(sources: tuple[str, ...], out_dir: str, full_text: str | None,
              config: str | None) -> None:
    """Turn feed files or http(s) URLs into dump files; print the paths written."""
    from worker.dump import local_sequence, write_dump
    from worker.fetch import Fetcher
    from worker.normalize import html_to_paragraphs, needs_full_text, normalize_entry
    from worker.parse import parse_feed
    from worker.pipeline import full_text as fetch_full_text

    settings = _settings(config)
    _setup_logging(settings)
    configured = {f.url: f for f in _load(settings).feeds} if config else {}
    fetcher = Fetcher(settings.allow_networks)
    next_seq = local_sequence(Path(out_dir))
    failed = False
    for source in sources:
        feed = configured.get(source) or _feed_for(source)
        if full_text:
            feed = feed.model_copy(update={"full_text": full_text})
        try:
            if source.startswith(("http://", "https://")):
                result = fetcher.get(source)
                data, content_type = result.content, result.content_type
            else:
                data, content_type = Path(source).read_bytes(), None
            parsed = parse_feed(data, content_type, url=str(feed.url), timezone=feed.timezone)
        except (OSError, FetchError, NotAFeedError) as exc:
            click.echo(f"{source}: {exc}", err=True)
            failed = True
            continue
        now = datetime.now(UTC)
        for entry in parsed.entries:
            page = None
            if needs_full_text(feed.full_text, html_to_paragraphs(entry.content_html)):
                page = fetch_full_text(feed, entry, fetcher)
            try:
                article = normalize_entry(entry, parsed, feed_url=feed.url, first_seen=now,
                                          feed_name=feed.name, timezone=feed.timezone, page=page)
            except BadEntryError as exc:  # skipped; the feed's other entries go on
                click.echo(f"{source}: skipped an entry: {exc}", err=True)
                continue
            click.echo(str(write_dump(Path(out_dir), article, next_seq)))
    fetcher.close()
    sys.exit(1 if failed else 0)


def _feed_for(source: str) -> FeedConfig:
    """Settings for a source given on the command line; a file's URL is its absolute path."""
    if source.startswith(("http://", "https://")):
        return FeedConfig(url=source)
    path = Path(source).resolve()
    # A file:// URL is valid for offline use only; model_construct skips the http(s) check.
    return FeedConfig.model_construct(url=path.as_uri(), name=path.stem, every=300.0,
                                      timezone=None, full_text="auto")


@main.command()
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.argument("files", nargs=-1, required=True, type=click.Path())
def match(config: str | None, files: tuple[str, ...]) -> None:
    """Print a JSON line for every (dump file, watchlist) that fires."""
    from worker.dump import parse_dump
    from worker.match import compile_watchlists

    matcher = compile_watchlists(_load(_settings(config)).watchlists)
    failed = False
    for file in files:
        try:
            dump = parse_dump(Path(file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, DumpFormatError) as exc:
            click.echo(f"{file}: {exc}", err=True)
            failed = True
            continue
        for hit in matcher.match(dump.title, "\n".join(dump.paragraphs)):
            click.echo(_hit_line(file, hit))
    sys.exit(1 if failed else 0)


def _hit_line(file: str, hit: Any, **extra: str) -> str:
    """The JSON line of ``newsmon match`` (and ``backtest``) for one (file, watchlist)."""
    return json.dumps({
        **extra, "file": file, "watchlist": hit.watchlist, "entities": list(hit.entities),
        "matches": [{"entity": m.entity, "term": m.term, "field": m.field,
                     "start": m.start, "end": m.end, "snippet": m.snippet}
                    for m in hit.matches]}, ensure_ascii=False)


@main.command()
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.argument("dump_dir", required=False, type=click.Path(file_okay=False))
@click.option("--since", default=None,
              help="Only dumps dated (line 1) on or after the day of this ISO time or duration "
                   "back from now (7d, 2h).")
@click.option("--watchlist", "names", multiple=True, help="Only this watchlist (repeatable).")
@click.option("--diff", "other", type=click.Path(), default=None,
              help="Another configuration folder: print what it would add and remove.")
def backtest(config: str | None, dump_dir: str | None, since: str | None,
             names: tuple[str, ...], other: str | None) -> None:
    """Run the watchlists over dump files already written (default NEWSMON_DUMP_DIR) and send
    nothing: a JSON line per (file, watchlist) that fires, then a summary on stderr."""
    from worker.backtest import Story, Summary, changes, dump_files, fire, scan
    from worker.match import compile_watchlists

    settings = _settings(config)
    mine = _load(settings).watchlists
    theirs = _load(_settings(other)).watchlists if other else []
    only = frozenset(names) if names else None
    unknown = sorted((only or set()) - {w.name for w in [*mine, *theirs]})
    if unknown:
        raise click.UsageError(f"no watchlist named {', '.join(map(repr, unknown))}")
    mine = [w for w in mine if only is None or w.name in only]
    theirs = [w for w in theirs if only is None or w.name in only]
    _warn_unjudged([*mine, *theirs])
    root = Path(dump_dir) if dump_dir else settings.dump_dir
    if not root.is_dir():
        raise click.ClickException(f"{root}: no such folder of dump files")
    since_ts = _parse_since(since)
    since_day = datetime.fromtimestamp(since_ts, UTC).date().isoformat() if since_ts else None
    matcher = compile_watchlists(mine)
    other_matcher = compile_watchlists(theirs) if other else None
    summary = Summary([w.name for w in mine], since_day)
    for story in scan(dump_files(root), since_day):
        if not isinstance(story, Story):
            click.echo(f"{story.file}: {story.reason}", err=True)
            summary.skipped += 1
            continue
        summary.read += 1
        hits = fire(matcher, story)
        summary.count(summary.fired, story, hits)
        if other_matcher is None:
            for hit in hits:
                click.echo(_hit_line(story.file, hit))
            continue
        added, removed = changes(hits, fire(other_matcher, story))
        summary.count(summary.added, story, added)
        summary.count(summary.removed, story, removed)
        for change, diffs in (("added", added), ("removed", removed)):
            for hit in diffs:
                click.echo(_hit_line(story.file, hit, change=change))
    for line in summary.lines(other):
        click.echo(line, err=True)
    sys.exit(1 if summary.skipped else 0)


def _warn_unjudged(watchlists: list[Any]) -> None:
    """Dump files record neither the source nor the feed: say so for queries that test them."""
    from worker.query import attribute_names, parse_query

    for w in watchlists:
        tested = attribute_names(parse_query(w.query)) & {"source", "feed"} if w.query else set()
        if tested:
            click.echo(f"watchlist {w.name}: {' and '.join(sorted(f'{t}:' for t in tested))} "
                       "cannot be judged from dump files (they record neither source nor feed): "
                       "here they are false", err=True)


@main.command()
@click.option("--config", type=click.Path(), default=None,
              help="Configuration folder, or one YAML file.")
def check(config: str | None) -> None:
    """Validate the configuration and the environment; print a summary with secrets hidden.
    Exits 1 when anything would not work."""
    from worker.checks import CHECKED, config_problems, referenced_variables
    from worker.match import compile_watchlists

    settings = _settings(config)
    loaded = load_config(settings.config_dir)
    cfg = _remembered(loaded.config)
    matcher = compile_watchlists(cfg.watchlists)
    problems = (config_problems(cfg, os.environ, referenced_variables(loaded.files))
                + notify_problems(cfg))
    click.echo(f"configuration {settings.config_dir}: "
               + (f"{len(problems)} problem(s)" if problems else "OK"))
    click.echo(f"feeds: {len(cfg.feeds)}")
    for f in cfg.feeds:
        click.echo(f"  {f.name}  {redact_url(f.url)}  every {f.every:g}s  full_text {f.full_text}"
                   + (f"  timezone {f.timezone}" if f.timezone else ""))
    click.echo(f"webhooks: {len(cfg.webhooks)}")
    for name, hook in cfg.webhooks.items():
        click.echo(f"  {name}  {url_outline(hook.url.get_secret_value())}  "
                   f"secrets {len(hook.secret)} (***)")
    click.echo(f"watchlists: {len(cfg.watchlists)}  terms: {matcher.term_count}")
    for w in cfg.watchlists:
        notify = [url_outline(u.get_secret_value(), host=False) for u in w.notify]
        click.echo(f"  {w.name}  " + (f"query {w.query}" if w.query else f"match {w.match}")
                   + f"  entities {len(w.entities)}  "
                   f"webhook {w.webhook or '-'}" + (f"  notify {' '.join(notify)}" if notify else ""))
    click.echo("checked: " + "; ".join(CHECKED))
    for problem in problems:
        click.echo(f"newsmon: {problem}", err=True)
    sys.exit(1 if problems else 0)


def notify_problems(cfg: Config) -> list[str]:
    """Notification URLs newsmon cannot send to (unknown or unsupported scheme), each naming
    its watchlist and scheme."""
    from worker.deliver import notify_scheme_problem

    return [f"watchlists[{i}].notify[{j}] (watchlist {w.name!r}): {problem}"
            for i, w in enumerate(cfg.watchlists) for j, url in enumerate(w.notify)
            if (problem := notify_scheme_problem(url.get_secret_value()))]


# -- the service --------------------------------------------------------------------------------
@main.command()
@click.option("--config", type=click.Path(), default=None,
              help="Configuration folder, or one YAML file.")
@click.option("--once", is_flag=True, help="Poll every feed once, process everything, exit.")
@click.option("--concurrency", type=int, default=16, show_default=True,
              help="Fetch threads (fetching waits on the network).")
@click.option("--processes", type=int, default=None,
              help="Processes for the CPU work (normalize, dedupe, match)  [default: cores]")
@click.option("--deliver-concurrency", type=int, default=8, show_default=True,
              help="Delivery threads (webhooks and notifications).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="With --once: seconds to wait for the new alerts' deliveries.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="newsmon's log level (default: NEWSMON_LOG_LEVEL, else info); debug also "
                   "shows Celery's own lines and banner.")
def run(config: str | None, once: bool, concurrency: int, processes: int | None,
        deliver_concurrency: int, timeout: float, log_level: str | None) -> None:
    """Run the workers and the scheduler together (or one pass with --once): one pool per kind
    of work (schedule, fetch, process, deliver), see docs/scaling.md."""
    from worker.checks import config_problems, referenced_variables

    settings = _settings(config, log_level)
    _setup_logging(settings)
    loaded = load_config(settings.config_dir)
    cfg = _remembered(loaded.config)
    for problem in config_problems(cfg, os.environ, referenced_variables(loaded.files)):
        log.warning("newsmon check would refuse this: %s", problem)
    if once and settings.redis_url:  # nothing of the data folder is used: no lock needed
        sys.exit(_run_once(settings, cfg, settings.redis_url, timeout))
    redis_label = _redact(settings.redis_url) if settings.redis_url else "embedded"
    with embedded.own_data_dir(settings.data_dir, "run", redis=redis_label,
                               config=str(settings.config_dir.resolve())) as lock:
        server = None if settings.redis_url else embedded.EmbeddedRedis(settings.data_dir)
        url = settings.redis_url or server.start()  # type: ignore[union-attr]
        lock.add_child(server.pid if server else None)
        try:
            if once:
                code = _run_once(settings, cfg, url, timeout)
            else:
                from worker.store import Store

                Store.from_settings(settings, url).r.ping()  # unreachable: one line, not retries
                _broker(settings, url)  # a broker this deployment can use, before Celery
                log.info("%s", startup_summary(settings, cfg, url, embedded=server is not None))
                sizes = {"fetch": concurrency, "deliver": deliver_concurrency,
                         **({"process": processes} if processes else {})}
                code = _run_celery(settings, url, sizes, lock)
        finally:
            if server:
                server.stop()
    sys.exit(code)


def startup_summary(settings: Settings, cfg: Config, url: str, embedded: bool) -> str:
    """One line saying what runs: feeds, watchlists, webhooks, where dumps and state go, which
    Redis (credentials hidden)."""
    # Only the host of a webhook: its path and query often hold a token.
    hooks = ", ".join(f"{name} {_origin(hook.url.get_secret_value())}"
                      for name, hook in cfg.webhooks.items())
    redis_where = (f"embedded Redis {url} (data in {settings.data_dir.resolve()})" if embedded
                   else f"Redis {_redact(url)} ({settings.redis_mode})")
    return (f"newsmon {__version__} starting: {len(cfg.feeds)} feeds, "
            f"{len(cfg.watchlists)} watchlists, {len(cfg.webhooks)} webhooks"
            + (f" ({hooks})" if hooks else "")
            + f"; configuration {settings.config_dir.resolve()}; dumps to "
              f"{settings.dump_dir.resolve()}; state in {redis_where}")


def _redact(url: str) -> str:
    """A state store or broker URL with its passwords hidden (sentinel lists included)."""
    from worker.broker import redact

    return redact(url)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _run_once(settings: Settings, cfg: Config, url: str, timeout: float) -> int:
    """One pass in this process, then a table of the feeds and a summary line."""
    from worker.sentry import init_sentry
    from worker.service import Service

    init_sentry("run")
    log.info("%s", startup_summary(settings, cfg, url, embedded=not settings.redis_url))
    summary = Service(settings, url).run_once(delivery_timeout=timeout)
    for name, reason in summary["failed"]:
        click.echo(f"feed {name} failed: {reason}", err=True)
    rows = [("FEED", "OUTCOME", "HTTP", "NEW", "ERROR")]
    rows += [(name, o.get("outcome") or "-", str(o.get("status") or "-"),
              str(o.get("new_items", 0)), o.get("error") or "")
             for name, o in summary.get("polled", [])]
    if len(rows) > 1:
        _table(rows)
    click.echo(f"polled {summary['feeds']} feeds ({len(summary['failed'])} failed), "
               f"{summary['new_items']} new items, {len(summary['alerts'])} alerts"
               + _delivery_summary(summary["deliveries"]))
    return 0


def _delivery_summary(states: dict[str, int]) -> str:
    """The end of run --once's summary: how the new alerts' deliveries ended."""
    words = [("delivered", "delivered"), ("dead", "dead"), ("retrying", "still retrying"),
             ("pending", "still pending"), ("recorded", "recorded (no destination)")]
    parts = [f"{states[key]} {label}" for key, label in words if states.get(key)]
    left = states.get("retrying", 0) + states.get("pending", 0)
    return (": " + ", ".join(parts) if parts else "") + (
        "; the rest stay in the outbox for the next run" if left else "")


def _run_celery(settings: Settings, url: str, sizes: dict[str, int],
                lock: embedded.DataDirLock) -> int:
    """One Celery worker per pool (see worker/layout.py), the beat inside the schedule
    worker; SIGTERM stops them within SHUTDOWN_GRACE seconds. If one of them dies, the others
    are stopped too and its exit code is returned (a supervisor restarts the whole). The
    children die with us even if we are SIGKILLed (parent-death signal)."""
    from worker.layout import POOLS, worker_argv

    data_dir = settings.data_dir.resolve()
    env = {**os.environ, "REDIS_URL": url, "NEWSMON_CONFIG": str(settings.config_dir.resolve()),
           "NEWSMON_DATA_DIR": str(data_dir), "NEWSMON_LOG_LEVEL": settings.log_level,
           "NEWSMON_DUMP_DIR": str(settings.dump_dir.resolve())}
    if settings.metrics_port is not None:  # one folder for every pool: one port serves them all
        shared = data_dir / "metrics" / f"run-{os.getpid()}"
        shared.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    loud = settings.log_level == "debug"
    children = []
    for pool in POOLS:
        schedule = str(data_dir / "celerybeat-schedule") if pool.queue == "schedule" else None
        # No start-up banner unless debugging (and with JSON logs every line is JSON).
        argv = worker_argv(pool, sizes.get(pool.queue), beat_schedule=schedule,
                           quiet=not loud or settings.log_format == "json")
        argv[argv.index("--loglevel") + 1] = "INFO" if loud else "WARNING"
        own = dict(env)
        if pool.queue != "schedule":
            own.pop("NEWSMON_METRICS_PORT", None)
        child = subprocess.Popen([sys.executable, "-m", "celery", *argv], env=own,
                                 **embedded.child_options(signal.SIGTERM))
        lock.add_child(child.pid)
        children.append(child)
    stopping: list[float] = []

    def stop(signum: int, _frame: Any) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed: int | None = None
    try:
        while any(child.poll() is None for child in children):
            ended = [child.returncode for child in children if child.returncode is not None]
            if ended and not stopping:
                failed = ended[0]
                log.error("a worker pool exited (code %s): stopping the others", failed)
                stop(signal.SIGTERM, None)
            if stopping and time.monotonic() - stopping[0] > SHUTDOWN_GRACE:
                log.warning("tasks still running after %ss: stopping them (they run again "
                            "later)", SHUTDOWN_GRACE)
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.5)
        return failed if failed is not None else 0
    finally:  # the workers' own children (the beat, pool processes) go with them
        for child in children:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)


# -- views ------------------------------------------------------------------------------------
def _when(ts: Any) -> str:
    if ts in (None, ""):
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(config: str | None, as_json: bool) -> None:
    """Feeds with their last fetch, and totals."""
    from worker.store import Store

    settings = _settings(config)
    cfg = _view_config(settings)
    with _redis(settings) as url:
        store = Store.from_settings(settings, url)
        due = store.due_times()
        urls = {f.name: f.url for f in cfg.feeds} if cfg else dict.fromkeys(sorted(due), "")
        states = store.feed_states(list(urls))
        totals = store.stats()
        webhooks = _webhook_states(store, cfg) if cfg else []
        parked = store.parked_tasks(time.time())
        engines = _engines(settings, url)
    feeds = []
    for (name, feed_url), st in zip(urls.items(), states, strict=True):
        feeds.append({
            "name": name, "url": redact_url(feed_url) if feed_url else "-",
            "last_fetch": _num(st.get("last_fetch")),
            "outcome": st.get("outcome") or "never fetched", "error": st.get("error") or None,
            "http_status": _int(st.get("status")), "new_items": _int(st.get("new_items")) or 0,
            "failures": _int(st.get("failures")) or 0, "next_due": due.get(name),
            "health": st.get("health") or ("healthy" if st else "unknown"),
            "failing_since": _num(st.get("failing_since")), "stale": st.get("stale") == "1",
            "newest_item": _num(st.get("newest")), "usual_gap": _num(st.get("rhythm"))})
    if as_json:
        click.echo(json.dumps({"feeds": feeds, "webhooks": webhooks, "totals": totals,
                               "parked": [{"id": tid, **rec} for tid, rec in parked.items()],
                               **engines},
                              indent=2))
        return
    rows = [("FEED", "URL", "HEALTH", "LAST FETCH", "OUTCOME", "HTTP", "NEW", "FAILS", "NEXT DUE")]
    rows += [(f["name"], f["url"], _health(f), _when(f["last_fetch"]),
              f["outcome"] + (f": {f['error']}" if f["error"] else ""),
              str(f["http_status"] or "-"), str(f["new_items"]), str(f["failures"]),
              _when(f["next_due"])) for f in feeds]
    _table(rows)
    for hook in webhooks:
        if hook["disabled"]:
            click.echo(f"\nwebhook {hook['name']} DISABLED: {hook['disabled']} "
                       "(until its configuration changes)")
    for tid, rec in parked.items():
        click.echo(f"\ntask {rec['task']} {tid} PARKED {_when(rec['at'])}: {rec['reason']} "
                   f"args={rec['args']}")
    click.echo("\n" + "  ".join(f"{k}: {v}" for k, v in totals.items()))
    state, broker = engines["state_store"], engines["broker"]
    click.echo(f"state store: {state['url']} ({state['mode']})")
    waiting = ("queues: " + "  ".join(f"{q} {n}" for q, n in broker["queues"].items())
               if broker["up"] else f"UNREACHABLE: {broker['error']}")
    click.echo(f"broker: {broker['url']} ({broker['kind']}) {waiting}")


def _engines(settings: Settings, state_url: str) -> dict[str, Any]:
    """The state store and the broker in use, with the broker's queue depths (or why not)."""
    from worker import broker as brokers
    from worker.broker import QUEUES

    state = {"url": brokers.redact(state_url), "mode": settings.redis_mode}
    try:
        broker = brokers.resolve(settings, state_url)
    except ConfigError as exc:
        return {"state_store": state, "broker": {"url": None, "kind": None, "up": False,
                                                 "error": str(exc), "queues": {}}}
    view: dict[str, Any] = {"url": brokers.redact(broker.url), "kind": broker.kind}
    try:
        view |= {"up": True, "error": None, "queues": brokers.queue_depths(broker, QUEUES)}
    except Exception as exc:  # any transport's error: status shows it and goes on
        view |= {"up": False, "error": brokers.ping(broker) or str(exc), "queues": {}}
    return {"state_store": state, "broker": view}


def _view_config(settings: Settings) -> Config | None:
    """The configuration a view shows: the one given (--config, NEWSMON_CONFIG), else the one
    the running instance uses, else ./schedules if it exists; None: the state in Redis only."""
    if settings.config_given:
        return _load(settings)
    running = embedded.owner(settings.data_dir) or {}
    for folder in (running.get("config"), settings.config_dir):
        if folder and Path(folder).exists():
            try:
                return _remembered(load_config(folder).config)
            except ConfigError as exc:  # not asked for: the view still shows the state
                log.warning("not using the configuration in %s: %s", folder, exc.problems[0])
    return None


def _health(feed: dict[str, Any]) -> str:
    """healthy, "failing since 2025-02-06 16:30:05", "healthy, stale (newest item ...)"."""
    text = feed["health"]
    if feed["failing_since"]:
        text += f" since {_when(feed['failing_since'])}"
    if feed["stale"]:
        text += f", stale (newest item {_when(feed['newest_item'])})"
    return text


def _webhook_states(store: Any, cfg: Config) -> list[dict[str, Any]]:
    """Each webhook, with the reason it is disabled (410 Gone) or None."""
    from worker.deliver import webhook_digest

    out = []
    for name, hook in cfg.webhooks.items():
        disabled = store.webhook_disabled(webhook_digest(hook))
        reason = (disabled.get("reason") if isinstance(disabled, dict) else disabled) if disabled else None
        out.append({"name": name, "disabled": reason})
    return out


def _num(value: str | None) -> float | None:
    return float(value) if value else None


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _parse_since(value: str | None) -> float | None:
    """ISO time (2025-02-06T16:30:00+05:00) or a duration back from now (30m, 2h, 7d)."""
    if not value:
        return None
    if value[-1] in "smhd" and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected an ISO time or a duration such as 2h or 7d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@main.group()
def alerts() -> None:
    """Alerts raised by watchlists."""


@alerts.command("list")
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.option("--watchlist", default=None, help="Only this watchlist's alerts.")
@click.option("--since", default=None, help="ISO time, or a duration back from now (2h, 7d).")
def alerts_list(config: str | None, as_json: bool, watchlist: str | None,
                since: str | None) -> None:
    """List alerts, oldest first."""
    from worker.store import Store

    settings = _settings(config)
    since_ts = _parse_since(since)
    with _redis(settings) as url:
        records = Store.from_settings(settings, url).alerts(since=since_ts)
    if watchlist:
        records = [a for a in records if a["watchlist"] == watchlist]
    views = [alert_view(a) for a in records]
    if as_json:
        click.echo(json.dumps(views, indent=2, ensure_ascii=False))
        return
    rows = [("CREATED", "WATCHLIST", "DELIVERY", "ENTITIES", "TITLE", "URL", "ID")]
    rows += [(v["created"][:19], v["watchlist"], _delivery_state(v), ", ".join(v["entities"]),
              _list_title(v)[:60], v["article"]["url"] if "article" in v else "", v["id"])
             for v in views]
    _table(rows)


def _list_title(view: dict[str, Any]) -> str:
    """The TITLE column: the article's title, or what a shaping event is."""
    kind = view["type"]
    if kind == "digest.created":
        return f"digest.created ({len(view['alerts'])} alerts)"
    if kind == "story.breaking":
        return f"story.breaking ({view['outlets']} outlets): {view['article']['title']}"
    if kind == "alert.updated":
        return f"alert.updated ({', '.join(view['changed'])}): {view['article']['title']}"
    return str(view["article"]["title"])


def _delivery_state(view: dict[str, Any]) -> str:
    """pending, delivered, dead, recorded, digest (it leaves in a digest.created), or
    "retrying, next 2025-02-06 16:30:05"."""
    if view["state"] == "retrying" and view.get("next_attempt"):
        return f"retrying, next {view['next_attempt'][:19].replace('T', ' ')}"
    if view["state"] == "digest" and view.get("digest"):
        return f"in {view['digest']}"
    return str(view["state"])


def alert_view(record: dict[str, Any]) -> dict[str, Any]:
    """An alert (alert.created, story.breaking) or a shaping event (digest.created,
    alert.updated) as ``alerts list`` and ``alerts show`` print it."""
    view = _event_view(record) if "type" in record else _alert_fields(record)
    if record.get("next_attempt"):
        view["next_attempt"] = datetime.fromtimestamp(record["next_attempt"], UTC).isoformat()
    view["deliveries"] = {dest: {**d, "next_attempt": _iso(d["next_attempt"])}
                          for dest, d in record.get("deliveries", {}).items()}
    return view


def _alert_fields(record: dict[str, Any]) -> dict[str, Any]:
    art = record["article"]
    view = {"id": record["id"], "type": "story.breaking" if "outlets" in record
            else "alert.created", "watchlist": record["watchlist"],
            "entities": record["entities"], "created": record["created"],
            "state": record["state"], "story": record["story"],
            "salience": record.get("salience"), "digest": record.get("digest"),
            "article": {"id": art["id"], "title": art["title"], "url": art["url"],
                        "source": art["source"], "published": art["published"]},
            "matches": record["matches"]}
    if "outlets" in record:
        view.update(outlets=record["outlets"], copies=record["copies"])
    return view


def _event_view(record: dict[str, Any]) -> dict[str, Any]:
    """A digest.created or alert.updated: the event's data without the dump texts."""
    data = record["data"]
    view = {"id": record["id"], "type": record["type"], "watchlist": record["watchlist"],
            "entities": [], "created": record["timestamp"], "state": record["state"]}
    if record["type"] == "digest.created":
        view.update(window=data["window"], alerts=[
            {"id": a["id"], "story": a["article"]["story"], "title": a["article"]["title"],
             "url": a["article"]["url"], "salience": a.get("salience")} for a in data["alerts"]])
    else:
        art = data["article"]
        view.update(alert=data["alert"], story=data["story"], reason=data["reason"],
                    changed=data["changed"], outlets=data["outlets"], copy=data["copy"],
                    file=record.get("file"),
                    article={"id": art["id"], "title": art["title"], "url": art["url"],
                             "source": art["source"], "published": art["published"]})
    return view


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


@alerts.command("show")
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the alert and its attempts as JSON.")
@click.argument("alert_id")
def alerts_show(config: str | None, as_json: bool, alert_id: str) -> None:
    """One alert: its article, each destination's delivery state and every attempt."""
    from worker.store import Store

    settings = _settings(config)
    with _redis(settings) as url:
        store = Store.from_settings(settings, url)
        record, gone = store.alert(alert_id), store.alert_gone(alert_id)
    if record is None and gone is not None:
        raise click.ClickException(
            f"alert {alert_id} aged out: removed {_iso(gone)}, "
            f"{settings.alert_retention_days:g} days after its last attempt "
            f"(NEWSMON_ALERT_RETENTION_DAYS)")
    if record is None:
        raise click.ClickException(f"no alert {alert_id}")
    attempts = [{**a, "at": _iso(a["at"]), "next": _iso(a.get("next"))}
                for a in record["attempts"]]
    if "type" in record and not record.get("watchlist"):
        # a feed health event (evt_...): shown as JSON either way
        click.echo(json.dumps({**record, "attempts": attempts}, indent=2, ensure_ascii=False))
        return
    view = {**alert_view(record), "attempts": attempts}
    if as_json or view["type"] in ("digest.created", "alert.updated"):
        click.echo(json.dumps(view, indent=2, ensure_ascii=False))
        return
    art = view["article"]
    click.echo(f"alert      {view['id']}\nwatchlist  {view['watchlist']}  "
               f"(entities: {', '.join(view['entities'])})\ncreated    {view['created']}\n"
               f"article    {art['title']}\n           {art['url']}\n"
               f"delivery   {_delivery_state(view)}")
    if view["deliveries"]:
        click.echo("")
        rows = [("DESTINATION", "STATE", "ATTEMPTS", "NEXT", "REASON")]
        rows += [(dest, d["state"], str(d["attempts"]), (d["next_attempt"] or "-")[:19],
                  d["reason"] or "") for dest, d in view["deliveries"].items()]
        _table(rows)
    if view["attempts"]:
        click.echo("")
        rows = [("TIME", "DESTINATION", "#", "HTTP", "LATENCY", "OUTCOME", "ERROR")]
        rows += [((a["at"] or "")[:23], a["dest"], str(a["attempt"] or "-"),
                  str(a["status"] or "-"), f"{a['latency_ms']:.0f} ms", a["outcome"],
                  a["error"] or "") for a in view["attempts"]]
        _table(rows)


@alerts.command("replay")
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.option("--dead", is_flag=True, help="Every dead-lettered alert.")
@click.argument("alert_ids", nargs=-1)
def alerts_replay(config: str | None, dead: bool, alert_ids: tuple[str, ...]) -> None:
    """Send dead-lettered alerts again (same webhook-id), from the first retry on."""
    from worker.service import Service

    if bool(alert_ids) == dead:
        raise click.UsageError("give alert ids or --dead (not both)")
    settings = _settings(config)
    with _redis(settings) as url:
        service = Service(settings, url)
        queued = service.replay_dead() if dead else service.replay(list(alert_ids))
        beat = service.store.last_beat()
    missing = [aid for aid, n in queued.items() if n < 0]
    for aid, n in queued.items():
        if n > 0:
            click.echo(f"{aid}: {n} destination{'s' if n > 1 else ''} queued")
        elif n == 0:
            click.echo(f"{aid}: nothing dead to send again")
    for aid in missing:
        click.echo(f"{aid}: no such alert", err=True)
    if not queued:
        click.echo("no dead-lettered alerts")
    if any(n > 0 for n in queued.values()) and not _service_alive(beat, settings):
        click.echo("no worker is running (no recent beat tick): the queued deliveries are sent "
                   "once `newsmon run` runs, or now with `newsmon run --once`", err=True)
    sys.exit(1 if missing else 0)


def _service_alive(beat: float | None, settings: Settings) -> bool:
    """A beat tick is a task a worker ran: a recent one means worker and beat both run."""
    return beat is not None and time.time() - beat <= max(30.0, 6 * settings.tick_seconds)


@main.group()
def webhook() -> None:
    """Webhooks in the configuration."""


@webhook.command("test")
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
@click.argument("name")
def webhook_test(config: str | None, name: str) -> None:
    """Send a signed ping event to a webhook and print its answer."""
    from worker.service import Service

    settings = _settings(config)
    if name not in _load(settings).webhooks:
        raise click.ClickException(f"no webhook named {name!r} in {settings.config_dir}")
    service = Service(settings, "redis://unused")  # a ping touches no Redis state
    answer = service.test_webhook(name)
    took = f"{answer.latency * 1000:.0f} ms"
    if answer.error is not None:
        click.echo(f"webhook {name}: failed after {took}: {answer.error.reason}")
        sys.exit(1)
    click.echo(f"webhook {name}: HTTP {answer.status} in {took}")
    if answer.response:
        click.echo(answer.response)
    sys.exit(0 if answer.status is not None and 200 <= answer.status < 300 else 1)


@webhook.command("list")
@click.option("--config", type=click.Path(), default=None, help="Configuration folder.")
def webhook_list(config: str | None) -> None:
    """Webhooks, the watchlists that use them, and whether a 410 Gone disabled them."""
    from worker.deliver import DEFAULT_SCHEDULE, webhook_digest
    from worker.store import Store

    settings = _settings(config)
    cfg = _load(settings)
    with _redis(settings) as url:
        store = Store.from_settings(settings, url)
        disabled = {name: store.webhook_disabled(webhook_digest(hook))
                    for name, hook in cfg.webhooks.items()}
    rows = [("WEBHOOK", "STATE", "WATCHLISTS", "SECRETS", "RETRY")]
    for name, hook in cfg.webhooks.items():
        off = disabled[name]
        state = f"disabled since {off['at'][:19]} ({off['reason']})" if off else "enabled"
        users = ", ".join(w.name for w in cfg.watchlists if w.webhook == name) or "-"
        retry = " ".join(f"{s:g}s" for s in (hook.retry or DEFAULT_SCHEDULE))
        rows.append((name, state, users, str(len(hook.secret)), retry))
    _table(rows)


BENCH_PARTS = ("parse", "match", "backtest", "dedupe", "poll", "latency", "deliver", "unchanged",
               "hostile", "corpus", "state", "scale")


@main.command()
@click.option("--quick", is_flag=True, help="Smaller inputs: a rough figure in seconds.")
@click.option("--only", multiple=True, type=click.Choice(BENCH_PARTS),
              help="Run only this part (repeatable).")
@click.option("--corpus", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of feed files for the corpus part (tracebacks, hangs, lost entries "
                   "and malformed dumps counted).")
@click.argument("parts", nargs=-1, type=click.Choice(BENCH_PARTS))
def bench(quick: bool, only: tuple[str, ...], corpus: str | None, parts: tuple[str, ...]) -> None:
    """Print speed figures (per core) for each stage of the pipeline: all of them, or the
    PARTS named (`newsmon bench match` is `newsmon bench --only match`)."""
    from worker.bench import run_benchmarks

    if isinstance(sys.stdout, io.TextIOWrapper):  # each figure as it comes, also into a file
        sys.stdout.reconfigure(line_buffering=True)
    run_benchmarks(quick=quick, only={*only, *parts}, corpus=corpus)



@main.command()
@click.option("--max-beat-age", type=float, default=None,
              help="Seconds since the last beat tick that still count as healthy "
                   "(default: 6 ticks, at least 30 s).")
@click.option("--component", type=click.Choice(["all", "worker", "beat"]), default="all",
              show_default=True,
              help="all: Redis, the broker, a recent beat tick and any worker; worker: Redis, "
                   "the broker and the worker pools of this host (fetch@HOSTNAME, ...); beat: "
                   "Redis, the broker and a recent beat tick. Liveness probes check their own "
                   "component.")
def health(max_beat_age: float | None, component: str) -> None:
    """Exit 0 when the state store and the broker answer, the beat tick is recent and a worker
    answers a ping; else print a one-line reason and exit 1."""
    import redis

    from worker import broker as brokers
    from worker.store import Store

    settings = _settings()
    url = settings.redis_url or embedded.running_url(settings.data_dir)
    if not url:
        _unhealthy("no Redis: REDIS_URL is unset and no embedded Redis runs")
    try:
        store = Store.from_settings(settings, url, socket_connect_timeout=3, socket_timeout=5)
        answers = store.ping()
    except (redis.RedisError, redis.exceptions.RedisClusterException, ValueError) as exc:
        # a cluster client connects when it is made
        answers, url = False, f"{url} ({exc})"
    if not answers:
        _unhealthy(f"Redis at {brokers.redact(url)} does not answer")
    said = ["Redis answers"]
    try:
        broker = brokers.resolve(settings, url)
    except ConfigError as exc:
        _unhealthy(str(exc))
    if broker.url != url:  # a broker of its own
        trouble = brokers.ping(broker)
        if trouble:
            _unhealthy(f"broker at {brokers.redact(broker.url)} does not answer: {trouble}")
        said.append(f"broker ({broker.kind}) answers")
    if component in ("all", "beat"):
        limit = max_beat_age or max(30.0, 6 * settings.tick_seconds)
        beat = store.last_beat()
        if beat is None or time.time() - beat > limit:
            age = "never" if beat is None else f"{time.time() - beat:.0f} s ago"
            _unhealthy(f"no recent beat tick (last: {age}; limit {limit:.0f} s)")
        said.append(f"beat {time.time() - beat:.0f} s ago")
    if component in ("all", "worker"):
        import socket

        from worker.app import app
        from worker.layout import node_names

        here = node_names(socket.gethostname()) if component == "worker" else None
        replies = app.control.ping(destination=here, timeout=2.0)
        if not replies:
            _unhealthy(f"no worker{' on this host' if here else ''} answered a ping within 2 s")
        said.append(f"{len(replies)} worker(s) answered")
    click.echo("healthy: " + ", ".join(said))


def _unhealthy(reason: str) -> NoReturn:
    click.echo(f"unhealthy: {reason}")
    sys.exit(1)
