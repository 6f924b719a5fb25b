"""``newsmon bench --only scale``: many feeds on loopback hosts, polled by real Celery workers
(1, 2 and 4 fetch worker processes) as the recipes run them, with what each poll costs the
workers, the state store and the broker. docs/scaling.md turns these unit costs into sizes.

Each cycle: every feed is due at once; most answer 304, one in CHANGED_EVERY has one new item.
Figures come from the feed server (request times), /proc (CPU of each process tree) and Redis
(INFO commandstats, network bytes, CPU), read before and after the cycle."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHANGED_EVERY = 100   # one feed in 100 has a new item each cycle
ITEMS = 5             # items in a feed document (the newest replaces the oldest)
FETCH_THREADS = 32    # threads of each fetch worker, as in the recipes
_VOCABULARY = ("energy market japan tokyo trade minister said imports exports cargo tanker price "
               "demand supply winter policy bank rate growth report shares company plant coal oil "
               "gas power grid ministry data month year week official talks deal agency record "
               "output strike port shipping freight inflation yen dollar")
_WORDS = tuple(_VOCABULARY.split())


# -- the feed server (its own process): HTTP/1.1 keep-alive on many loopback addresses --------
def _document(i: int, version: int) -> bytes:
    items = []
    for k in range(version - ITEMS + 1, version + 1):
        rng = random.Random(i * 100_003 + k)
        body = " ".join(rng.choice(_WORDS) for _ in range(150))
        items.append(f"<item><title>Feed {i} story {k} {' '.join(rng.sample(_WORDS, 6))}</title>"
                     f"<link>https://news.example/{i}/{k}</link><guid>urn:bench:{i}:{k}</guid>"
                     f"<pubDate>Thu, 06 Feb 2025 12:00:00 +0000</pubDate>"
                     f"<description>{body}</description></item>")
    return (f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
            f"<title>Bench feed {i}</title><link>https://news.example/{i}</link>"
            f"{''.join(items)}</channel></rss>").encode()


def _serve(ports: Any, hosts: list[str]) -> None:
    cycle = [0]
    times: list[float] = []
    sent = Counter()

    def answer(path: str, etag_in: str | None) -> tuple[str, dict[str, str], bytes]:
        if path == "/next-cycle":
            cycle[0] += 1
            times.clear()
            return "200 OK", {}, b"ok"
        if path == "/stats":
            span = {"count": len(times), "first": min(times, default=0), "last": max(times, default=0)}
            return "200 OK", {}, json.dumps({**span, **sent}).encode()
        i = int(path.rsplit("/", 1)[1])
        times.append(time.time())
        version = cycle[0] if i % CHANGED_EVERY == 0 else 0
        etag = f'"{i}-{version}"'
        if etag_in == etag:
            sent["not_modified"] += 1
            return "304 Not Modified", {"ETag": etag}, b""
        sent["ok"] += 1
        return "200 OK", {"ETag": etag, "Content-Type": "application/rss+xml"}, _document(i, version)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                etag = next((h.split(":", 1)[1].strip() for h in head[1:]
                             if h.lower().startswith("if-none-match:")), None)
                status, headers, body = answer(head[0].split(" ")[1], etag)
                lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}",
                         *(f"{k}: {v}" for k, v in headers.items())]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        control = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        first = await asyncio.start_server(handle, hosts[0], 0, backlog=1024)
        port = first.sockets[0].getsockname()[1]
        for host in hosts[1:]:
            await asyncio.start_server(handle, host, port, backlog=1024)
        ports.put((port, control.sockets[0].getsockname()[1]))
        await asyncio.Event().wait()

    asyncio.run(main())


# -- measuring ------------------------------------------------------------------------------
def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) of these processes and all their descendants, now."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    inside = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in inside} - inside
        inside |= more
        grew = bool(more)
    return sum(cpu.get(pid, 0.0) for pid in inside)


def _redis_counters(client: Any) -> dict[str, float]:
    info = client.info("all")
    out = {f"cmd:{k.removeprefix('cmdstat_')}": float(v["calls"])
           for k, v in info.items() if k.startswith("cmdstat_")}
    out.update(net_in=info["total_net_input_bytes"], net_out=info["total_net_output_bytes"],
               cpu=info["used_cpu_user"] + info["used_cpu_sys"], memory=info["used_memory"])
    return out


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _server(control: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{control}{path}", timeout=60) as answer:
        return json.loads(answer.read()) if path == "/stats" else answer.read()


# -- the benchmark ----------------------------------------------------------------------------
def bench_scale(quick: bool) -> None:
    from worker.bench import _redis
    from worker.store import Store

    n, hosts, fleets = (2_000, 16, (1, 2)) if quick else (100_000, 64, (1, 2, 4))
    addresses = [f"127.0.1.{h + 1}" for h in range(hosts)]
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports, addresses), daemon=True)
    server.start()
    port, control = ports.get(timeout=60)
    names = [f"f{i:06d}" for i in range(n)]
    changed = [names[i] for i in range(0, n, CHANGED_EVERY)]
    with _redis() as url, tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(url)
        folder = Path(tmp) / "config"
        folder.mkdir()
        (folder / "feeds.yaml").write_text("feeds:\n" + "".join(
            f"  - {{url: 'http://{addresses[i % hosts]}:{port}/f/{i}', name: {names[i]}, "
            f"every: 1h, full_text: never}}\n" for i in range(n))
            + "watchlists:\n  - {name: energy, entities: [LNG, tanker]}\n")
        env = {**os.environ, "REDIS_URL": url, "NEWSMON_CONFIG": str(folder),
               "NEWSMON_DUMP_DIR": str(Path(tmp) / "dump"), "NEWSMON_DATA_DIR": str(Path(tmp) / "data"),
               "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8", "NEWSMON_TICK_SECONDS": "1"}
        env.pop("NEWSMON_METRICS_PORT", None)
        per_feed = _seed(store, names, n)
        print(f"scale   {n:,} feeds on {hosts} loopback hosts (2 connections each), every feed due "
              f"at once; 1 in {CHANGED_EVERY} has a new item")
        print(f"        Celery workers: the beat with the schedule pool, 1 process worker "
              f"(prefork, 1 process), N fetch workers ({FETCH_THREADS} threads each); INFO "
              f"logs off; {os.cpu_count()} cores for everything, feed server and Redis included")
        print(f"        Redis memory per feed (state + schedule): {per_feed:.0f} bytes")
        print("        fetch      cycle  polls/s  worker CPU  Redis ops  Redis bytes  Redis CPU"
              "  broker msgs")
        print("        workers        s           ms / poll     / poll   in/out / poll  µs / poll"
              "     / poll")
        rows = []
        for fleet in fleets:  # each row as soon as it is measured: a full run takes long
            rows.append(row := _cycle(fleet, env, store, names, changed, control, tmp, server.pid))
            print(f"        {row['fleet']:>7}  {row['cycle']:7.1f}  {row['rate']:7.0f}  "
                  f"{row['cpu_ms']:10.2f}  {row['ops']:9.1f}  {row['in']:5.0f}/{row['out']:<6.0f}"
                  f"  {row['redis_us']:9.0f}  {row['messages']:9.2f}", flush=True)
        _print_breakdown(rows[-1])
        _state_alone(url, folder, names, changed, control)
        _tick_cost(env, store, names)
    server.kill()


def _seed(store: Any, names: list[str], n: int) -> float:
    """Every feed known with its validator, as after a first cycle; returns bytes per feed."""
    before = store.r.info("memory")["used_memory"]
    store.sync_feeds(names, time.time() + 3600)
    now = time.time()

    def seed(i: int) -> None:
        store.record_fetch(names[i], {"url": "", "last_fetch": now, "outcome": "not modified",
                                      "status": 304, "etag": f'"{i}-0"', "failures": 0,
                                      "health": "healthy", "last_ok": now}, now + 3600)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(seed, range(n)))
    return (store.r.info("memory")["used_memory"] - before) / n


@contextmanager
def _fleet(fleet: int, env: dict[str, str], tmp: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    from worker.layout import POOLS, worker_argv

    pools = {p.queue: p for p in POOLS}
    commands = [worker_argv(pools["schedule"], beat_schedule=str(Path(tmp) / f"beat-{fleet}")),
                worker_argv(pools["process"], 1)]
    commands += [worker_argv(pools["fetch"], FETCH_THREADS) for _ in range(fleet)]
    procs = []
    for j, argv in enumerate(commands):
        argv = [a.replace("@%h", f"{j}@%h") for a in argv]
        argv[argv.index("INFO")] = "WARNING"
        procs.append(subprocess.Popen([sys.executable, "-m", "celery", *argv], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    try:
        yield procs
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_cycle(store: Any, control: int, expected: int, articles: int, limit: float) -> None:
    """Until the server has seen ``expected`` feed requests of this cycle, the process queue
    is empty and the article count has stopped growing at ``articles`` or more."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        time.sleep(1.0)
        seen = _server(control, "/stats")["count"]
        done = store.stats()["articles"]
        idle = not any(store.queue_depths(("fetch", "process"), ("",)).values())
        if seen >= expected and idle and done >= articles and done == last:
            return
        last = done
    raise TimeoutError(f"cycle not finished after {limit:.0f} s")


