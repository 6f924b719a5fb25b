"""``newsmon backtest``: watchlists over dump files already written, against ``newsmon match``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.backtest import Skipped, Story, changes, dump_files, scan
from worker.cli import main
from worker.dump import render_dump
from worker.models import Dump, WatchlistHit

CONFIG = """
watchlists:
  - name: japan-lng
    entities:
      - name: LNG
        aliases: [liquefied natural gas]
    query: 'Japan NEAR/5 LNG AND NOT title:"Japan Airlines"'
  - name: rice
    entities: [rice]
  - name: quiet
    query: 'NOT (Japan OR Korea OR rice)'
"""
OTHER = """
watchlists:
  - name: japan-lng
    entities:
      - name: LNG
        aliases: [liquefied natural gas]
    query: 'Japan AND LNG'
  - name: korea
    query: Korea
"""
STORIES = [
    ("Japan buys more LNG", ["Utilities in Japan said they would buy liquefied natural gas."]),
    ("Japan Airlines cuts flights", ["Japan buys LNG for its planes."]),
    ("Rice prices climb", ["The price of rice rose in Japan.",
                           "Importers, who had waited for weeks, bought more LNG."]),   # 8 words
    ("Weather", ["Sunny in Seoul."]),
    ("Korea and Japan", ["Korea and Japan will talk. Later they may discuss LNG."]),
]


def write_dumps(root: Path, days_ago: list[int]) -> list[Path]:
    """One dump per story, dated ``days_ago`` before today, in day folders."""
    paths = []
    today = datetime.now(UTC).replace(hour=9, minute=30, second=0, microsecond=0, tzinfo=None)
    for i, ((title, paragraphs), ago) in enumerate(zip(STORIES, days_ago, strict=True)):
        when = today - timedelta(days=ago)
        path = root / when.date().isoformat() / f"{i:03d}_{i:016x}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_dump(Dump(title, "Desk", when, tuple(paragraphs))), encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    config, other, dumps = tmp_path / "config", tmp_path / "other", tmp_path / "dump"
    for folder, text in ((config, CONFIG), (other, OTHER)):
        folder.mkdir()
        (folder / "w.yaml").write_text(text)
    write_dumps(dumps, [0, 1, 3, 10, 20])
    return config, other, dumps


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_backtest_prints_what_match_prints_over_the_same_files(folders) -> None:
    config, _, dumps = folders
    files = [str(p) for p in dump_files(dumps)]
    matched = invoke("match", "--config", str(config), *files)
    backtest = invoke("backtest", "--config", str(config), str(dumps))
    assert matched.exit_code == backtest.exit_code == 0, backtest.output
    assert backtest.stdout == matched.stdout
    assert [(Path(x["file"]).name[:3], x["watchlist"]) for x in lines(backtest.stdout)] == [
        ("003", "quiet"), ("002", "rice"), ("000", "japan-lng")]    # day folders in date order


def test_the_summary_on_stderr_counts_stories_and_shows_the_first_titles(folders) -> None:
    config, _, dumps = folders
    result = invoke("backtest", "--config", str(config), str(dumps))
    day = (datetime.now(UTC) - timedelta(days=10)).date().isoformat()
    assert result.stderr.splitlines() == [
        "backtest: 5 dump files read",
        "japan-lng: 1 story fired",
        f"  {datetime.now(UTC).date().isoformat()}  Japan buys more LNG",
        "rice: 1 story fired",
        f"  {(datetime.now(UTC) - timedelta(days=3)).date().isoformat()}  Rice prices climb",
        "quiet: 1 story fired",
        f"  {day}  Weather",
    ]


def test_since_keeps_the_dumps_dated_on_or_after_that_day(folders) -> None:
    config, _, dumps = folders
    result = invoke("backtest", "--config", str(config), str(dumps), "--since", "7d")
    assert [x["watchlist"] for x in lines(result.stdout)] == ["rice", "japan-lng"]
    cutoff = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()
    assert result.stderr.startswith(f"backtest: 3 dump files read (dated {cutoff} or later)")
    everything = invoke("backtest", "--config", str(config), str(dumps), "--since", "30d")
    assert len(lines(everything.stdout)) == 3


def test_since_reads_line_1_not_the_folder_names(folders, tmp_path) -> None:
    config, _, _ = folders
    flat = tmp_path / "flat"
    for i, path in enumerate(write_dumps(tmp_path / "nested", [0, 1, 3, 10, 20])):
        flat.mkdir(exist_ok=True)
        (flat / f"file-{4 - i}.txt").write_bytes(path.read_bytes())   # names say nothing
    result = invoke("backtest", "--config", str(config), str(flat), "--since", "2d")
    assert [x["watchlist"] for x in lines(result.stdout)] == ["japan-lng"]


def test_diff_prints_what_the_other_configuration_would_add_and_remove(folders) -> None:
    config, other, dumps = folders
    result = invoke("backtest", "--config", str(config), str(dumps), "--diff", str(other))
    assert result.exit_code == 0, result.output
    changed = [(x["change"], x["watchlist"], Path(x["file"]).name[:3]) for x in lines(result.stdout)]
    assert changed == [("added", "japan-lng", "004"), ("added", "korea", "004"),
                       ("removed", "quiet", "003"), ("added", "japan-lng", "002"),
                       ("removed", "rice", "002"), ("added", "japan-lng", "001")]
    added = lines(result.stdout)[0]
    assert added["entities"] == ["Japan", "LNG"]     # the other configuration's hit
    assert [m["field"] for m in added["matches"]] == ["title", "body", "body"]
    summary = result.stderr.splitlines()
    assert f"japan-lng: 1 story fired; {other} would add 3 and remove 0" in summary
    assert f"rice: 1 story fired; {other} would add 0 and remove 1" in summary
    assert f"korea: 0 stories fired; {other} would add 1 and remove 0" in summary
    assert any(line.startswith("  + ") and line.endswith("Japan Airlines cuts flights")
               for line in summary)


def test_watchlist_limits_the_backtest_and_the_diff(folders) -> None:
    config, other, dumps = folders
    result = invoke("backtest", "--config", str(config), str(dumps), "--watchlist", "rice",
                    "--diff", str(other))
    assert [(x["change"], x["watchlist"]) for x in lines(result.stdout)] == [("removed", "rice")]
    assert [line for line in result.stderr.splitlines() if not line.startswith(" ")][1:] == [
        f"rice: 1 story fired; {other} would add 0 and remove 1"]
    unknown = CliRunner().invoke(main, ["backtest", "--config", str(config), str(dumps),
                                        "--watchlist", "nope"])
    assert unknown.exit_code == 2 and "no watchlist named 'nope'" in unknown.output


def test_the_default_folder_is_newsmon_dump_dir(folders) -> None:
    config, _, dumps = folders
    result = invoke("backtest", "--config", str(config), env={"NEWSMON_DUMP_DIR": str(dumps)})
    assert len(lines(result.stdout)) == 3
    missing = CliRunner().invoke(main, ["backtest", "--config", str(config)],
                                 env={"NEWSMON_DUMP_DIR": str(dumps / "nope")})
    assert missing.exit_code == 1 and "no such folder of dump files" in missing.output


def test_a_file_that_is_not_a_dump_is_reported_and_the_others_still_run(folders) -> None:
    config, _, dumps = folders
    (dumps / "notes.txt").write_text("not a dump\n")
    (dumps / ".tmp-123.txt").write_text("half written")        # a writer's temporary file
    (dumps / "readme.md").write_text("ignored: not .txt")
    result = invoke("backtest", "--config", str(config), str(dumps))
    assert result.exit_code == 1
    assert len(lines(result.stdout)) == 3
    assert f"{dumps / 'notes.txt'}: not a dump file: a dump needs" in result.stderr
    assert ".tmp-123" not in result.stderr
    assert "5 dump files read, 1 skipped (not dump files)" in result.stderr


def test_queries_on_source_or_feed_are_flagged_since_dumps_do_not_record_them(folders) -> None:
    config, _, dumps = folders
    (config / "w.yaml").write_text(CONFIG + "  - name: wire\n    query: 'source:reuters OR "
                                            "feed:tokyo OR Japan'\n")
    result = invoke("backtest", "--config", str(config), str(dumps))
    assert ("watchlist wire: feed: and source: cannot be judged from dump files (they record "
            "neither source nor feed): here they are false") in result.stderr
    assert sum(x["watchlist"] == "wire" for x in lines(result.stdout)) == 4


def test_scan_reads_the_date_of_line_1_before_parsing(tmp_path) -> None:
    old = tmp_path / "old.txt"
    old.write_text(" date 2020-01-01 Old\nbroken second line\n")
    bad = tmp_path / "bad.txt"
    bad.write_text(" date 2030-01-01 New\nbroken second line\n")
    found = list(scan([old, bad], since_day="2025-01-01"))
    assert [type(x) for x in found] == [Skipped] and found[0].file == str(bad)


def test_changes_pair_watchlists_by_name() -> None:
    a, b, c = (WatchlistHit(name, (), ()) for name in "abc")
    assert changes([a, b], [b, c]) == ([c], [a])
    assert changes([], []) == ([], [])
    assert Story("f", Dump("t", "a", datetime(2025, 1, 1), ("p", "q"))).body == "p\nq"
