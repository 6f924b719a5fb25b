"""The dump format: one text file an article, as the downstream readers expect it.

    ' date 2025-02-06 Japan PM Heads To US For Trump Summit'     (note the leading space)
    'Umer Jamshaid Published February 06, 2025 | 04:30 PM'
    one paragraph a line, and a final newline

The date and time are the article's wall time in the feed's configured time zone, else in
the offset the source gave. Files live at ``<root>/<YYYY-MM-DD>/<NNN>_<article id>.txt``.
Month names and AM/PM are spelled out here, never taken from the locale.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from worker.errors import DumpFormatError
from worker.models import Article, Dump

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
# How often write_dump asks for another sequence number before it gives up.
MAX_SEQUENCE_ATTEMPTS = 1000

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ARTICLE_ID = re.compile(r"[0-9a-f]{16}")
_LINE_1 = re.compile(r" date ([0-9]{4}-[0-9]{2}-[0-9]{2}) (.*)")
# Greedy author: an author may contain " Published "; only the last one starts the time.
_LINE_2 = re.compile(
    r"(.*) Published ([A-Za-z]+) ([0-9]{2}), ([0-9]{4}) \| ([0-9]{2}):([0-9]{2}) (AM|PM)")
_DUMP_NAME = re.compile(r"([0-9]{3,})_[0-9a-f]+\.txt")
# Everything str.splitlines() breaks on: no field may hold one.
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# C0 and C1 control characters and lone surrogates: never in a dump.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
UNTITLED = "(untitled)"


def dump_of(article: Article) -> Dump:
    """The dump of an article: its time as wall time in the feed's zone, else in its own offset.

    Every field comes out strict: one line, no control character or lone surrogate, single
    spaces, none at either end; empty paragraphs are dropped and an empty title is UNTITLED.
    """
    when = article.published
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if article.timezone:
        when = when.astimezone(ZoneInfo(article.timezone))
    paragraphs = (_one_line(p) for p in article.paragraphs)
    return Dump(
        title=_one_line(article.title) or UNTITLED,
        author=_one_line(article.author),
        published=when.replace(tzinfo=None, second=0, microsecond=0),
        paragraphs=tuple(p for p in paragraphs if p),
    )


def dump_problems(text: str, *, had_text: bool = True) -> list[str]:
    """What makes a dump's text break the strict format, if anything: valid UTF-8, the two
    header lines, no empty line, no control character, no trailing space, a final newline,
    and body lines unless the entry had no text but its title (``had_text`` False)."""
    problems = []
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        problems.append("not valid UTF-8 (a lone surrogate)")
    try:
        dump = parse_dump(text)
    except DumpFormatError as exc:
        return [*problems, str(exc)]
    lines = text[:-1].split("\n")
    if any(not line for line in lines[1:]):
        problems.append("an empty line")
    if any(line != line.rstrip() for line in lines):
        problems.append("a trailing space")
    if any(_CONTROL.search(line) for line in lines):
        problems.append("a control character")
    if not dump.title.strip():
        problems.append("an empty title")
    if had_text and not dump.paragraphs:
        problems.append("no body lines although the entry had text")
    return problems


def render_dump(dump: Dump) -> str:
    """The text of a dump file. Raises ValueError if a field holds a line break."""
    for field in (dump.title, dump.author, *dump.paragraphs):
        if _LINE_BREAK.search(field):
            raise ValueError(f"a dump field may not contain a line break: {field[:80]!r}")
    when = dump.published
    hour = when.hour % 12 or 12
    lines = [
        f" date {day_of(when)} {dump.title}",
        f"{dump.author} Published {MONTHS[when.month - 1]} {when.day:02d}, {when.year:04d} | "
        f"{hour:02d}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}",
        *dump.paragraphs,
    ]
    return "\n".join(lines) + "\n"


def parse_dump(text: str) -> Dump:
    """Read a dump file's text back; raises DumpFormatError saying which line is wrong."""
    if not text.endswith("\n"):
        raise DumpFormatError("a dump must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 2:
        raise DumpFormatError("a dump needs a date-and-title line and an author-and-time line")
    first = _LINE_1.fullmatch(lines[0])
    if first is None:
        raise DumpFormatError(f"line 1: expected ' date YYYY-MM-DD Title' (with a leading "
                              f"space), got {lines[0][:80]!r}")
    second = _LINE_2.fullmatch(lines[1])
    if second is None:
        raise DumpFormatError(f"line 2: expected 'Author Published Month DD, YYYY | HH:MM AM', "
                              f"got {lines[1][:80]!r}")
    author, month, day, year, hour, minute, half = second.groups()
    when = _wall_time(month, int(day), int(year), int(hour), int(minute), half)
    if day_of(when) != first.group(1):
        raise DumpFormatError(f"line 1 says {first.group(1)} but line 2 says {day_of(when)}")
    return Dump(title=first.group(2), author=author, published=when, paragraphs=tuple(lines[2:]))


def day_of(when: datetime) -> str:
    """``YYYY-MM-DD`` of a wall time (by hand: strftime does not zero-pad years before 1000)."""
    return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"


def dump_path(root: str | os.PathLike[str], day: str, seq: int, article_id: str) -> Path:
    """``<root>/<YYYY-MM-DD>/<NNN>_<id>.txt``, NNN zero-padded to at least three digits."""
    if not _DAY.fullmatch(day):
        raise ValueError(f"expected a day as YYYY-MM-DD, got {day!r}")
    if not _ARTICLE_ID.fullmatch(article_id):
        raise ValueError(f"expected an article id of 16 lowercase hex digits, got {article_id!r}")
    if seq < 0:
        raise ValueError(f"expected a sequence number of 0 or more, got {seq}")
    return Path(root) / day / f"{seq:03d}_{article_id}.txt"


def write_dump(root: str | os.PathLike[str], article: Article,
               next_seq: Callable[[str], int]) -> Path:
    """Write the article's dump under the next free sequence number of its day.

    ``next_seq(day)`` is asked again whenever the number is taken by another file.
    """
    dump = dump_of(article)
    day = day_of(dump.published)
    text = render_dump(dump)
    for _ in range(MAX_SEQUENCE_ATTEMPTS):
        path = dump_path(root, day, next_seq(day), article.id)
        if place_dump(path, text):
            return path
    raise FileExistsError(f"{Path(root) / day}: no free sequence number after "
                          f"{MAX_SEQUENCE_ATTEMPTS} attempts")


def place_dump(path: Path, text: str) -> bool:
    """Write ``text`` at ``path`` atomically unless another file holds that name.

    The text goes to a temporary file in the same folder, is fsynced, then hard-linked to its
    final name: a link fails if the name exists, so two writers never clobber each other.
    Returns True if the file now holds ``text`` (also when a retry finds its own earlier
    write), False if the name is taken by a different file.
    """
    data = text.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600 whatever the umask, and a dump folder is often shared
    # (another user or container reads it). O_EXCL keeps the name ours alone.
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}.txt"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes() == data
        _fsync_folder(path.parent)
        return True
    finally:
        os.unlink(tmp)


