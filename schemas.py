"""The wire format: strict JSON in, the customer object out, and the contract's error codes.

Knows no HTTP and no database. `load_customer` turns a decoded request body into the
fields to write; `dump_customer` turns a stored row into the customer object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import pycountry
from marshmallow import EXCLUDE, Schema, ValidationError, fields

# The contract's 422 codes.
MANDATORY = "value_is_mandatory"
INVALID = "value_is_invalid"
TOO_LONG = "value_is_too_long"
NOT_A_COUNTRY = "not_a_valid_country_code"

# Maximum lengths, in characters. URLs get more room: signed CDN links to a logo
# routinely pass 255 characters.
DEFAULT_MAX_LENGTH = 255
URL_MAX_LENGTH = 2048

# Pagination of the list route. The service and the OpenAPI document both read these.
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
MAX_PAGE = 999_999_999

# C0 controls other than tab, LF and CR, and lone surrogates (JSON's \ud800 escapes),
# which are not characters at all and cannot be stored as UTF-8.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")

COUNTRY_CODES = frozenset(country.alpha_2 for country in pycountry.countries)

CUSTOMER_FIELDS = (
    "customer_id",
    "address_line1",
    "address_line2",
    "city",
    "country",
    "email",
    "legal_name",
    "legal_number",
    "logo_url",
    "name",
    "phone",
    "state",
    "url",
    "zipcode",
)


class BadPayload(ValueError):
    """The body is not a JSON object of the expected envelope (a 400, not a 422). Its
    text is the 400's `message`: it names the cause and never quotes the body."""


class CustomerString(fields.Field):
    """A string field of the customer: text as sent, or a JSON integer as its decimal text.

    `mandatory` fields reject null and blank values with `value_is_mandatory`.
    """

    default_error_messages = {
        "required": MANDATORY,
        "null": MANDATORY,
        "mandatory": MANDATORY,
        "invalid": INVALID,
        "too_long": TOO_LONG,
    }

    def __init__(self, *, max_length: int = DEFAULT_MAX_LENGTH, mandatory: bool = False, **kwargs):
        super().__init__(allow_none=not mandatory, **kwargs)
        self.max_length = max_length
        self.mandatory = mandatory

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs) -> str:
        # bool is a subclass of int in Python; JSON true/false is not a number.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.make_error("invalid")
        text = str(value) if isinstance(value, int) else value
        if _FORBIDDEN.search(text):
            raise self.make_error("invalid")
        if len(text) > self.max_length:
            raise self.make_error("too_long")
        if self.mandatory and not text.strip():
            raise self.make_error("mandatory")
        return text

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs) -> Any:
        return value


