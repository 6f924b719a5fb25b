"""dump: the dump file format, its paths, and atomic writes that never clobber."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker.dump import (
    day_of,
    dump_of,
    dump_path,
    dump_problems,
    local_sequence,
    parse_dump,
    place_dump,
    render_dump,
    write_dump,
)
from worker.errors import DumpFormatError
from worker.models import Article, Dump

DATA = Path(__file__).parent / "data"
PLUS_5 = timezone(timedelta(hours=5))
SEED_DUMP = Dump(
    title="Japan PM Heads To US For Trump Summit",
    author="Umer Jamshaid",
    published=datetime(2025, 2, 6, 16, 30),
    paragraphs=tuple((DATA / "seed.txt").read_text(encoding="utf-8").splitlines()[2:]),
)


def article(published: datetime, zone: str | None = None, **changes: object) -> Article:
    fields: dict[str, object] = dict(
        id="d2c0166b2a2dd97c", canonical_url="https://news.example/a", url="https://news.example/a",
        guid=None, title="Title", author="Author", source="Source", published=published,
        paragraphs=("One.", "Two."), feed="https://news.example/rss", timezone=zone)
    fields.update(changes)
    return Article(**fields)  # type: ignore[arg-type]


# --- rendering and reading ---------------------------------------------------------------------

def test_render_gives_the_reference_format() -> None:
    assert render_dump(SEED_DUMP) == (DATA / "seed.txt").read_text(encoding="utf-8")


def test_first_line_starts_with_a_space_and_the_file_ends_with_a_newline() -> None:
    text = render_dump(SEED_DUMP)
    assert text.startswith(" date 2025-02-06 Japan PM")
    assert text.endswith("Asia\".\n") and not text.endswith("\n\n")


def test_parse_reads_the_reference_file_back() -> None:
    assert parse_dump((DATA / "seed.txt").read_text(encoding="utf-8")) == SEED_DUMP


@pytest.mark.parametrize(("hour", "minute", "shown"), [
    (0, 5, "12:05 AM"), (1, 0, "01:00 AM"), (11, 59, "11:59 AM"), (12, 0, "12:00 PM"),
    (13, 7, "01:07 PM"), (23, 59, "11:59 PM"),
])
def test_twelve_hour_clock(hour: int, minute: int, shown: str) -> None:
    dump = Dump("T", "A", datetime(2025, 1, 9, hour, minute), ())
    line = render_dump(dump).split("\n")[1]
    assert line == f"A Published January 09, 2025 | {shown}"
    assert parse_dump(render_dump(dump)).published == dump.published


def test_every_month_is_spelled_in_english() -> None:
    names = [render_dump(Dump("T", "A", datetime(2025, m, 1), ())).split("\n")[1].split()[2]
             for m in range(1, 13)]
    assert names == ["January", "February", "March", "April", "May", "June", "July", "August",
                     "September", "October", "November", "December"]


def test_years_before_1000_are_zero_padded() -> None:
    text = render_dump(Dump("T", "A", datetime(999, 3, 4, 5, 6), ()))
    assert text.startswith(" date 0999-03-04 T\nA Published March 04, 0999 | 05:06 AM\n")
    assert render_dump(parse_dump(text)) == text


def test_author_may_contain_the_word_published() -> None:
    dump = Dump("T", "Published Daily Published Staff", datetime(2025, 1, 2, 3, 4), ("p",))
    assert parse_dump(render_dump(dump)) == dump


def test_empty_title_author_and_no_paragraphs_round_trip() -> None:
    dump = Dump("", "", datetime(2025, 1, 2, 3, 4), ())
    assert render_dump(dump) == " date 2025-01-02 \n Published January 02, 2025 | 03:04 AM\n"
    assert parse_dump(render_dump(dump)) == dump


@pytest.mark.parametrize("field", ["title", "author", "paragraph"])
@pytest.mark.parametrize("brk", ["\n", "\r", "\u2028", "\x85"])
def test_render_refuses_a_line_break_inside_a_field(field: str, brk: str) -> None:
    values = {"title": "T", "author": "A", "paragraph": "p"}
    values[field] = f"one{brk}two"
    dump = Dump(values["title"], values["author"], datetime(2025, 1, 1), (values["paragraph"],))
    with pytest.raises(ValueError, match="line break"):
        render_dump(dump)


ODD = ["é", "日本", "😀", "\u200f", "Published", " Published ", "|", " | ", " date ", "AM",
       "\t", "\\", "\"", "'", "&amp;", "<b>", "  ", "\u00a0", "0", "12:00 PM", "\ufe0f", "ß"]


def random_text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(ODD + ["word", " ", "x"]) for _ in range(words))


def test_render_of_parse_is_identity_for_generated_articles() -> None:
    rng = random.Random(20250206)
    zones = [None, "UTC", "Asia/Tokyo", "America/St_Johns", "Asia/Kathmandu", "Pacific/Chatham"]
    for _ in range(500):
        offset = timezone(timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1)))
        published = datetime(rng.randrange(1970, 2100), rng.randrange(1, 13), rng.randrange(1, 29),
                             rng.randrange(24), rng.randrange(60), rng.randrange(60), tzinfo=offset)
        a = article(published, rng.choice(zones), title=random_text(rng, rng.randrange(0, 12)),
                    author=random_text(rng, rng.randrange(0, 6)),
                    paragraphs=tuple(random_text(rng, rng.randrange(0, 40))
                                     for _ in range(rng.randrange(0, 6))))
        text = render_dump(dump_of(a))
        assert render_dump(parse_dump(text)) == text
        assert parse_dump(text) == dump_of(a)


@pytest.mark.parametrize(("text", "says"), [
    ("date 2025-02-06 T\nA Published February 06, 2025 | 04:30 PM\n", "line 1"),
    (" date 2025-2-6 T\nA Published February 06, 2025 | 04:30 PM\n", "line 1"),
    (" date 2025-02-06 T\nA Published Feb 06, 2025 | 04:30 PM\n", "not an English month"),
    (" date 2025-02-06 T\nA Published february 06, 2025 | 04:30 PM\n", "not an English month"),
    (" date 2025-02-06 T\nA Published February 06, 2025 | 16:30 PM\n", "12-hour"),
    (" date 2025-02-06 T\nA Published February 06, 2025 | 00:30 AM\n", "12-hour"),
    (" date 2025-02-06 T\nA Published February 06, 2025 16:30\n", "line 2"),
    (" date 2025-02-30 T\nA Published February 30, 2025 | 04:30 PM\n", "not a date"),
    (" date 2025-02-07 T\nA Published February 06, 2025 | 04:30 PM\n", "line 1 says 2025-02-07"),
    (" date 2025-02-06 T\nA Published February 06, 2025 | 04:30 PM", "end with a newline"),
    (" date 2025-02-06 T\n", "needs a date-and-title line and an author-and-time line"),
    ("", "end with a newline"),
])
def test_parse_dump_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(DumpFormatError, match=says):
        parse_dump(text)


# --- the time shown ------------------------------------------------------------------------------

def test_time_is_shown_in_the_offset_the_source_gave() -> None:
    dump = dump_of(article(datetime(2025, 2, 6, 16, 30, 59, tzinfo=PLUS_5)))
    assert dump.published == datetime(2025, 2, 6, 16, 30)


def test_time_is_shown_in_the_feeds_configured_zone() -> None:
    # 23:30 UTC on 5 February is already 6 February in Tokyo.
    dump = dump_of(article(datetime(2025, 2, 5, 23, 30, tzinfo=UTC), "Asia/Tokyo"))
    assert dump.published == datetime(2025, 2, 6, 8, 30)
    assert render_dump(dump).startswith(" date 2025-02-06 Title\nAuthor Published February 06")


def test_configured_zone_follows_daylight_saving() -> None:
    summer = dump_of(article(datetime(2025, 7, 1, 12, 0, tzinfo=UTC), "Europe/Paris"))
    winter = dump_of(article(datetime(2025, 1, 1, 12, 0, tzinfo=UTC), "Europe/Paris"))
    assert (summer.published.hour, winter.published.hour) == (14, 13)


def test_naive_time_is_taken_as_utc() -> None:
    dump = dump_of(article(datetime(2025, 2, 6, 16, 30), "Asia/Tokyo"))
    assert dump.published == datetime(2025, 2, 7, 1, 30)


# --- paths and writing ---------------------------------------------------------------------------

@pytest.mark.parametrize(("seq", "name"), [(0, "000"), (7, "007"), (42, "042"), (999, "999"),
                                           (1000, "1000"), (12345, "12345")])
def test_dump_path_pads_the_sequence_to_three_digits(seq: int, name: str, tmp_path: Path) -> None:
    path = dump_path(tmp_path, "2025-02-06", seq, "d2c0166b2a2dd97c")
    assert path == tmp_path / "2025-02-06" / f"{name}_d2c0166b2a2dd97c.txt"


@pytest.mark.parametrize(("day", "seq", "article_id"), [
    ("../etc", 1, "d2c0166b2a2dd97c"), ("2025-2-6", 1, "d2c0166b2a2dd97c"),
    ("2025-02-06", -1, "d2c0166b2a2dd97c"), ("2025-02-06", 1, "../../x"),
    ("2025-02-06", 1, "D2C0166B2A2DD97C"),
])
def test_dump_path_refuses_what_could_leave_the_folder(day: str, seq: int, article_id: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        dump_path(tmp_path, day, seq, article_id)


def test_write_dump_puts_the_file_in_its_day_folder(tmp_path: Path) -> None:
    a = article(datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5))
    path = write_dump(tmp_path, a, lambda day: 0)
    assert path == tmp_path / "2025-02-06" / "000_d2c0166b2a2dd97c.txt"
    assert path.read_bytes() == render_dump(dump_of(a)).encode("utf-8")
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_write_dump_day_is_the_day_shown_in_the_file(tmp_path: Path) -> None:
    a = article(datetime(2025, 2, 5, 23, 30, tzinfo=UTC), "Asia/Tokyo")
    assert write_dump(tmp_path, a, lambda day: 3).parent.name == "2025-02-06"


def test_write_dump_asks_again_when_the_number_is_taken(tmp_path: Path) -> None:
    taken = dump_path(tmp_path, "2025-02-06", 5, "d2c0166b2a2dd97c")
    taken.parent.mkdir(parents=True)
    taken.write_text("someone else's\n")
    numbers = iter([5, 6])
    path = write_dump(tmp_path, article(datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5)),
                      lambda day: next(numbers))
    assert path.name == "006_d2c0166b2a2dd97c.txt"
    assert taken.read_text() == "someone else's\n"


def test_place_dump_never_clobbers_but_accepts_its_own_earlier_write(tmp_path: Path) -> None:
    path = tmp_path / "2025-02-06" / "001_d2c0166b2a2dd97c.txt"
    assert place_dump(path, "first\n") is True
    assert place_dump(path, "first\n") is True
    assert place_dump(path, "other\n") is False
    assert path.read_text() == "first\n"
    assert os.listdir(path.parent) == [path.name]


def racy_sequence(root: Path) -> Callable[[str], int]:
    """Highest number on disk plus one, with no memory: concurrent callers get the same one."""
    def next_seq(day: str) -> int:
        names = os.listdir(root / day) if (root / day).exists() else []
        return max((int(n[:3]) for n in names if n[:3].isdigit()), default=-1) + 1
    return next_seq


def test_concurrent_writers_never_clobber_each_other(tmp_path: Path) -> None:
    # Four workers write dumps of the same article id with a sequence that hands out duplicates:
    # every collision must be caught by the link and answered with another number.
    next_seq = racy_sequence(tmp_path)
    written: dict[Path, str] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(25):
            a = article(datetime(2025, 2, 6, 12, tzinfo=UTC), title=f"writer {n} copy {i}")
            path = write_dump(tmp_path, a, next_seq)
            with lock:
                assert path not in written
                written[path] = a.title

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 100
    assert len(os.listdir(tmp_path / "2025-02-06")) == 100
    for path, title in written.items():
        assert parse_dump(path.read_text(encoding="utf-8")).title == title


def test_local_sequence_hands_out_unique_numbers_to_threads(tmp_path: Path) -> None:
    next_seq = local_sequence(tmp_path)
    numbers: list[int] = []

    def take() -> None:
        for _ in range(50):
            numbers.append(next_seq("2025-02-06"))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(200))


def test_local_sequence_continues_after_the_highest_number(tmp_path: Path) -> None:
    next_seq = local_sequence(tmp_path)
    assert next_seq("2025-02-06") == 0
    folder = tmp_path / "2025-02-06"
    folder.mkdir()
    for name in ["000_aaaaaaaaaaaaaaaa.txt", "004_bbbbbbbbbbbbbbbb.txt", ".tmp-999.txt",
                 "notes.txt", "0099_cccccccccccccccc.txt.bak"]:
        (folder / name).write_text("x")
    assert next_seq("2025-02-06") == 5
    (folder / "1000_dddddddddddddddd.txt").write_text("x")
    assert next_seq("2025-02-06") == 1001
    assert next_seq("2025-02-07") == 0


def test_day_of_is_the_iso_day() -> None:
    assert day_of(datetime(2025, 2, 6, 23, 59)) == "2025-02-06"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_dump_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """A shared dump folder is read by other users and containers: no forced 0600."""
    old = os.umask(umask)
    try:
        path = write_dump(tmp_path, article(datetime(2025, 2, 6, 16, 30, tzinfo=PLUS_5)), lambda day: 0)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


# --- strict dumps ------------------------------------------------------------------------------

def test_dump_of_makes_every_field_strict() -> None:
    dirty = article(datetime(2025, 1, 2, 3, 4, tzinfo=UTC), title=" \x9dTitle\x00  with\ttabs ",
                    author="Au\x07thor \ud800", paragraphs=("  One.  ", "", "\x85", "Two\x7f."))
    dump = dump_of(dirty)
    assert (dump.title, dump.author, dump.paragraphs) == ("Title with tabs", "Author",
                                                          ("One.", "Two."))
    assert dump_problems(render_dump(dump)) == []


def test_an_empty_title_is_untitled_in_the_dump() -> None:
    dump = dump_of(article(datetime(2025, 1, 2, tzinfo=UTC), title=" \x00 "))
    assert dump.title == "(untitled)"


@pytest.mark.parametrize(("text", "problem"), [
    (" date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM\n\nbody\n", "an empty line"),
    (" date 2025-01-02 T \nA Published January 02, 2025 | 03:04 AM\nbody\n", "a trailing space"),
    (" date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM\nbo\x9ddy\n",
     "a control character"),
    (" date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM\nbo\ud800dy\n", "UTF-8"),
    (" date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM\n",
     "no body lines although the entry had text"),
    (" date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM", "final newline"),
    (" date 2025-01-02 T\n", "author-and-time line"),
])
def test_dump_problems_names_each_breach_of_the_strict_format(text: str, problem: str) -> None:
    problems = dump_problems(text)
    assert problems and any(problem in p or problem in p.replace("a newline", "final newline")
                            for p in problems), problems


def test_a_title_only_dump_is_strict_when_the_entry_had_no_text() -> None:
    text = " date 2025-01-02 T\nA Published January 02, 2025 | 03:04 AM\n"
    assert dump_problems(text, had_text=False) == []
