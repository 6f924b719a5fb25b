"""One dump folder written by several worker processes at once: every file gets its own
sequence number of the day (handed out by Redis), and an article processed by two workers at
once is one file."""

from __future__ import annotations

import re
import subprocess
import sys

# One worker: writes the dumps of articles ``first`` .. ``first + count - 1`` (all of one day).
WRITER = """
import sys
import time
from datetime import datetime, timezone
from worker.dump import dump_of, render_dump
from worker.models import Article
from worker.pipeline import write_story_dump
from worker.store import Store
url, root, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store.from_url(url)
for n in range(first, first + count):
    art = Article(id=f"{n:016x}", canonical_url=f"https://news.example/{n}",
                  url=f"https://news.example/{n}", guid=None, title=f"Story {n}", author="A",
                  source="Wire", published=datetime(2025, 2, 6, 12, tzinfo=timezone.utc),
                  paragraphs=(f"Body of story {n}.",), feed="https://news.example/rss")
    write_story_dump(store, root, art.id, render_dump(dump_of(art)), time.time())
"""


def _writers(redis_url: str, root: str, ranges: list[tuple[int, int]]) -> None:
    children = [subprocess.Popen([sys.executable, "-c", WRITER, redis_url, root, str(first),
                                  str(count)], stderr=subprocess.PIPE) for first, count in ranges]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()


def test_concurrent_workers_never_share_a_sequence_number(tmp_path, redis_url):
    _writers(redis_url, str(tmp_path), [(i * 60, 60) for i in range(4)])
    names = sorted(p.name for p in (tmp_path / "2025-02-06").iterdir())
    seqs = sorted(int(re.match(r"(\d+)_", n).group(1)) for n in names)
    assert seqs == list(range(240))  # unique and without gaps across the four workers
    assert len({n.split("_")[1] for n in names}) == 240  # one file per article


def test_the_same_articles_processed_by_several_workers_are_one_file_each(tmp_path, redis_url):
    _writers(redis_url, str(tmp_path), [(0, 50)] * 4)  # every worker gets the same articles
    names = sorted(p.name for p in (tmp_path / "2025-02-06").iterdir())
    assert len(names) == 50
    assert sorted(int(n.split("_")[0]) for n in names) == list(range(50))