class CountryCode(CustomerString):
    """ISO 3166-1 alpha-2, any letter case in, upper case out."""

    default_error_messages = {"not_a_country": NOT_A_COUNTRY}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        # Only ASCII letters make a code: "ıt".upper() and "ſe".upper() are "IT" and "SE".
        code = text.upper() if text.isascii() else ""
        if code not in COUNTRY_CODES:
            raise self.make_error("not_a_country")
        return code


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class UtcTimestamp(fields.Field):
    """A naive UTC datetime rendered as ISO 8601 with whole seconds and a `Z`."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs) -> Any:
        return None if value is None else value.strftime(TIMESTAMP_FORMAT)


class CustomerSchema(Schema):
    """The customer object: what a caller may send, and what the service answers."""

    class Meta:
        unknown = EXCLUDE  # Lago's clients send keys this contract does not list.

    lago_id = fields.UUID(dump_only=True)
    customer_id = CustomerString(required=True, mandatory=True)
    address_line1 = CustomerString()
    address_line2 = CustomerString()
    city = CustomerString()
    country = CountryCode()
    created_at = UtcTimestamp(dump_only=True)
    email = CustomerString()
    legal_name = CustomerString()
    legal_number = CustomerString()
    logo_url = CustomerString(max_length=URL_MAX_LENGTH)
    # Required when creating, which only the database can tell; when sent it may not be
    # null or blank, because null cannot clear it.
    name = CustomerString(mandatory=True)
    phone = CustomerString()
    state = CustomerString()
    url = CustomerString(max_length=URL_MAX_LENGTH)
    zipcode = CustomerString()


class SeedCustomerSchema(CustomerSchema):
    """A customer of a test double's seed file: the API's own shape, where `lago_id` and
    `created_at` may be given (to pin them) or left out (new ones are made)."""

    lago_id = fields.UUID(load_default=None, error_messages={"invalid_uuid": INVALID})
    created_at = fields.NaiveDateTime(
        format="iso", timezone=UTC, load_default=None, error_messages={"invalid": INVALID}
    )
    name = CustomerString(required=True, mandatory=True)


_customer_schema = CustomerSchema()
_seed_schema = SeedCustomerSchema()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes) -> Any:
    """Parse a body as strict RFC 8259 JSON: UTF-8 only, no NaN or Infinity.

    Raises `BadPayload` for anything else, including nesting too deep to parse.
    """
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadPayload("The body is not strict JSON (RFC 8259, UTF-8)") from exc


def load_customer(payload: Any) -> dict[str, str | None]:
    """Validate a decoded `{"customer": {...}}` body; return only the fields sent.

    A field absent from the result was absent from the request (keep the stored
    value); a field mapped to None was sent as null (clear it).
    Raises `BadPayload` for a malformed envelope and `ValidationError` with
    `{field: [code]}` messages, every failing field at once, for broken rules.
    """
    if not isinstance(payload, dict):
        raise BadPayload("The body must be a JSON object")
    customer = payload.get("customer")
    if not isinstance(customer, dict) or not customer:
        raise BadPayload("customer must be a non-empty JSON object")
    return _customer_schema.load(customer)


def load_seed(payload: Any) -> list[dict[str, Any]]:
    """The customers of a seed document `{"customers": [...]}`, each validated like an
    upsert (plus optional `lago_id` and `created_at`). Raises `BadPayload` for a bad
    envelope and `ValidationError` keyed by position for bad customers."""
    if not isinstance(payload, dict) or not isinstance(payload.get("customers"), list):
        raise BadPayload('a seed is {"customers": [...]}')
    customers = payload["customers"]
    if not all(isinstance(customer, dict) for customer in customers):
        raise BadPayload("every customer of a seed is an object")
    return _seed_schema.load(customers, many=True)


_OBJECT_FIELDS = tuple(_customer_schema.dump_fields)  # the schema's order: the contract's


def dump_customer(row: Mapping[str, Any]) -> dict[str, Any]:
    """The customer object of the contract, every key present, in the contract's order.

    Written out rather than `CustomerSchema().dump(row)`: the same object, at a third of
    the cost, on every answer (tests/test_upsert.py holds the two to the same output)."""
    customer = {name: row[name] for name in _OBJECT_FIELDS}
    customer["lago_id"] = str(row["lago_id"])
    customer["created_at"] = row["created_at"].strftime(TIMESTAMP_FORMAT)
    return customer


def is_possible_customer_id(value: str) -> bool:
    """Whether an upsert could ever have stored this `customer_id` (path lookups of any
    other are answered without asking the database)."""
    return 0 < len(value) <= DEFAULT_MAX_LENGTH and not _FORBIDDEN.search(value)


def page_meta(
    page: int, per_page: int, total: int, next_cursor: str | None = None, by_cursor: bool = False
) -> dict[str, Any]:
    """Lago's pagination `meta`, and `next_cursor`. No customers at all: page 0 of 0. A
    page past the end keeps its number, with no next page and the page before it as the
    previous one. A page read by cursor has no page numbers (null)."""
    if total == 0:
        meta: dict[str, Any] = {
            "current_page": 0,
            "next_page": None,
            "prev_page": None,
            "total_pages": 0,
            "total_count": 0,
        }
    else:
        total_pages = -(-total // per_page)
        meta = {
            "current_page": page,
            "next_page": page + 1 if page < total_pages else None,
            "prev_page": page - 1 if page > 1 else None,
            "total_pages": total_pages,
            "total_count": total,
        }
    if by_cursor:
        meta.update(current_page=None, next_page=None, prev_page=None)
    meta["next_cursor"] = next_cursor
    return meta


@dataclass(frozen=True)
class ListFilters:
    """The list's filters, as loaded from the query string: `search_term` trimmed (None
    when absent or blank), the lists as sets of exact values (empty: no filter), the
    countries upper-case."""

    search_term: str | None = None
    countries: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    zipcodes: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.search_term or self.countries or self.states or self.zipcodes)


# Lago's names; each list is also read in its plain repeated form (`countries=US`).
# No count limit of their own: the request line's (8 KiB) bounds them.
FILTER_LISTS = ("countries", "states", "zipcodes")
SCALAR_PARAMETERS = ("search_term", "page", "per_page", "cursor")


def load_list_filters(args: Any) -> ListFilters:
    """The filters of the list route from a query string (a Werkzeug `MultiDict`, or any
    mapping whose `getlist` gives every value of a repeated name). A bad value is a
    `ValidationError` keyed by the parameter's name, every bad parameter at once."""
    errors: dict[str, list[str]] = {}
    term = None
    raw_terms = args.getlist("search_term")
    if len(raw_terms) > 1:
        errors["search_term"] = [INVALID]
    elif raw_terms:
        text, error = _filter_text(raw_terms[0])
        if error:
            errors["search_term"] = [error]
        term = text.strip() or None
    lists: dict[str, frozenset[str]] = {}
    for name in FILTER_LISTS:
        values = [*args.getlist(f"{name}[]"), *args.getlist(name)]
        loaded = set()
        for value in values:
            text, error = _filter_text(value)
            if error is None and name == "countries":
                text = text.upper() if text.isascii() else ""
                if text not in COUNTRY_CODES:
                    error = NOT_A_COUNTRY
            if error:
                errors[name] = [error]
                break
            loaded.add(text)
        lists[name] = frozenset(loaded)
    if errors:
        raise ValidationError(errors)
    return ListFilters(term, **lists)


