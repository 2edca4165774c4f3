"""Structured logs: one JSON object a line, carrying the id of the request being served.

Every process writes through :class:`JsonFormatter`: the CLI, a single-worker `serve`, and
under gunicorn the master and each worker (shortener/worker.py routes gunicorn's own loggers
here). Credentials are redacted from every line, whoever logs it: aiohttp quotes the raw bytes
of a malformed header, API key included, in the 400 it logs.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from types import TracebackType

import orjson

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REDACTED = "[redacted]"

# What a log line must never carry, each with what stays: the API key shape (sk_...), the
# value of a credential header, a Bearer/Basic token, the password of a URL's userinfo.
_SECRETS = (
    (re.compile(r"\bsk_[A-Za-z0-9_\-]+"), "sk_" + REDACTED),
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|x-api-key|(?:set-)?cookie)(\s*[:=]\s*)[^\r\n'\"\\]+"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"\\,;]+"), r"\1\2" + REDACTED),
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@'\"]*:)[^@\s/'\"]+@"), r"\1" + REDACTED + "@"),
)


# aiohttp names the peer of a request it could not handle (behind nginx that is nginx, but
# served directly it is the client) and quotes the raw header line it choked on, which may
# be a whole User-Agent or Referer. No log line holds those (docs/ANALYTICS.md): the line is
# kept without the address, and the quoted header with its name only.
_NAMES_THE_PEER = {"Error handling request from %s": "Error handling request"}
_QUOTED_HEADER = re.compile(r"""\bb(['"])([!#$%&'*+.^_`|~0-9A-Za-z-]+:)?.*?\1$""", re.MULTILINE)


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by [redacted]."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _header_name_only(quoted: re.Match[str]) -> str:
    quote, name = quoted[1], quoted[2]
    return f"b{quote}{name + ' ' if name else ''}{REDACTED}{quote}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        without_peer = _NAMES_THE_PEER.get(str(record.msg))
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(without_peer or record.getMessage()),
            "request_id": REQUEST_ID.get(),
        }
        if record.exc_info:
            exception = self.formatException(record.exc_info)
            if without_peer:
                exception = _QUOTED_HEADER.sub(_header_name_only, exception)
            entry["exception"] = redact(exception)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    """JSON lines on stderr for this process: its loggers, Python's warnings and whatever
    exception would otherwise end it with a plain-text traceback."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("shortener").critical(
        "uncaught %s", kind.__name__, exc_info=(kind, value, traceback)
    )
