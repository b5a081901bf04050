"""Verification: which recorded requests meet what a test expects and, when the count is
not met, the closest others and how each differs (field, wanted, seen).

The one place these verdicts are made: the double answers `POST /_double/verify` with
them, and the pytest plugin only formats the answer, so every language gets the same.
Only the double's own process imports this module (see double.py)."""

from __future__ import annotations

import heapq
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from marshmallow import ValidationError

import schemas
from faults import TOKEN, is_int
from recording import (
    REDACTED,
    SECRET_NAME,
    SECRET_PARAMETER,
    Recorded,
    Redactor,
    masked,
    redacted_json,
    secret_digest,
    too_deep,
)

FIELDS = ("method", "path", "query", "headers", "json", "status", "count")
NEAR_MISSES = 5
NOT_MET = "not_met"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
ANY = None  # a placeholder's place in a parsed pattern


@dataclass
class Expected:
    """What a test expects; a field left None is not checked."""

    method: str | None = None
    path: str | None = None
    # The path's segments when it is a pattern: literal text, or ANY for `{name}`.
    pattern: tuple[str | None, ...] | None = None
    query: dict[str, list[str] | None] | str | None = None
    headers: dict[str, str | None] | None = None
    json: Any = None
    has_json: bool = False
    status: int | None = None
    count: int | None = None
    given: dict[str, Any] = field(default_factory=dict)


def parse(payload: dict[str, Any]) -> Expected:
    """An `Expected` from the body of `POST /_double/verify` (a field given as null is as
    if absent). Raises ValidationError keyed by every bad field at once."""
    errors: dict[str, list[str]] = {key: [schemas.INVALID] for key in payload if key not in FIELDS}
    expected = Expected()
    for key in FIELDS:
        value = payload.get(key)
        if value is None:
            continue
        if not _PARSERS[key](expected, value):
            errors[key] = [schemas.INVALID]
        else:
            expected.given[key] = value
    if errors:
        raise ValidationError(errors)
    return expected


def _method(expected: Expected, value: Any) -> bool:
    if isinstance(value, str) and TOKEN.fullmatch(value):
        expected.method = value.upper()
        return True
    return False


def _path(expected: Expected, value: Any) -> bool:
    if not isinstance(value, str) or not value.startswith("/"):
        return False
    expected.path = value
    if "{" not in value and "}" not in value:
        return True
    pattern, names = [], set()
    for segment in value.split("/")[1:]:
        placeholder = _PLACEHOLDER.fullmatch(segment)
        if placeholder:
            if placeholder.group(1) in names:
                return False
            names.add(placeholder.group(1))
            pattern.append(ANY)
        elif "{" in segment or "}" in segment:
            return False  # a brace that is not a whole `{name}` segment
        else:
            pattern.append(segment)
    expected.pattern = tuple(pattern)
    return True


def _query(expected: Expected, value: Any) -> bool:
    if isinstance(value, str):
        expected.query = value
        return True
    if not isinstance(value, dict):
        return False
    wanted: dict[str, list[str] | None] = {}
    for name, values in value.items():
        if isinstance(values, str):
            wanted[name] = [values]
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            wanted[name] = list(values)
        else:
            return False
    expected.query = wanted
    return True


def _headers(expected: Expected, value: Any) -> bool:
    if not isinstance(value, dict) or not all(
        TOKEN.fullmatch(name) and (text is None or isinstance(text, str))
        for name, text in value.items()
    ):
        return False
    expected.headers = dict(value)
    return True


def _json(expected: Expected, value: Any) -> bool:
    if too_deep(value):
        return False
    expected.json, expected.has_json = value, True
    return True


def _status(expected: Expected, value: Any) -> bool:
    if is_int(value) and 100 <= value <= 599:
        expected.status = value
        return True
    return False


def _count(expected: Expected, value: Any) -> bool:
    if is_int(value) and value >= 0:
        expected.count = value
        return True
    return False


_PARSERS = {
    "method": _method,
    "path": _path,
    "query": _query,
    "headers": _headers,
    "json": _json,
    "status": _status,
    "count": _count,
}


# --- Comparing one record -----------------------------------------------------------------


@dataclass
class Difference:
    field: str
    wanted: Any
    seen: Any
    missing: bool = False

    def as_dict(self) -> dict[str, Any]:
        shown = {"field": self.field, "wanted": self.wanted, "seen": self.seen}
        if self.missing:
            shown["missing"] = True
        return shown


class Comparison:
    """How one record fares: its differences, the criteria it fails, and a distance (each
    failed criterion costs 1, plus how much of it is off, from 0 to 1)."""

    def __init__(self) -> None:
        self.differences: list[Difference] = []
        self.failed: set[str] = set()
        self.distance = 0.0

    def fail(self, criterion: str, off: float, differences: list[Difference]) -> None:
        self.failed.add(criterion)
        self.distance += 1 + min(off, 1.0)
        self.differences.extend(differences)


