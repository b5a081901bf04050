"""The double's faults: what `POST /_double/faults` accepts, which requests a fault
matches, the registry that hands out its uses, and the answer a `status` fault sends.

Only the double's own process imports this module (see double.py)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from marshmallow import ValidationError
from werkzeug.http import HTTP_STATUS_CODES

import app as service
import schemas

CONTROL_PREFIX = "/_double/"
API_PREFIX = "/api/v1/"
MAX_DELAY_MS = 60_000
KEYS = ("method", "path", "status", "headers", "delay_ms", "action", "times")
ACTIONS = ("drop", "drop_after_write")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
# Headers a fault may not set: they frame the message or belong to one connection
# (RFC 9110 section 7.6.1), and a wrong one would break the client's parsing, not test it.
FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Control characters, DEL included; a tab is a legal field-value character.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def is_control(path: str) -> bool:
    return path.startswith(CONTROL_PREFIX)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Fault:
    """A registered fault: what it matches, what it does, how many more times."""

    id: str
    method: str | None = None
    path: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: int = 0
    action: str | None = None
    times: int | None = 1
    remaining: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return path.startswith(API_PREFIX)
        return self.path == path

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "headers": dict(self.headers),
            "delay_ms": self.delay_ms,
            "action": self.action,
            "times": self.times,
            "remaining": self.remaining,
        }


def parse(definition: Any) -> Fault:
    """A `Fault` from the `fault` object of `POST /_double/faults`. Raises BadPayload when
    it is not an object, ValidationError keyed by every offending key at once."""
    if not isinstance(definition, dict):
        raise schemas.BadPayload("fault must be a JSON object")
    errors: dict[str, list[str]] = {key: [schemas.INVALID] for key in definition if key not in KEYS}
    fault = Fault(id=uuid.uuid4().hex[:12])
    for key, parse_value in _PARSERS.items():
        if key not in definition or (definition[key] is None and key != "times"):
            continue  # absent: the default (`times` alone takes null: "every one")
        parsed = parse_value(definition[key])
        if parsed is _INVALID:
            errors[key] = [schemas.INVALID]
        else:
            setattr(fault, key, parsed)
    if fault.action is not None and definition.get("status") is not None:
        errors["action"] = [schemas.INVALID]  # an answer and no answer at once
    if errors:
        raise ValidationError(errors)
    fault.remaining = fault.times
    return fault


_INVALID = object()


def _method(value: Any) -> Any:
    return value.upper() if isinstance(value, str) and TOKEN.fullmatch(value) else _INVALID


def _path(value: Any) -> Any:
    ok = isinstance(value, str) and value.startswith("/") and not is_control(value)
    return value if ok else _INVALID


def _status(value: Any) -> Any:
    return value if is_int(value) and 400 <= value <= 599 else _INVALID


def _headers(value: Any) -> Any:
    if isinstance(value, dict) and all(_is_header(name, text) for name, text in value.items()):
        return dict(value)
    return _INVALID


def _is_header(name: Any, value: Any) -> bool:
    return (
        isinstance(name, str)
        and TOKEN.fullmatch(name) is not None
        and name.lower() not in FORBIDDEN_HEADERS
        and not name.lower().startswith("proxy-")
        and isinstance(value, str)
        and value.isascii()
        and not _CONTROL.search(value)
    )


def _delay(value: Any) -> Any:
    return value if is_int(value) and 0 <= value <= MAX_DELAY_MS else _INVALID


def _action(value: Any) -> Any:
    return value if value in ACTIONS else _INVALID


def _times(value: Any) -> Any:
    return value if value is None or (is_int(value) and value >= 1) else _INVALID


_PARSERS = {
    "method": _method,
    "path": _path,
    "status": _status,
    "headers": _headers,
    "delay_ms": _delay,
    "action": _action,
    "times": _times,
}


class Faults:
    """The registered faults, tried in the order registered."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault that matches and has uses left, with one use counted."""
        with self._lock:
            for fault in self._faults:
                if fault.remaining != 0 and fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def listed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


def answer(fault: Fault, environ: dict[str, Any]) -> tuple[str, list, bytes]:
    """The answer of a `status` fault: the error envelope, with the fault's headers (one of
    the same name replaces the envelope's own, `Content-Type` say)."""
    status = fault.status
    assert status is not None
    title = service.ERROR_TITLES.get(status, HTTP_STATUS_CODES.get(status, "Error"))
    body: dict[str, Any] = {"status": status, "error": title}
    if status == 400:
        body["message"] = "A fault registered on the test double"
    data = json.dumps(body, separators=(",", ":")).encode()
    own = {name.lower() for name in fault.headers}
    headers = [
        (name, value)
        for name, value in (
            ("Content-Type", "application/json"),
            ("X-Request-Id", service.request_id(environ.get("HTTP_X_REQUEST_ID", ""))),
        )
        if name.lower() not in own
    ]
    headers += [("Content-Length", str(len(data))), *fault.headers.items()]
    return f"{status} {title}", headers, data