def _cycle(fleet: int, env: dict[str, str], store: Any, names: list[str], changed: list[str],
           control: int, tmp: str, server: int) -> dict[str, Any]:
    with _fleet(fleet, env, tmp) as procs:
        # Warm-up: the changed feeds only (every worker loads the configuration, their items
        # become known); then the measured cycle over every feed.
        _server(control, "/next-cycle")
        store.set_due_many(changed, time.time())
        _wait_cycle(store, control, len(changed), 0, 900)
        _server(control, "/next-cycle")
        articles = store.stats()["articles"]
        redis0, wall0 = _redis_counters(store.r), time.time()
        cpu0, served0 = _tree_cpu([p.pid for p in procs]), _tree_cpu([server])
        store.set_due_many(names, time.time())
        _wait_cycle(store, control, len(names), articles + len(changed), 3600)
        redis = _delta(_redis_counters(store.r), redis0)
        cpu = _tree_cpu([p.pid for p in procs]) - cpu0
        served = _tree_cpu([server]) - served0
        seen = _server(control, "/stats")
    n = len(names)
    commands = {k[4:]: v for k, v in redis.items()
                if k.startswith("cmd:") and v > 0 and k != "cmd:info"}
    return {"fleet": fleet, "n": n, "cycle": seen["last"] - wall0,
            "rate": n / (seen["last"] - seen["first"]),
            "cpu_ms": cpu / n * 1000, "ops": sum(commands.values()) / n,
            "in": redis["net_in"] / n, "out": redis["net_out"] / n,
            "redis_us": redis["cpu"] / n * 1e6, "commands": commands,
            "server_ms": served / n * 1000,
            "wall_cpu": (cpu + served + redis["cpu"]) / (seen["last"] - wall0),
            "messages": commands.get("lpush", 0) / n, "articles": store.stats()["articles"] - articles}


