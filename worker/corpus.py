"""``newsmon bench --only corpus --corpus PATH``: a robustness run of parse, normalize and the
dump format over a folder of feed files, counting what must never happen.

Every file either yields a strict dump for each entry that has a title or text, or is
refused with a one-line reason. Counted: files, entries (what feedparser alone finds with a
title or text, one per link or id), dumps, tracebacks (an exception escaping parse_feed or
normalize_entry other than their one-line errors), hangs (a file taking more than
``HANG_SECONDS``), lost entries (fewer distinct articles than feedparser's entries, entity
refusals aside) and malformed dumps (see ``dump.dump_problems``).

Files are read in a child process, one at a time, so a hang is seen, killed and counted, and
the run goes on. ``Header: Name: value`` lines in a leading comment (the convention of
feedparser's test suite) give the file's HTTP headers; only Content-Type is used.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser  # the baseline: what feedparser alone finds in each file

from worker.recover import recover_document

HANG_SECONDS = 10.0
SUFFIXES = frozenset({".xml", ".json", ".rss", ".atom", ".rdf", ".txt"})
CORPUS_URL = "http://corpus.example/"
FIRST_SEEN = datetime(2025, 1, 1, tzinfo=UTC)
_HEADER = re.compile(rb"^Header:\s+([^:\r\n]+):([^\r\n]*)$", re.M)
_TAGS = re.compile(r"<[^>]*>")


@dataclass
class CorpusReport:
    files: int = 0
    entries: int = 0
    dumps: int = 0
    tracebacks: int = 0
    hangs: int = 0
    lost: int = 0
    malformed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)   # file: what went wrong, for each count

    def add(self, outcome: dict[str, Any]) -> None:
        self.entries += outcome["reference"]
        self.dumps += outcome["dumps"]
        self.tracebacks += len(outcome["tracebacks"])
        self.lost += outcome["lost"]
        self.malformed += len(outcome["malformed"])
        if outcome["refused"]:
            self.refused[_reason_kind(outcome["refused"])] += 1
        name = outcome["file"]
        self.problems += [f"{name}: traceback: {t}" for t in outcome["tracebacks"]]
        self.problems += [f"{name}: malformed dump: {m}" for m in outcome["malformed"]]
        if outcome["lost"]:
            self.problems.append(f"{name}: lost {outcome['lost']} of {outcome['reference']} "
                                 f"entries ({outcome['refused'] or 'not refused'})")


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def run_corpus(folder: Path, hang_seconds: float = HANG_SECONDS) -> CorpusReport:
    """Check every feed file under ``folder``; the report counts what went wrong where."""
    files = corpus_files(folder)
    report = CorpusReport(files=len(files))
    ctx = multiprocessing.get_context("spawn")
    pending = list(files)
    while pending:
        parent, child = ctx.Pipe()
        worker = ctx.Process(target=_child, args=(child, str(folder)), daemon=True)
        worker.start()
        child.close()
        try:
            while pending:
                path = pending.pop(0)
                parent.send(str(path))
                if not parent.poll(hang_seconds):
                    report.hangs += 1
                    report.problems.append(f"{path.relative_to(folder)}: hang "
                                           f"(over {hang_seconds:g} s)")
                    break
                report.add(parent.recv())
        finally:
            worker.kill()
            worker.join()
            parent.close()
    return report


def print_report(report: CorpusReport, elapsed: float) -> None:
    print(f"corpus  {report.files} files, {report.entries} entries (feedparser's, with a title "
          f"or text), {report.dumps} dumps, {elapsed:.1f} s")
    print(f"        tracebacks {report.tracebacks}  hangs {report.hangs}  lost {report.lost}  "
          f"malformed {report.malformed}")
    for kind, count in sorted(report.refused.items()):
        print(f"        refused with a reason: {count} x {kind}")
    for problem in report.problems[:50]:
        print(f"        {problem}")


def bench_corpus(folder: str | None) -> None:
    if not folder:
        print("corpus  skipped: give the folder with --corpus PATH")
        return
    start = time.perf_counter()
    report = run_corpus(Path(folder))
    print_report(report, time.perf_counter() - start)


# --- in the child process --------------------------------------------------------------------

def _child(conn: Any, root: str) -> None:
    import logging

    logging.disable(logging.WARNING)  # skipped entries are counted, not printed
    while True:
        try:
            path = Path(conn.recv())
        except EOFError:
            return
        conn.send(check_file(path, Path(root)))


def check_file(path: Path, root: Path) -> dict[str, Any]:
    """One file: feedparser's entries as the reference, then parse, normalize and dump."""
    from worker.dump import dump_of, dump_problems, render_dump
    from worker.errors import BadEntryError, NotAFeedError
    from worker.normalize import html_to_paragraphs, normalize_entry
    from worker.parse import parse_feed

    name = str(path.relative_to(root))
    data = path.read_bytes()
    content_type = _content_type(data)
    url = CORPUS_URL + name
    outcome: dict[str, Any] = {"file": name, "reference": _reference(data, content_type),
                               "dumps": 0, "tracebacks": [], "malformed": [], "lost": 0,
                               "refused": None}
    try:
        parsed = parse_feed(data, content_type, url=url)
    except NotAFeedError as exc:
        outcome["refused"] = str(exc)
        if "entity declarations" not in str(exc) and "DOCTYPE" not in str(exc):
            outcome["lost"] = outcome["reference"]
        return outcome
    except Exception:
        outcome["tracebacks"].append(traceback.format_exc(limit=-3).strip().splitlines()[-1])
        outcome["lost"] = outcome["reference"]
        return outcome
    ids = set()
    for entry in parsed.entries:
        try:
            article = normalize_entry(entry, parsed, feed_url=url, first_seen=FIRST_SEEN)
            text = render_dump(dump_of(article))
        except (BadEntryError, ValueError) as exc:
            outcome["tracebacks"].append(f"entry {entry.link or entry.guid}: {exc}")
            continue
        paragraphs = html_to_paragraphs(entry.content_html)
        had_text = bool(paragraphs) and not (
            len(paragraphs) == 1 and paragraphs[0].casefold() == article.title.casefold())
        outcome["malformed"] += dump_problems(text, had_text=had_text)
        outcome["dumps"] += 1
        ids.add(article.id)
    outcome["lost"] = max(0, outcome["reference"] - len(ids))
    return outcome


