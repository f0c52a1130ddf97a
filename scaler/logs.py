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
import re
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")

# scheme://user:password@  ->  scheme://user:***@ ; and password=... in key=value DSNs.
# Every pattern is anchored so that no character is scanned more than a fixed number of times:
# a log line can hold what a hostile ScaledObject sent, and a backtracking pattern over a long
# run of letters blocks the event loop (and every caller) for seconds.
_SCHEME = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*+://")
_USER = re.compile(r"[^:/@\s]*+:")
_PASSWORD_END = re.compile(r"[@\s]")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*+=\s*+)(?:'[^']*+'?|\S++)", re.IGNORECASE)
# What a LogRecord has before `extra=` adds to it; everything else is a structured field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """Mask passwords in URLs and key=value DSNs.

    >>> redact("postgresql://airflow:s3cret@db:5432/airflow failed; password=hunter2 host=db")
    'postgresql://airflow:***@db:5432/airflow failed; password=*** host=db'
    """
    return _KV_PASSWORD.sub(r"\g<head>***", _redact_urls(text))


def _redact_urls(text: str) -> str:
    """Mask the password of every scheme://user:password@ in one left-to-right pass.

    >>> _redact_urls("a://u:p@h b://v:q@i c://w:no-at-sign")
    'a://u:***@h b://v:***@i c://w:no-at-sign'
    """
    parts: list[str] = []
    done = 0  # text[:done] is in parts
    end = -1  # where the last search for the password's end found "@" or white space (-1: not searched)
    for scheme in _SCHEME.finditer(text):
        if scheme.start() < done:
            continue  # inside a password already masked
        user = _USER.match(text, scheme.end())
        if user is None:
            continue
        start = user.end()
        # Passwords of successive URLs end at the same "@" or space until that one is passed:
        # remember it rather than search the same stretch again (a line of many "x://y:" stays linear).
        if end < start:
            found = _PASSWORD_END.search(text, start)
            end = found.start() if found else len(text)
        if end < len(text) and text[end] == "@":
            parts.append(text[done:start])
            parts.append("***")
            done = end
    parts.append(text[done:])
    return "".join(parts)


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