def _print_breakdown(row: dict[str, Any]) -> None:
    n_polls = row["n"]
    top = sorted(row["commands"].items(), key=lambda kv: -kv[1])[:10]
    print(f"        Redis commands per poll ({row['fleet']} fetch workers; broker and state "
          f"together): " + ", ".join(f"{k} {v / n_polls:.2f}" for k, v in top))
    print(f"        new articles processed in the cycle: {row['articles']}; feed server CPU "
          f"{row['server_ms']:.2f} ms / poll; workers + server + Redis kept {row['wall_cpu']:.2f} "
          "cores busy (the rest went to other load)")


def _state_alone(url: str, folder: Path, names: list[str], changed: list[str],
                 control: int) -> None:
    """The state store's share: polls run in this process (no Celery), Redis counted."""
    from worker.service import Service
    from worker.settings import Settings

    service = Service(Settings.from_env({"NEWSMON_CONFIG": str(folder),
                                         "NEWSMON_ALLOW_NETWORKS": "127.0.0.0/8"}), url)
    unchanged = [name for name in names[1:1001] if name not in set(changed)]
    batches: list[tuple[Any, Any, Any]] = []
    for label, sample in (("304", unchanged), ("changed", changed[:200])):
        _server(control, "/next-cycle")
        before = _redis_counters(service.store.r)
        for name in sample:
            service.poll(service.feed(name), lambda *batch: batches.append(batch))
        _print_state(f"per {label} poll", _delta(_redis_counters(service.store.r), before),
                     len(sample))
    # The process pool's share: the new articles of those changed polls, processed here.
    before, cpu = _redis_counters(service.store.r), time.process_time()
    articles = sum(len(items) for _, _, items in batches)
    for batch in batches:
        service.process(*batch)
    cpu = time.process_time() - cpu
    _print_state(f"per new article ({cpu / articles * 1000:.1f} ms CPU to process)",
                 _delta(_redis_counters(service.store.r), before), articles)
    service.fetcher.close()
    service.isolated.close()


