"""Log lines: a timestamp on every one, the request id on those of a request, one JSON
object per line with LOG_FORMAT=json, and never a key.

The service's own logger ("customers") and gunicorn's (its error log and its access log,
through `GunicornLogger`, which gunicorn.conf.py names as its logger_class) share the
formats. The access line is written here rather than from gunicorn's format string: it
carries the duration to the microsecond, and its query string with every credential
hidden. Every finished line, of either format, has every key hidden (Redactor), and in
text what a client wrote is escaped (`escaped`), so that no line can be forged.
"""

from __future__ import annotations

import functools
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
# An API_KEY this long is hidden wherever it appears. A shorter one (a toy key for a first
# try, "test-key") is hidden where it stands as a word of its own (not inside a longer run
# of the characters a key is made of): hiding every "a" of a line for a one-letter key
# would make the logs unreadable, and show the key anyway.
WHOLE_WORD_BELOW = 16
_KEY_CHARACTER = r"A-Za-z0-9_-"
# What a text line shows escaped, as \xHH (\uHHHH past Latin-1): the quote that ends a
# field, the backslash that starts an escape, and every control character (a line break,
# a carriage return, ESC) and line separator, so that nothing a client sends can end a
# line, start a forged one or move a terminal's cursor.
_UNSAFE_IN_FIELD = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
# What a text line may not hold anywhere (its own line breaks are handled apart).
_UNSAFE_IN_LINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# What JSON leaves as is but a reader splitting lines (Python's splitlines) would break on.
_UNSAFE_IN_JSON = re.compile(r"[\x7f-\x9f\u2028\u2029]")


def _hex_escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def wsgi_text(value: str) -> str:
    """A WSGI string (the request's bytes, one character each) as the text it spells in
    UTF-8, bytes that are not as U+FFFD."""
    if value.isascii():
        return value
    return value.encode("latin-1", "replace").decode("utf-8", "replace")


def escaped(value: str) -> str:
    """A field of a text line: quotes, backslashes and control characters as \\xHH."""
    return _UNSAFE_IN_FIELD.sub(_hex_escape, value)


class Redactor:
    """Hides the API_KEY setting (`secrets`) and anything shaped like a minted key, in a
    field or in a whole line, raw or as a text or JSON line writes it."""

    def __init__(self, secrets: tuple[str, ...] | list[str] = ()):
        self.secrets = tuple(secret for secret in secrets if secret)
        forms: dict[str, re.Pattern | None] = {}
        for secret in self.secrets:
            for form in (secret, escaped(secret), json.dumps(secret, ensure_ascii=False)[1:-1]):
                if len(secret) >= WHOLE_WORD_BELOW:
                    forms[form] = None  # a plain replace
                else:
                    forms[form] = re.compile(
                        rf"(?<![{_KEY_CHARACTER}]){re.escape(form)}(?![{_KEY_CHARACTER}])"
                    )
        self.forms = forms

    def redact(self, text: str) -> str:
        for form, word in self.forms.items():
            if form in text:
                text = text.replace(form, REDACTED) if word is None else word.sub(REDACTED, text)
        if "lk_" in text:
            text = MINTED_KEY.sub(REDACTED, text)
        return text

    def holds_key(self, text: str) -> bool:
        return self.redact(text) != text


@functools.lru_cache(maxsize=64)
def _redactor(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with these secrets and anything shaped like a minted key hidden."""
    return _redactor(tuple(secrets)).redact(text)


def redacted_query(query: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """A query string, decoded, with the value of every credential-named parameter and
    every key hidden."""
    if not query:
        return ""
    redactor = _redactor(tuple(secrets))
    pairs = parse_qsl(query, keep_blank_values=True)
    cleaned = [
        (
            redactor.redact(name),
            REDACTED if SECRET_PARAMETER.search(name) else redactor.redact(value),
        )
        for name, value in pairs
    ]
    return redactor.redact(urlencode(cleaned, safe="/[]:@,", quote_via=quote))


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
    message, and the fields a record carries in `fields` (the access log's); every key
    hidden, in any of them."""

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor or Redactor()

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
        text = json.dumps(line, ensure_ascii=False, default=str)
        if _UNSAFE_IN_JSON.search(text):
            text = _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        return self.redactor.redact(text)


class TextFormatter(logging.Formatter):
    """The text format, with the record's timestamp on every line of it (a traceback,
    gunicorn's configuration dump): a continuation line reads "<timestamp> | ...", which
    no first line does. Control characters are escaped as \\xHH; every key is hidden."""

    def __init__(self, fmt: str, redactor: Redactor | None = None):
        super().__init__(fmt)
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        text = self.redactor.redact(super().format(record))
        if _UNSAFE_IN_LINE.search(text):
            text = _UNSAFE_IN_LINE.sub(_hex_escape, text)
        if "\n" not in text:
            return text
        first, *more = text.split("\n")
        stamp = self.formatTime(record)
        return "\n".join([first, *(f"{stamp} | {line}" for line in more)])


def formatter(
    log_format: str, text: str = TEXT_FORMAT, redactor: Redactor | None = None
) -> logging.Formatter:
    return JsonFormatter(redactor) if log_format == "json" else TextFormatter(text, redactor)


def configure(
    logger: logging.Logger, level: str, log_format: str, secrets: tuple[str, ...] = ()
) -> None:
    """Send `logger`'s lines, stamped with the request id, to stderr (gunicorn's error
    log) in `log_format`, with `secrets` hidden. Loggers are process-wide: the last app
    built sets them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(log_format, TEXT_FORMAT, Redactor(secrets)))
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
        self.redactor = Redactor((os.environ.get("API_KEY", ""),))
        self.log_format = log_format
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter(log_format, error_text, self.redactor))
            handler.addFilter(DropRequestBytes())
        for handler in self.access_log.handlers:
            handler.setFormatter(formatter(log_format, "%(asctime)s %(message)s", self.redactor))

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        """One line a request: every field that a client wrote (path, query, method,
        user agent, a forwarded address, the request id) with the keys hidden, and in the
        text format escaped, so that it can neither show a key nor end the line."""
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        hide = self.redactor.redact
        request_id = "-"
        for name, value in resp.headers:
            if name.lower() == "x-request-id":
                request_id = hide(value)
                break
        fields = {
            "method": hide(environ.get("REQUEST_METHOD", "-")),
            "path": hide(wsgi_text(environ.get("PATH_INFO", ""))),
            "query": redacted_query(environ.get("QUERY_STRING", ""), self.redactor.secrets),
            "status": int(str(resp.status).split(None, 1)[0]),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote_addr": hide(environ.get("REMOTE_ADDR", "-")),
            "user_agent": hide(wsgi_text(environ.get("HTTP_USER_AGENT", "-"))),
        }
        target = fields["path"] + ("?" + fields["query"] if fields["query"] else "")
        message = (
            f'{escaped(fields["remote_addr"])} "{escaped(fields["method"])} {escaped(target)}"'
            f" {fields['status']} {fields['bytes']} {fields['duration_ms']:.3f}ms"
            f' request_id={escaped(request_id)} "{escaped(fields["user_agent"])}"'
        )
        self.access_log.info(message, extra={"request_id": request_id, "fields": fields})
