"""worker/logs.py: one line per record in the text format (no forged lines), and the redaction
in both formats."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from worker.logs import configure_logging, escape_controls

FORGED = "2026-01-01 00:00:00,000 ERROR newsmon.deliver alert=alert_x outcome=dead"
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


@pytest.fixture
def stderr():
    """What configure_logging's handler writes (pytest swaps sys.stderr between phases, so
    the handler's stream is replaced instead)."""
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield out
    root.handlers[:], root.level = saved
    logging.captureWarnings(False)


def configure(fmt: str, out: io.StringIO) -> None:
    configure_logging(fmt)
    logging.getLogger().handlers[0].setStream(out)  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028",
                                 "\u2029", "\x1b[2K\r", "\x00"])
def test_a_line_break_in_a_logged_value_cannot_start_a_record(stderr, bad):
    configure("text", stderr)
    url = f"https://news.example/a{bad}{FORGED}"
    logging.getLogger("newsmon.pipeline").warning("feed=wire entry failed link=%s", url)
    text = stderr.getvalue()
    assert len(text.splitlines()) == 1, text
    assert text.count("ERROR") == 1 and RECORD_START.match(text)


def test_a_traceback_is_indented_under_its_record_even_when_its_message_has_line_breaks(stderr):
    configure("text", stderr)
    try:
        raise ValueError(f"bad link\n{FORGED}")
    except ValueError:
        logging.getLogger("newsmon.pipeline").exception("entry failed")
    lines = stderr.getvalue().splitlines()
    assert RECORD_START.match(lines[0]) and len(lines) > 2
    assert all(line.startswith("    ") for line in lines[1:])
    assert sum(1 for line in lines if RECORD_START.match(line)) == 1


def test_bidirectional_overrides_and_escapes_are_shown_escaped():
    assert escape_controls("a\u202eb\x1bc\td\ne") == "a\\u202eb\\x1bc\\td\\ne"
    assert escape_controls("Tokyo 東京 café") == "Tokyo 東京 café"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_both_formats_redact_credentials(stderr, fmt):
    configure(fmt, stderr)
    log = logging.getLogger("newsmon.pipeline")
    log.warning("feed=wire reason=redirect loop at https://bob:pw_SECRET1@feeds.example/rss"
                "?apikey=KEY_SECRET2&page=2")
    try:
        raise RuntimeError("sig=SIG_SECRET3 whsec_U0VDUkVUNA==")
    except RuntimeError:
        log.exception("oops")
    text = stderr.getvalue()
    for secret in ("pw_SECRET1", "KEY_SECRET2", "SIG_SECRET3", "U0VDUkVUNA"):
        assert secret not in text
    assert "page=2" in text and "feeds.example/rss" in text
    if fmt == "json":
        assert [json.loads(line)["level"] for line in text.splitlines()] == ["WARNING", "ERROR"]