def _print_state(label: str, d: dict[str, float], count: int) -> None:
    ops = {k[4:]: v / count for k, v in d.items()
           if k.startswith("cmd:") and v > 0 and k != "cmd:info"}
    print(f"        state store alone, {label}: {sum(ops.values()):.1f} commands "
          f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(ops.items()))}), "
          f"{d['net_in'] / count:.0f} bytes in, {d['net_out'] / count:.0f} out")


# One tick as the beat's schedule worker runs it: claim the due feeds, publish a fetch each.
_TICK = """
import json, resource, sys, time
from worker import tasks
service = tasks.service()
names = json.load(sys.stdin)
service.store.set_due_many(names, time.time())
service.due_feeds(time.time())  # the first tick also syncs the feed list: not measured
service.store.set_due_many(names, time.time())
cpu, wall = time.process_time(), time.perf_counter()
now = time.time()
feeds = service.hand_out(now)
digest = service.config_digest()
claimed = time.perf_counter() - wall
tasks.publish_fetches(feeds, now, "", digest)
print(json.dumps({"feeds": len(feeds), "claim": claimed, "wall": time.perf_counter() - wall,
                  "cpu": time.process_time() - cpu}))
"""


def _tick_cost(env: dict[str, str], store: Any, names: list[str]) -> None:
    """What handing out feeds costs the single beat: one tick's claim and publish, timed."""
    sample = names[:10_000]
    before = _redis_counters(store.r)
    out = subprocess.run([sys.executable, "-c", _TICK], input=json.dumps(sample), env=env,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    tick = json.loads(out.strip().splitlines()[-1])
    redis_cpu = _delta(_redis_counters(store.r), before)["cpu"]
    store.r.delete("fetch")  # the published messages: no worker runs now
    per = tick["wall"] / tick["feeds"]
    print(f"        one tick handing out {tick['feeds']:,} feeds (the most one tick claims): "
          f"claim {tick['claim'] * 1000:.0f} ms, claim + publish {tick['wall']:.2f} s "
          f"({per * 1e6:.0f} µs and {tick['cpu'] / tick['feeds'] * 1e6:.0f} µs CPU a feed; "
          f"Redis CPU {redis_cpu / tick['feeds'] * 1e6:.0f} µs a feed, both ticks): "
          f"one beat hands out at most {1 / per:,.0f} feeds/s")