def local_sequence(root: str | os.PathLike[str]) -> Callable[[str], int]:
    """A ``next_seq`` for offline use: the highest NNN in the day's folder plus one (0 if none).

    Numbers are unique within this process (threads included); separate processes writing one
    folder may pick the same number, which costs no file but leaves two files with one NNN.
    """
    lock = threading.Lock()
    last: dict[str, int] = {}

    def next_seq(day: str) -> int:
        folder = Path(root) / day
        on_disk = max((int(m.group(1)) for name in _names(folder)
                       if (m := _DUMP_NAME.fullmatch(name))), default=-1)
        with lock:
            last[day] = max(on_disk, last.get(day, -1)) + 1
            return last[day]

    return next_seq


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _fsync_folder(folder: Path) -> None:
    """Make the new directory entry durable too, not only the file's bytes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(text: str) -> str:
    """One line with single spaces (tabs and line breaks are spaces), no control characters."""
    text = " ".join(text.split())
    if not text.isprintable():
        text = " ".join(_CONTROL.sub("", _LINE_BREAK.sub(" ", text)).split())
    return text


def _wall_time(month: str, day: int, year: int, hour: int, minute: int, half: str) -> datetime:
    if month not in MONTHS:
        raise DumpFormatError(f"line 2: {month!r} is not an English month name")
    if not 1 <= hour <= 12 or minute > 59:
        raise DumpFormatError(f"line 2: {hour:02d}:{minute:02d} is not a 12-hour time")
    hour24 = hour % 12 + (12 if half == "PM" else 0)
    try:
        return datetime(year, MONTHS.index(month) + 1, day, hour24, minute)
    except ValueError as exc:
        raise DumpFormatError(f"line 2: {month} {day:02d}, {year:04d} is not a date: {exc}") \
            from None