def _filter_text(value: str) -> tuple[str, str | None]:
    if _FORBIDDEN.search(value):
        return value, INVALID
    if len(value) > DEFAULT_MAX_LENGTH:
        return value, TOO_LONG
    return value, None


def undecodable_parameters(query: bytes) -> dict[str, list[str]]:
    """The list's parameters whose value in the raw query string is not UTF-8 once
    percent-decoded (`search_term=%FF`), which a `MultiDict` would hold as U+FFFD and
    search for: `value_is_invalid`, keyed by the parameter's name."""
    known = (*SCALAR_PARAMETERS, *FILTER_LISTS)
    errors: dict[str, list[str]] = {}
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            name = unquote_to_bytes(raw_name).decode("utf-8", "replace").removesuffix("[]")
            if name in known:
                errors[name] = [INVALID]
    return errors


def load_list_params(args: Any, query: bytes = b"") -> tuple[int, int, ListFilters, str | None]:
    """`page`, `per_page`, the filters and the `cursor` of the list route, from the
    parsed query string and its raw bytes; a `ValidationError` names every bad parameter
    at once. Whether a cursor is genuine is for the reader of the list to tell; here only
    that it comes without `page`."""
    errors: dict[str, list[str]] = {}
    cursor = args.get("cursor")
    if cursor is not None and ("page" in args or not cursor):
        errors["cursor"] = [INVALID]
    page = per_page = 0
    filters = ListFilters()
    try:
        page, per_page = load_page_params(args)
    except ValidationError as exc:
        errors.update(exc.messages)  # type: ignore[arg-type]
    try:
        filters = load_list_filters(args)
    except ValidationError as exc:
        errors.update(exc.messages)  # type: ignore[arg-type]
    # A one-value parameter in the list form (`search_term[]=...`) is refused, not left
    # out: a filter, page or cursor ignored would answer other customers than asked.
    for name in SCALAR_PARAMETERS:
        if f"{name}[]" in args:
            errors[name] = [INVALID]
    errors.update(undecodable_parameters(query))
    if errors:
        raise ValidationError(errors)
    return page, per_page, filters, cursor


def load_page_params(args: Mapping[str, str]) -> tuple[int, int]:
    """`page` and `per_page` of the list route; a bad value is a `ValidationError`."""
    errors: dict[str, list[str]] = {}
    values = {}
    for name, default, maximum in (
        ("page", 1, MAX_PAGE),
        ("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE),
    ):
        raw = args.get(name)
        value = default if raw is None else _whole_number(raw)
        if value is None or not 1 <= value <= maximum:
            errors[name] = [INVALID]
        values[name] = value
    if errors:
        raise ValidationError(errors)
    return values["page"], values["per_page"]


def _whole_number(raw: str) -> int | None:
    # Only plain ASCII digits: int() would also take "+3", " 3", "3_000" and "３". Past
    # 18 digits it is out of range anyway; no need to convert thousands of them.
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)
