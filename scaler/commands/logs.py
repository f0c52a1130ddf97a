"""Log output: plain text for people, one JSON object a line for log pipelines.

Structured fields travel as `extra=` on the log call (scaled_object, demand,
workers, reason, database, ...); the text format shows the message, the JSON
format adds the fields. Every line, whatever its origin, passes through
`redact()`: the scaler never puts a URL's password in a message, and this makes
sure a library's message cannot either.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from scaler.redaction import redact

FORMATS = ("text", "json")

# What a LogRecord has before `extra=` adds to it; everything else is a structured field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact the values, not the encoded line, so the result stays valid JSON.
        return json.dumps({key: redact(v) if isinstance(v, str) else v for key, v in entry.items()}, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
