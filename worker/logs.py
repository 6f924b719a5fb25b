"""Logging set-up: one line per event, as text or (NEWSMON_LOG_FORMAT=json) one JSON object.

Both formats pass every message and traceback through the redaction (worker/redact.py). The
text format cannot be forged: control characters (a newline in an item URL...) are escaped,
so every line that starts with a timestamp is a record newsmon wrote, and a traceback's lines
are indented under its record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from worker.redact import redact

# C0 and C1 controls, DEL, Unicode line and paragraph separators, and the bidirectional
# overrides that can make a line display as something else.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` on one line: every unsafe character as a visible escape (\\n, \\x1b, \\u2028)."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(0)) or (
        f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}"),
        text)


class TextFormatter(logging.Formatter):
    """``time level logger message``: the message redacted and on one line; a traceback
    follows on lines indented by four spaces."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(redact(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802
        text = redact(super().formatException(ei))  # type: ignore[arg-type]
        return "\n".join("    " + escape_controls(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join("    " + escape_controls(line) for line in redact(stack_info).splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
               "level": record.levelname, "logger": record.name,
               "message": redact(record.getMessage())}
        for key in ("feed", "story", "alert", "article"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: int | str = logging.INFO) -> None:
    """newsmon's loggers at ``level`` (a name such as "info", or a number); Celery and other
    libraries at WARNING, unless ``level`` is debug (then they log at INFO too)."""
    if isinstance(level, str):
        level = int(getattr(logging, level.upper()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if level <= logging.DEBUG else max(level, logging.WARNING))
    for ours in ("newsmon", "worker"):
        logging.getLogger(ours).setLevel(level)
    logging.captureWarnings(True)  # Python warnings become log lines (JSON too)
    # httpx logs every request at INFO; our own fetch log line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
