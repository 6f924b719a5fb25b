"""Backtests: which stories a configuration's watchlists would have fired, over dump files
already written. Sends nothing and needs no Redis: the dump format's own lines hold the
title, the date and the paragraphs, so any folder of dump files will do.

``newsmon backtest`` (worker/cli.py) prints what ``scan`` reads and ``Summary`` counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from worker.dump import parse_dump
from worker.errors import DumpFormatError
from worker.match import Matcher
from worker.models import Dump, WatchlistHit

TITLES_SHOWN = 5
_DATE_AT = slice(6, 16)             # " date YYYY-MM-DD ..." (see docs/dump-format.md)


class Skipped(NamedTuple):
    """A file that could not be read as a dump, and why."""

    file: str
    reason: str


class Story(NamedTuple):
    """A dump file read back: where it is, and what it holds."""

    file: str
    dump: Dump

    @property
    def body(self) -> str:
        return "\n".join(self.dump.paragraphs)    # as Article.body


def dump_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every ``*.txt`` under ``root`` at any depth, in path order (so day folders come in date
    order); hidden files, such as a writer's ``.tmp-*.txt``, are left out."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found += [Path(folder, n) for n in names if n.endswith(".txt") and not n.startswith(".")]
    return sorted(found)


def scan(files: Iterable[Path], since_day: str | None = None) -> Iterator[Story | Skipped]:
    """Read each file as a dump; with ``since_day`` (YYYY-MM-DD) only those whose line 1 is
    dated that day or later (the date is read before the rest is parsed)."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            yield Skipped(str(path), f"not readable: {exc}")
            continue
        if since_day and text.startswith(" date ") and text[_DATE_AT] < since_day:
            continue
        try:
            yield Story(str(path), parse_dump(text))
        except DumpFormatError as exc:
            yield Skipped(str(path), f"not a dump file: {exc}")


def fire(matcher: Matcher, story: Story) -> list[WatchlistHit]:
    """The hits of a story, as ``newsmon match`` finds them (no source, feed or configured
    language: a dump file records none of them)."""
    return matcher.match(story.dump.title, story.body)


def changes(before: list[WatchlistHit],
            after: list[WatchlistHit]) -> tuple[list[WatchlistHit], list[WatchlistHit]]:
    """For one story, the hits of watchlists that ``after`` fires and ``before`` does not
    (added), and the reverse (removed); watchlists are paired by name."""
    names_before = {h.watchlist for h in before}
    names_after = {h.watchlist for h in after}
    return ([h for h in after if h.watchlist not in names_before],
            [h for h in before if h.watchlist not in names_after])


@dataclass
class Tally:
    """One watchlist's count of stories, and the first titles."""

    stories: int = 0
    titles: list[str] = field(default_factory=list)

    def add(self, story: Story) -> None:
        self.stories += 1
        if len(self.titles) < TITLES_SHOWN:
            when = story.dump.published
            self.titles.append(f"{when.year:04d}-{when.month:02d}-{when.day:02d}  "
                               f"{story.dump.title}")


@dataclass
class Summary:
    """What a backtest found, per watchlist: stories fired, and with a diff, added and removed."""

    watchlists: list[str]
    since_day: str | None = None
    read: int = 0
    skipped: int = 0
    fired: dict[str, Tally] = field(default_factory=dict)
    added: dict[str, Tally] = field(default_factory=dict)
    removed: dict[str, Tally] = field(default_factory=dict)

    def count(self, into: dict[str, Tally], story: Story, hits: Iterable[WatchlistHit]) -> None:
        for hit in hits:
            if hit.watchlist not in self.watchlists:
                self.watchlists.append(hit.watchlist)    # only in the other configuration
            into.setdefault(hit.watchlist, Tally()).add(story)

    def lines(self, diff_name: str | None = None) -> list[str]:
        """The summary as text lines (for stderr)."""
        out = [f"backtest: {self.read} dump file{'' if self.read == 1 else 's'} read"
               + (f" (dated {self.since_day} or later)" if self.since_day else "")
               + (f", {self.skipped} skipped (not dump files)" if self.skipped else "")]
        for name in self.watchlists:
            fired = self.fired.get(name, Tally())
            line = f"{name}: {fired.stories} stor{'y' if fired.stories == 1 else 'ies'} fired"
            if diff_name is None:
                out += [line, *(f"  {t}" for t in fired.titles)]
                continue
            added, removed = self.added.get(name, Tally()), self.removed.get(name, Tally())
            out.append(f"{line}; {diff_name} would add {added.stories} and remove "
                       f"{removed.stories}")
            out += [f"  + {t}" for t in added.titles] + [f"  - {t}" for t in removed.titles]
        return out
