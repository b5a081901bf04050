"""Log lines: a timestamp on every one, the request id on those of a request, one JSON
object per line with LOG_FORMAT=json, and never a key.

The service's own logger ("customers") and gunicorn's (its error log and its access log,
through `GunicornLogger`, which gunicorn.conf.py names as its logger_class) share the
formats. The access line is written here rather than from gunicorn's format string: it
carries the duration to the microsecond, and its query string with every credential
hidden.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from gunicorn.glogging import Logger

from auth import MINTED_KEY

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
REDACTED = "[redacted]"
# Query parameters whose value is a credential, whatever it looks like.
SECRET_PARAMETER = re.compile(r"key|token|auth|secret|password|credential", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with these secrets and anything shaped like a minted key hidden."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return MINTED_KEY.sub(REDACTED, text)


def redacted_query(query: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """A query string, decoded, with the value of every credential-named parameter and
    every key hidden."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    cleaned = [
        (name, REDACTED if SECRET_PARAMETER.search(name) else redact(value, secrets))
        for name, value in pairs
    ]
    return redact(urlencode(cleaned, safe="/[]:@,", quote_via=quote), secrets)


class RedactingFilter(logging.Filter):
    """The last guard: whatever a line says (a path gunicorn logs at DEBUG, a driver's
    message), the API_KEY setting and anything shaped like a minted key are hidden."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = tuple(secret for secret in secrets if secret)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class DropRequestBytes(logging.Filter):
    """gunicorn's warning about a request it could not parse quotes the offending bytes
    (the request line, a header, a chunk): keep the cause, drop the quote."""

    quoted = re.compile(r":?\s*b?['\"].*", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Invalid request from ip="):
            record.msg, record.args = self.quoted.sub("", message), ()
        return True


class RequestIdFilter(logging.Filter):
    """Stamps every record with the id of the request being served ('-' outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id()
        return True


def _current_request_id() -> str:
    try:
        from flask import g

        return g.get("request_id", "-")
    except RuntimeError:  # outside an app context
        return "-"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, microseconds), level, logger, request_id,
    message, and the fields a record carries in `fields` (the access log's)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The text format, with the record's timestamp on every line of it: a traceback or
    gunicorn's configuration dump too."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" not in text:
            return text
        first, *more = text.split("\n")
        stamp = self.formatTime(record)
        return "\n".join([first, *(f"{stamp} | {line}" for line in more)])


def formatter(log_format: str, text: str = TEXT_FORMAT) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter(text)


def configure(
    logger: logging.Logger, level: str, log_format: str, secrets: tuple[str, ...] = ()
) -> None:
    """Send `logger`'s lines, stamped with the request id, to stderr (gunicorn's error
    log) in `log_format`, with `secrets` hidden. Loggers are process-wide: the last app
    built sets them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(formatter(log_format))
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class GunicornLogger(Logger):
    """gunicorn's logger in the service's formats (LOG_FORMAT), with its own access line."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        log_format = os.environ.get("LOG_FORMAT", "text").lower()
        if log_format not in FORMATS:
            log_format = "text"  # the app refuses it at start, in one line
        error_text = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
        redacting = RedactingFilter((os.environ.get("API_KEY", ""),))
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter(log_format, error_text))
            handler.addFilter(DropRequestBytes())
            handler.addFilter(redacting)
        for handler in self.access_log.handlers:
            handler.setFormatter(formatter(log_format, "%(asctime)s %(message)s"))
            handler.addFilter(redacting)

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        request_id = next(
            (value for name, value in resp.headers if name.lower() == "x-request-id"), "-"
        )
        path = redact(environ.get("PATH_INFO", ""))
        query = redacted_query(environ.get("QUERY_STRING", ""))
        duration_ms = round(request_time.total_seconds() * 1000, 3)
        fields = {
            "method": environ.get("REQUEST_METHOD", "-"),
            "path": path,
            "query": query,
            "status": int(str(resp.status).split()[0]),
            "duration_ms": duration_ms,
            "bytes": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR", "-"),
            "user_agent": redact(environ.get("HTTP_USER_AGENT", "-")),
        }
        target = f"{path}?{query}" if query else path
        message = (
            f'{fields["remote_addr"]} "{fields["method"]} {target}" {fields["status"]}'
            f" {fields['bytes']} {duration_ms:.3f}ms request_id={request_id}"
            f' "{fields["user_agent"]}"'
        )
        self.access_log.info(message, extra={"request_id": request_id, "fields": fields})
