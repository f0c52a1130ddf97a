"""Passwords out of any text the scaler shows: log lines, status messages, CLI errors.

Every log line passes through `redact()` (logs.py), and so does every value an error
quotes (errors.shown), before it is cut short: a URL cut before its "@" would no
longer look like one, and its password's first characters would show.

Pure: the standard library's `re` only.
"""

from __future__ import annotations

import re

# scheme://user:password@  ->  scheme://user:***@ ; and password=... in key=value DSNs.
# Every pattern is anchored so that no character is scanned more than a fixed number of times:
# a log line can hold what a hostile ScaledObject sent, and a backtracking pattern over a long
# run of letters blocks the event loop (and every caller) for seconds.
# One slash is enough: a URL given where a path was expected comes back from pathlib as `scheme:/user:pw@...`.
_SCHEME = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*+:/++")
_USER = re.compile(r"[^:/@\s]*+:")
_PASSWORD_END = re.compile(r"[@\s]")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*+=\s*+)(?:'[^']*+'?|\S++)", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask passwords in URLs and key=value DSNs.

    >>> redact("postgresql://airflow:s3cret@db:5432/airflow failed; password=hunter2 host=db")
    'postgresql://airflow:***@db:5432/airflow failed; password=*** host=db'
    """
    return _KV_PASSWORD.sub(r"\g<head>***", _redact_urls(text))


def _redact_urls(text: str) -> str:
    """Mask the password of every scheme://user:password@ in one left-to-right pass.

    >>> _redact_urls("a://u:p@h b://v:q@i c://w:no-at-sign d:/x:y@z")
    'a://u:***@h b://v:***@i c://w:no-at-sign d:/x:***@z'
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
