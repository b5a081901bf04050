"""The double's request log: what each request carried and what it got, every field
redacted, then cut to a bound, so that 1000 records of anything stay a few tens of MB.

Only the double's own process imports this module (see double.py)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode

import auth
import logs
import schemas

LOG_SIZE = 1000
# What one record keeps of each field; a longer one is kept cut to this and marked
# `<field>_truncated`. 1000 records then hold at most ~45 MB, whatever is sent.
BODY_BYTES = 16 * 1024  # the body, and the answer, each
PATH_CHARS = 2048  # the path, and the query, each
HEADERS_CHARS = 4096  # every header's name and value together
METHOD_CHARS = 32
JSON_DEPTH = 100  # objects and lists one inside another, at most
REDACTED = logs.REDACTED
# A secret this long is hidden wherever it appears; a shorter one (a test's "Bearer a")
# only where it stands alone, between characters that are not letters or digits: hiding
# every "a" of a body would say nothing and only grow it.
WHOLE_TOKEN_BELOW = 8
SECRET_PARAMETER = logs.SECRET_PARAMETER  # a query parameter whose value is never kept
SECRET_NAME = re.compile(SECRET_PARAMETER.pattern + "|cookie", re.IGNORECASE)  # a header's
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,19}")


def decoded(text: str) -> str:
    """A WSGI string (PEP 3333 hands bytes over as latin-1) as the UTF-8 the caller sent."""
    return text.encode("latin-1", "replace").decode("utf-8", "replace")


class Redactor:
    """Hides the given secrets and anything shaped like a minted key, in text or bytes."""

    def __init__(self, secrets: Iterable[str]):
        secrets = [secret for secret in secrets if secret]
        parts = []
        for secret in sorted(set(secrets), key=len, reverse=True):
            escaped = re.escape(secret)
            if len(secret) < WHOLE_TOKEN_BELOW:
                escaped = rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"
            parts.append(escaped)
        parts.append(auth.MINTED_KEY.pattern)
        pattern = "|".join(parts)
        # Redacting only the first `limit + margin` characters of a field before cutting it
        # to `limit` hides every secret that starts inside what is kept, whole.
        self.margin = max(len(secret.encode()) for secret in [*secrets, "lk_" + 43 * "x"]) + 1
        self._text = re.compile(pattern)
        self._bytes = re.compile(pattern.encode("utf-8", "surrogateescape"))

    def text(self, value: str) -> str:
        return self._text.sub(REDACTED, value)

    def bytes(self, value: bytes) -> bytes:
        return self._bytes.sub(REDACTED.encode(), value)

    def query(self, query: str) -> str:
        """A query string with the values of secret-named parameters hidden as well."""
        pairs = [
            (self.text(name), REDACTED if SECRET_PARAMETER.search(name) else self.text(value))
            for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        return self.text(urlencode(pairs, safe="/[]:@,", quote_via=quote))


def _cut(value: Any, limit: int, redact: Any, margin: int) -> tuple[Any, bool]:
    """`value` redacted, then cut to `limit` (str or bytes); True when something was cut.
    Only what can reach the kept part is redacted: a field 30 times its limit costs no
    more than one at its limit."""
    redacted = redact(value[: limit + margin])
    return redacted[:limit], len(value) > limit or len(redacted) > limit


def _is_json(data: bytes | None) -> bool:
    if not data:
        return False
    try:
        return not too_deep(schemas.decode_json(data))
    except schemas.BadPayload:
        return False


def redacted_json(value: Any, redactor: Redactor) -> Any:
    """Decoded JSON with every string, and every key, redacted."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {redactor.text(k): redacted_json(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted_json(v, redactor) for v in value]
    return value