@dataclass
class _Header:
    name: str
    lower: str
    value: str | None
    shown: str | None  # as a difference shows it: redacted, a secret one masked
    digest: bytes | None  # to tell a secret header's value without keeping it


class Matcher:
    """What a test expects, prepared once for a pass over the log: the wanted values
    redacted for showing, secret headers digested, JSON leaves counted."""

    def __init__(self, expected: Expected, salt: bytes, redactor: Redactor):
        self.expected = expected
        self.redactor = redactor
        self.json = redacted_json(expected.json, redactor)
        self.json_leaves = _leaves(self.json)
        self.query = expected.query
        if isinstance(expected.query, str):
            self.query = redactor.query(expected.query)
        elif expected.query is not None:
            self.query = {
                name: [_shown_parameter(name, value, redactor) for value in values or []]
                for name, values in expected.query.items()
            }
        self.headers = [
            _Header(
                name,
                name.lower(),
                value,
                None if value is None else _shown_header(name, value, redactor),
                None if value is None else secret_digest(salt, value),
            )
            for name, value in (expected.headers or {}).items()
        ]

    def compare(self, entry: Recorded) -> Comparison:
        expected, result = self.expected, Comparison()
        if expected.method is not None and entry.method != expected.method:
            result.fail("method", 1, [Difference("method", expected.method, entry.method)])
        if expected.path is not None:
            _compare_path(expected, entry, result)
        if self.query is not None:
            self._compare_query(entry, result)
        if self.headers:
            self._compare_headers(entry, result)
        if expected.has_json:
            self._compare_json(entry, result)
        if expected.status is not None and entry.status != expected.status:
            result.fail("status", 1, [Difference("status", expected.status, entry.status)])
        return result

    def _compare_query(self, entry: Recorded, result: Comparison) -> None:
        if isinstance(self.query, str):
            if self.query != entry.query:
                result.fail("query", 1, [Difference("query", self.query, entry.query)])
            return
        assert self.query is not None
        seen = entry.parsed_query()
        differences = []
        for name, values in self.query.items():
            if name not in seen:
                differences.append(Difference(f"query.{name}", _one(values), None, missing=True))
            elif seen[name] != values:
                differences.append(Difference(f"query.{name}", _one(values), _one(seen[name])))
        if differences:
            result.fail("query", len(differences) / len(self.query), differences)

    def _compare_headers(self, entry: Recorded, result: Comparison) -> None:
        differences = []
        for header in self.headers:
            label = f"headers.{header.name}"
            seen = entry.header(header.lower)
            if header.value is None:
                if seen is not None:
                    differences.append(Difference(label, None, seen))
            elif seen is None:
                differences.append(Difference(label, header.shown, None, missing=True))
            elif header.lower in entry.secret_headers:
                digest = entry.secret_headers[header.lower]
                if not hmac.compare_digest(header.digest or b"", digest):
                    other = seen + (" (another value)" if seen == header.shown else "")
                    differences.append(Difference(label, header.shown, other))
            elif self.redactor.text(header.value) != seen:
                differences.append(Difference(label, header.shown, seen))
        if differences:
            result.fail("headers", len(differences) / len(self.headers), differences)

    def _compare_json(self, entry: Recorded, result: Comparison) -> None:
        if not entry.body:
            result.fail("json", 1, [Difference("json", self.json, None, missing=True)])
            return
        try:
            body = entry.parsed_body()
        except ValueError:
            seen = entry.body.decode("utf-8", "replace")
            result.fail("json", 1, [Difference("json", self.json, seen)])
            return
        differences: list[Difference] = []
        off = _json_differences(self.json, body, "json", differences)
        if differences:
            result.fail("json", off / self.json_leaves, differences)


def _compare_path(expected: Expected, entry: Recorded, result: Comparison) -> None:
    seen = entry.path.split("/")[1:]
    if expected.pattern is None:
        if entry.path == expected.path:
            return
        wanted: tuple[str | None, ...] = tuple(str(expected.path).split("/")[1:])
    else:
        wanted = expected.pattern
        # A `{name}` takes one segment as sent, decoded: `a%2Fb` is one, `a/b` two.
        seen = list(entry.segments) if entry.segments is not None else seen
        if len(seen) == len(wanted) and all(
            _segment_fits(w, s) for w, s in zip(wanted, seen, strict=True)
        ):
            return
    off = sum(not _segment_fits(w, s) for w, s in zip_longest(wanted, seen, fillvalue=""))
    result.fail(
        "path",
        off / max(len(wanted), len(seen), 1),
        [Difference("path", expected.path, entry.path)],
    )


def _segment_fits(wanted: str | None, seen: str) -> bool:
    return bool(seen) if wanted is ANY else wanted == seen


