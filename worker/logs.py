"""Logging set-up: one line per event, as text or (NEWSMON_LOG_FORMAT=json) one JSON object."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in ("feed", "story", "alert", "article"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: int | str = logging.INFO) -> None:
    """newsmon's loggers at ``level`` (a name such as "info", or a number); Celery and other
    libraries at WARNING, unless ``level`` is debug (then they log at INFO too)."""
    if isinstance(level, str):
        level = int(getattr(logging, level.upper()))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if level <= logging.DEBUG else max(level, logging.WARNING))
    for ours in ("newsmon", "worker"):
        logging.getLogger(ours).setLevel(level)
    logging.captureWarnings(True)  # Python warnings become log lines (JSON too)
    # httpx logs every request at INFO; our own fetch log line says what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