def _content_type(data: bytes) -> str | None:
    headers = {k.strip().lower(): v.strip() for k, v in
               ((m.group(1).decode("latin-1"), m.group(2).decode("latin-1"))
                for m in _HEADER.finditer(data[:4096]))}
    return headers.get("content-type")


def _reference(data: bytes, content_type: str | None) -> int:
    """How many distinct entries with a title or text feedparser alone finds."""
    if data.lstrip()[:1] == b"{":  # feedparser reads no JSON Feed: count its items ourselves
        return _json_reference(data)
    headers = {"content-type": content_type} if content_type else {}
    try:
        # As newsmon calls it: its sanitizer and URI rewriting reparse markup and turn some of
        # it into text that an HTML parser reads as none (a bogus comment "<!' ...>").
        parsed = feedparser.parse(data, response_headers=headers, sanitize_html=False,
                                  resolve_relative_uris=False)
    except Exception:  # feedparser failing on a file leaves no reference to lose
        return 0
    # feedparser can take a title nested in the item (<image><title>) for the item's own.
    recovered = recover_document(data, None).entries
    nested = [r.nested_titles if r.title is None else frozenset() for r in recovered]
    if len(nested) != len(parsed.entries):
        nested = [frozenset()] * len(parsed.entries)
    keys = set()
    for entry, not_its_own in zip(parsed.entries, nested, strict=True):
        title = entry.get("title")
        texts = [None if title in not_its_own else title, entry.get("summary")]
        texts += [c.get("value") for c in entry.get("content") or ()]
        text = " ".join(_TAGS.sub("", str(t)) for t in texts if t).strip()
        if text:
            keys.add(entry.get("link") or entry.get("id") or text)
    return len(keys)


def _json_reference(data: bytes) -> int:
    try:
        items = json.loads(data).get("items")
    except (ValueError, AttributeError, RecursionError):
        return 0
    if not isinstance(items, list):
        return 0
    fields = ("title", "content_html", "content_text", "summary")
    return len({str(item.get("url") or item.get("id") or i) for i, item in enumerate(items)
                if isinstance(item, dict) and any(isinstance(item.get(f), str) and item[f].strip()
                                                  for f in fields)})


def _reason_kind(reason: str) -> str:
    """A refusal's reason without its sizes, to count alike ones together."""
    reason = re.sub(r"\s*\(first: .*$", "", reason)
    return re.sub(r"\s*\([^()]*\d+ bytes\)$", "", reason)[:120]