def _one(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def _shown_header(name: str, value: str, redactor: Redactor) -> str:
    return redactor.text(masked(name, value) if SECRET_NAME.search(name) else value)


def _shown_parameter(name: str, value: str, redactor: Redactor) -> str:
    # A secret-named parameter's value is never recorded: any value matches it.
    return REDACTED if SECRET_PARAMETER.search(name) else redactor.text(value)


def _shown_wanted(given: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """The fields a test gave, as a failure shows them: keys hidden, secret headers masked."""
    shown = redacted_json(given, redactor)
    if isinstance(given.get("headers"), dict):
        shown["headers"] = {
            name: None if value is None else _shown_header(name, value, redactor)
            for name, value in given["headers"].items()
        }
    if isinstance(given.get("query"), dict):
        shown["query"] = {
            name: [_shown_parameter(name, v, redactor) for v in values]
            if isinstance(values, list)
            else _shown_parameter(name, values, redactor)
            for name, values in given["query"].items()
        }
    elif isinstance(given.get("query"), str):
        shown["query"] = redactor.query(given["query"])
    return shown


def _json_differences(wanted: Any, seen: Any, label: str, out: list[Difference]) -> int:
    """Record where `seen` does not hold `wanted` (objects by subset, anything else
    exactly); returns how many of the wanted leaves are off."""
    if isinstance(wanted, dict):
        if not isinstance(seen, dict):
            out.append(Difference(label, wanted, seen))
            return _leaves(wanted)
        off = 0
        for key, value in wanted.items():
            if key not in seen:
                out.append(Difference(f"{label}.{key}", value, None, missing=True))
                off += _leaves(value)
            else:
                off += _json_differences(value, seen[key], f"{label}.{key}", out)
        return off
    if not same(wanted, seen):
        out.append(Difference(label, wanted, seen))
        return _leaves(wanted)
    return 0


def _leaves(value: Any) -> int:
    if isinstance(value, dict) and value:
        return sum(_leaves(v) for v in value.values())
    return 1


def same(a: Any, b: Any) -> bool:
    """JSON equality: a number never equals a string or a boolean, 1 equals 1.0, lists and
    objects compare whole."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


# --- The verdict over the whole log ---------------------------------------------------------


@dataclass
class Verdict:
    expected: Expected
    matches: list[Recorded]
    near_misses: list[tuple[Recorded, Comparison]]
    unmet: list[str]
    recorded: int

    @property
    def met(self) -> bool:
        if self.expected.count is None:
            return bool(self.matches)
        return len(self.matches) == self.expected.count

    def message(self) -> str:
        count = self.expected.count
        if count is None:
            return "No recorded request matches"
        found = len(self.matches)
        if found == 1:
            return f"1 recorded request matches, {count} wanted"
        return f"{found} recorded requests match, {count} wanted"

    def failure(self, redactor: Redactor) -> dict[str, Any]:
        """The body of the 422 (beside status and error)."""
        details = {name: [NOT_MET] for name in self.unmet}
        details["count"] = [NOT_MET]
        return {
            "message": self.message(),
            "error_details": details,
            "wanted": _shown_wanted(self.expected.given, redactor),
            "matched": len(self.matches),
            "recorded": self.recorded,
            "matches": [entry.as_dict() for entry in self.matches[:NEAR_MISSES]],
            "near_misses": [
                {
                    "request": entry.as_dict(),
                    "differences": [d.as_dict() for d in comparison.differences],
                }
                for entry, comparison in self.near_misses
            ],
        }


def verify(
    expected: Expected, entries: Iterable[Recorded], salt: bytes, redactor: Redactor
) -> Verdict:
    """Compare every record; keep the matches (oldest first) and the NEAR_MISSES closest
    others (closest first; the newer first among equals)."""
    matches: list[Recorded] = []
    # The NEAR_MISSES closest so far, as a heap whose top is the farthest of them: the
    # differences of the others are dropped as the pass goes (1,000 records of 1,000
    # differing leaves each would otherwise be a million objects held at once).
    closest: list[tuple[float, int, Recorded, Comparison]] = []
    matcher = Matcher(expected, salt, redactor)
    criteria = {key for key in expected.given if key != "count"}
    met_somewhere: set[str] = set()
    recorded = 0
    for entry in entries:
        recorded += 1
        comparison = matcher.compare(entry)
        met_somewhere |= criteria - comparison.failed
        if not comparison.failed:
            matches.append(entry)
            continue
        # Negated, so that the heap's top is the farthest (the older among equals); ids
        # are unique, so tuples never compare past them.
        miss = (-comparison.distance, entry.id, entry, comparison)
        if len(closest) < NEAR_MISSES:
            heapq.heappush(closest, miss)
        elif miss[:2] > closest[0][:2]:
            heapq.heapreplace(closest, miss)
    closest.sort(key=lambda miss: miss[:2], reverse=True)
    unmet = [key for key in FIELDS if key in criteria and key not in met_somewhere]
    near = [(entry, comparison) for _, _, entry, comparison in closest]
    return Verdict(expected, matches, near, unmet, recorded)