def too_deep(value: Any) -> bool:
    """Whether more than JSON_DEPTH objects and lists nest in `value`. Such JSON is text to
    the double: comparing, redacting or writing it again would recurse past Python's limit.
    Checked a level at a time, without recursion."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(JSON_DEPTH):
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


@dataclass
class Recorded:
    """One request as received, each field redacted and bounded, rendered to JSON only
    when asked for."""

    method: str
    path: str
    query: str
    body: bytes
    body_truncated: bool = False
    path_truncated: bool = False
    query_truncated: bool = False
    # The path's segments as sent, each one URL-decoded (`a%2Fb` is one segment, "a/b"),
    # for path patterns; None when the path was cut.
    segments: tuple[str, ...] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    headers_truncated: bool = False
    # Keyed digests of the secret headers' values (Authorization, Cookie, ...), by lower
    # name: a verification can tell the right key from another without keeping either.
    secret_headers: dict[str, bytes] = field(default_factory=dict)
    body_is_json: bool = False
    id: int = 0
    status: int | None = None
    response: bytes | None = None
    response_truncated: bool = False
    response_is_json: bool = False
    fault: str | None = None
    duration_ms: float | None = None
    recorded: bool = False  # in the log already (or left out of it by a reset)

    @classmethod
    def received(
        cls, environ: dict[str, Any], body: bytes, redactor: Redactor, salt: bytes
    ) -> Recorded:
        method = environ.get("REQUEST_METHOD", "")[:METHOD_CHARS]
        margin = redactor.margin
        path, path_cut = _cut(
            decoded(environ.get("PATH_INFO", "")), PATH_CHARS, redactor.text, margin
        )
        query, query_cut = _cut(
            decoded(environ.get("QUERY_STRING", "")), PATH_CHARS, redactor.query, margin
        )
        kept, body_cut = _cut(body, BODY_BYTES, redactor.bytes, margin)
        entry = cls(
            method=method,
            path=path,
            query=query,
            body=kept,
            body_truncated=body_cut,
            path_truncated=path_cut,
            query_truncated=query_cut,
        )
        entry.body_is_json = not entry.body_truncated and _is_json(entry.body)
        if entry.body_is_json and b"\\" in kept:
            entry._hide_escaped_secrets(redactor)
        if not path_cut:
            entry.segments = _segments(environ, redactor)
        entry._take_headers(environ, redactor, salt)
        return entry

    def _hide_escaped_secrets(self, redactor: Redactor) -> None:
        """JSON may spell a secret with escapes (`\\u002d`, PHP's `\\/`), which redacting
        the bytes cannot see: such a body is written again from its values, redacted (as
        ASCII, a lone surrogate staying an escape), and cut if that makes it too long."""
        value = schemas.decode_json(self.body or b"")
        hidden = redacted_json(value, redactor)
        if hidden == value:
            return
        data = json.dumps(hidden, separators=(",", ":")).encode()
        self.body, self.body_truncated = data[:BODY_BYTES], len(data) > BODY_BYTES
        self.body_is_json = not self.body_truncated

    def _take_headers(self, environ: dict[str, Any], redactor: Redactor, salt: bytes) -> None:
        budget = HEADERS_CHARS
        for key, raw in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:]
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and raw:
                name = key
            else:
                continue
            name = name.replace("_", "-").title()[:64]
            value = decoded(raw)
            if SECRET_NAME.search(name):
                self.secret_headers[name.lower()] = secret_digest(salt, value)
                value = masked(name, value)
            room = budget - len(name)
            if room <= 0:
                self.headers_truncated = True
                break
            value, cut = _cut(value, room, redactor.text, redactor.margin)
            self.headers_truncated |= cut
            self.headers[name] = value
            budget -= len(name) + len(value)

    def answered(self, status_line: str, data: bytes, redactor: Redactor) -> None:
        self.status = int(status_line.split(" ", 1)[0])
        self.response, self.response_truncated = _cut(
            data, BODY_BYTES, redactor.bytes, redactor.margin
        )
        self.response_is_json = not self.response_truncated and _is_json(self.response)

    def parsed_body(self) -> Any:
        """The body as JSON; raises ValueError when it is not JSON (or was cut)."""
        if not self.body_is_json:
            raise ValueError("not JSON")
        return schemas.decode_json(self.body)

    def header(self, lower_name: str) -> str | None:
        for name, value in self.headers.items():
            if name.lower() == lower_name:
                return value
        return None

    def parsed_query(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def to_json(self) -> str:
        head = {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "status": self.status,
            "fault": self.fault,
            "duration_ms": self.duration_ms,
            "path_truncated": self.path_truncated,
            "query_truncated": self.query_truncated,
            "headers_truncated": self.headers_truncated,
            "body_truncated": self.body_truncated,
            "response_truncated": self.response_truncated,
        }
        text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        body = _json_or_text(self.body, self.body_is_json)
        response = _json_or_text(self.response, self.response_is_json)
        return f'{text},"body":{body},"response":{response}}}'

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())


def secret_digest(salt: bytes, value: str) -> bytes:
    return hmac.new(salt, value.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()


def masked(name: str, value: str) -> str:
    """A secret header's value as shown: `Bearer [redacted]`, or `[redacted]`."""
    scheme, space, _ = value.strip().partition(" ")
    if name.lower().endswith("authorization") and space and _SCHEME.fullmatch(scheme):
        return f"{scheme} {REDACTED}"
    return REDACTED


def _segments(environ: dict[str, Any], redactor: Redactor) -> tuple[str, ...]:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    raw = decoded(raw).split("?", 1)[0]
    if "://" in raw:  # the absolute form, http://host/path
        raw = "/" + raw.split("://", 1)[1].partition("/")[2]
    return tuple(redactor.text(unquote(segment)) for segment in raw.split("/")[1:])


def _json_or_text(data: bytes | None, is_json: bool) -> str:
    """Recorded bytes as a JSON value: the JSON they are (spliced in as they are, never
    parsed into objects: a body of 16 KiB of `{}`s would take megabytes), else text."""
    if not data:
        return "null"
    if is_json:
        return data.decode("utf-8")
    return json.dumps(data.decode("utf-8", "replace"), ensure_ascii=False)


class RequestLog:
    """The last LOG_SIZE records, oldest first, numbered from 1. A reset empties it,
    numbers from 1 again, and wakes every request waiting out a delay, which then finds
    its generation gone."""

    def __init__(self) -> None:
        self._entries: deque[Recorded] = deque(maxlen=LOG_SIZE)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.generation = 0
        self.wake = threading.Event()
        self.salt = secrets.token_bytes(32)  # for secret_digest, this process only

    def current(self) -> tuple[int, threading.Event]:
        """The generation a request starts in, and the event a reset sets to end it."""
        with self._lock:
            return self.generation, self.wake

    def append(self, entry: Recorded, generation: int) -> None:
        with self._lock:
            if generation == self.generation:  # else a reset came meanwhile
                entry.id = next(self._ids)
                self._entries.append(entry)

    def entries(self, last: int = LOG_SIZE) -> list[Recorded]:
        with self._lock:
            entries = list(self._entries)
        return entries[-last:] if last else []

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._ids = itertools.count(1)  # each test's requests are #1, #2, ...
            self.generation += 1
            woken, self.wake = self.wake, threading.Event()
        woken.set()


def json_array(name: str, entries: Iterable[Recorded]) -> Iterator[str]:
    """`{"<name>":[...]}` in pieces of about 64 KiB, rendered a record at a time: answering
    never holds more than a piece beside the log."""
    piece = [f'{{"{name}":[']
    size = 0
    for position, entry in enumerate(entries):
        text = ("," if position else "") + entry.to_json()
        piece.append(text)
        size += len(text)
        if size >= 65_536:
            yield "".join(piece)
            piece, size = [], 0
    piece.append("]}")
    yield "".join(piece)
