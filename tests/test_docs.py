"""The documentation names only files that are in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path into the repository (worker/cli.py, docs/service.md, deploy/...), a top-level
# Markdown file (PITFALLS.md), a sample dump file (000_d2c0166b2a2dd97c.txt), or a relative
# Markdown link between pages. Not a glob (worker/*.py), but **worker/x.py** in bold is a name.
_PATH = re.compile(r"(?<![\w/.:-])((?:worker|tests|docs|deploy|schedules)/[\w./-]*[\w/]"
                   r"|[A-Z][A-Z_]+\.md|[0-9]{3}_[0-9a-f]{16}\.txt)(?![\w<{]|\*(?!\*))")
# Named on purpose although not in the repository.
NOT_FILES = {
    "deploy/.env": "the reader makes it from deploy/.env.example",
    "deploy/newsmon-beat": "a Kubernetes Deployment (kubectl exec deploy/NAME)",
}
_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)")


def _named(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return set(_PATH.findall(text)) | {str((page.parent / link).resolve().relative_to(ROOT))
                                       for link in _LINK.findall(text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_a_page_names_exists(page):
    missing = sorted(name for name in _named(page) - set(NOT_FILES)
                     if not (ROOT / name).exists() and not (page.parent / name).exists())
    assert missing == [], f"{page.relative_to(ROOT)} names files that are not here: {missing}"
