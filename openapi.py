"""The OpenAPI 3.1 description of the API, built from the marshmallow schemas that
validate requests (schemas.py): a field's length, nullability or rule changes there,
and the document follows. Served at GET /api/v1/openapi.json. Knows no HTTP framework.

Tools trust it as it is (client and model generators, validators, mock servers), so it
keeps to what their default settings read: no number beyond 2**53, no two enum members
that differ only in case, every example valid against the schema beside it, and every
answer a client can meet described.

`document()` is assembled from named parts, in this order: paths (one function per
operation), parameters, schemas (the customer, then the error envelopes), responses.
"""

from __future__ import annotations

from functools import cache
from itertools import groupby
from typing import Any

import schemas

CUSTOMERS_PATH = "/api/v1/customers"
CUSTOMER_PATH = "/api/v1/customers/{customer_id}"

# Characters a string field may hold: anything but C0 controls other than tab, LF, CR.
_ALLOWED = "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F"
TEXT_PATTERN = f"^[^{_ALLOWED}]*$"
NON_BLANK_PATTERN = f"^[^{_ALLOWED}]*[^\\s{_ALLOWED}][^{_ALLOWED}]*$"

VALIDATION_MESSAGE = "Validation error on the record"  # the 422's fixed `message`

EXAMPLE_CUSTOMER = {
    "lago_id": "99a6094e-199b-4101-896a-54e927ce7bd7",
    "customer_id": "5eb02857-a71e-4ea2-bcf9-57d3a41bc6ba",
    "address_line1": "5230 Penfield Ave",
    "address_line2": None,
    "city": "Woodland Hills",
    "country": "US",
    "created_at": "2022-04-29T08:59:51Z",
    "email": "dinesh@piedpiper.test",
    "legal_name": "Coleman-Blair",
    "legal_number": "49-008-2965",
    "logo_url": "http://hooli.com/logo.png",
    "name": "Gavin Belson",
    "phone": "1-171-883-3711 x245",
    "state": "CA",
    "url": "http://hooli.com",
    "zipcode": "91364",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@cache
def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of release `version` (built once per process)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Customers registry",
            "version": version,
            "description": "Lago's customers API (2022): create or update, read, list and "
            "delete an organization's customers, keyed by the caller's customer_id.",
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(version),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "RequestId": {
                    "description": "The caller's X-Request-Id, or a new one.",
                    "schema": {"type": "string"},
                }
            },
            "schemas": {**_customer_schemas(), **_error_schemas()},
        },
    }


# --- Paths: one function per operation ---------------------------------------------------


def _paths(version: str) -> dict[str, Any]:
    return {
        CUSTOMERS_PATH: {"post": _upsert(), "get": _list()},
        CUSTOMER_PATH: {
            "parameters": [_customer_id_parameter()],
            "get": _get(),
            "delete": _delete(),
        },
        "/health": {"get": _health(version)},
        "/api/v1/openapi.json": {"get": _self_description()},
    }


def _upsert() -> dict[str, Any]:
    created = {**_customer_answer("Created or updated."), "links": _customer_links()}
    return {
        "operationId": "upsertCustomer",
        "summary": "Create or update a customer",
        "description": "Absent keys keep the stored value; null clears it (not `name`). "
        "`name` is required when creating, and may be left out of an update. Unknown keys "
        "are ignored. A JSON integer is stored as its decimal text.",
        "requestBody": _upsert_body(),
        "responses": _responses(created, (400, 401, 413, 422, 503)),
    }


def _upsert_body() -> dict[str, Any]:
    sent = {k: v for k, v in EXAMPLE_CUSTOMER.items() if k not in ("lago_id", "created_at")}
    update = {"customer_id": sent["customer_id"], "city": "Palo Alto", "address_line1": None}
    examples = {
        "create": {"summary": "A new customer", "value": {"customer": sent}},
        "update": {
            "summary": "An update: name kept, city changed, a line cleared",
            "value": {"customer": update},
        },
    }
    schema = _ref("CustomerRequest")
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "examples": examples}},
    }


def _customer_links() -> dict[str, Any]:
    """Where the upserted customer_id leads (schemathesis' stateful phase follows these)."""
    return {
        link: {
            "operationId": operation,
            "parameters": {"customer_id": "$response.body#/customer/customer_id"},
        }
        for link, operation in (
            ("GetCustomer", "getCustomer"),
            ("DeleteCustomer", "deleteCustomer"),
        )
    }


def _list() -> dict[str, Any]:
    page = {"customers": [EXAMPLE_CUSTOMER], "meta": schemas.page_meta(1, 100, 1)}
    bad_page = {"error_details": {"per_page": [schemas.INVALID]}}
    return {
        "operationId": "listCustomers",
        "summary": "List customers, newest first",
        "parameters": list_parameters(),
        "responses": _responses(
            _response("A page of customers.", _ref("CustomerList"), page),
            (401, 422, 503),
            examples={422: bad_page},
        ),
    }


def _get() -> dict[str, Any]:
    return {
        "operationId": "getCustomer",
        "summary": "Read a customer",
        "responses": _responses(_customer_answer("The customer."), (401, 404, 503)),
    }


def _delete() -> dict[str, Any]:
    return {
        "operationId": "deleteCustomer",
        "summary": "Delete a customer; answers it as it was",
        "responses": _responses(_customer_answer("The customer, as it was."), (401, 404, 503)),
    }


def _health(version: str) -> dict[str, Any]:
    health = {
        "type": "object",
        "required": ["status", "version"],
        "properties": {
            "status": {"const": "ok"},
            "version": {"type": "string", "description": "The running release."},
        },
        "additionalProperties": False,
    }
    return {
        "operationId": "health",
        "summary": "Whether the database answers",
        "security": [],
        "responses": _responses(
            _response("The database answers.", health, {"status": "ok", "version": version}),
            (503,),
        ),
    }


def _self_description() -> dict[str, Any]:
    return {
        "operationId": "openapi",
        "summary": "This document",
        "security": [],
        "responses": _responses(_response("This document.", {"type": "object"})),
    }


# --- Parameters --------------------------------------------------------------------------


def _customer_id_parameter() -> dict[str, Any]:
    return {
        "name": "customer_id",
        "in": "path",
        "required": True,
        "description": "The caller's customer_id, URL-encoded.",
        "schema": {"type": "string", "minLength": 1},
    }


def list_parameters() -> list[dict[str, Any]]:
    """The query parameters of the list route, one entry each."""
    return [
        _query(
            "page",
            "The page to answer, from 1.",
            {"type": "integer", "minimum": 1, "maximum": schemas.MAX_PAGE, "default": 1},
        ),
        _query(
            "per_page",
            "Customers per page.",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": schemas.MAX_PER_PAGE,
                "default": schemas.DEFAULT_PER_PAGE,
            },
        ),
    ]


def _query(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


# --- Schemas: the customer ---------------------------------------------------------------


def _customer_schemas() -> dict[str, Any]:
    schema = schemas.CustomerSchema()
    inputs = {name: _input_property(f) for name, f in schema.load_fields.items()}
    outputs = {name: _output_property(name, f) for name, f in schema.dump_fields.items()}
    return {
        "CustomerInput": {
            "type": "object",
            "description": "What a request may send. A new customer needs a `name` too; "
            "an update may leave it out (the stored name is kept).",
            "required": ["customer_id"],
            "properties": inputs,
            "additionalProperties": True,
        },
        "CustomerRequest": {
            "type": "object",
            "required": ["customer"],
            "properties": {"customer": _ref("CustomerInput")},
        },
        "Customer": {
            "type": "object",
            "required": list(outputs),
            "properties": outputs,
            "additionalProperties": False,
        },
        "CustomerEnvelope": {
            "type": "object",
            "required": ["customer"],
            "properties": {"customer": _ref("Customer")},
            "additionalProperties": False,
        },
        "CustomerList": {
            "type": "object",
            "required": ["customers", "meta"],
            "properties": {
                "customers": {"type": "array", "items": _ref("Customer")},
                "meta": _ref("PageMeta"),
            },
        },
        "PageMeta": _page_meta(),
    }


def _input_property(field: schemas.CustomerString) -> dict[str, Any]:
    """What a request may send for one field, from the field's own rules."""
    if isinstance(field, schemas.CountryCode):
        variants = [_country_text()]
    else:
        variants = [_text(field), _integer(field)]
    if field.allow_none:
        variants.append({"type": "null"})
    return {"anyOf": variants}


def _text(field: schemas.CustomerString) -> dict[str, Any]:
    text: dict[str, Any] = {"type": "string", "maxLength": field.max_length}
    if field.mandatory:
        text.update(minLength=1, pattern=NON_BLANK_PATTERN)
    else:
        text["pattern"] = TEXT_PATTERN
    return text


def _integer(field: schemas.CustomerString) -> dict[str, Any]:
    # Not as minimum/maximum: 10**255 is no number a JSON parser reads exactly (RFC 8259,
    # section 6), and some tools refuse the whole document for it.
    limit = field.max_length
    return {
        "type": "integer",
        "description": f"Stored as its decimal text, which counts toward the field's "
        f"{limit}-character limit: at most {limit} digits, or {limit - 1} after a minus sign.",
    }


def _country_text() -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 2,
        "maxLength": 2,
        "pattern": country_pattern(),
        "description": "An ISO 3166-1 alpha-2 code in any letter case (`us` is `US`); "
        "answered upper case.",
    }


def country_pattern() -> str:
    """Every ISO 3166-1 alpha-2 code, each ASCII letter in either case: one alternative per
    first letter, such as `[Aa][DdEeFf...]`. An enum would list `AD` and `ad` as two
    members, which client generators refuse as a duplicate."""
    alternatives = []
    for first, codes in groupby(sorted(schemas.COUNTRY_CODES), key=lambda code: code[0]):
        seconds = "".join(code[1] + code[1].lower() for code in codes)
        alternatives.append(f"[{first}{first.lower()}][{seconds}]")
    return f"^({'|'.join(alternatives)})$"


def _output_property(name: str, field: Any) -> dict[str, Any]:
    if name == "lago_id":
        return {"type": "string", "format": "uuid"}
    if name == "created_at":
        return {"type": "string", "format": "date-time", "pattern": "Z$"}
    kind = "string" if not field.allow_none else ["string", "null"]
    if isinstance(field, schemas.CountryCode):
        return {"type": kind, "pattern": "^[A-Z]{2}$"}
    return {"type": kind, "maxLength": field.max_length}


def _page_meta() -> dict[str, Any]:
    links = ("next_page", "prev_page")
    properties = {
        name: {"type": ["integer", "null"] if name in links else "integer", "minimum": 0}
        for name in ("current_page", "next_page", "prev_page", "total_pages", "total_count")
    }
    return {"type": "object", "required": list(properties), "properties": properties}


# --- Schemas: the error envelopes --------------------------------------------------------

# status: (title, when the service answers it, the envelope's keys beyond status and error)
ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: (
        "Bad Request",
        "The body is not a JSON object with a `customer` object.",
        {"message": {"type": "string", "minLength": 1}},
    ),
    401: ("Unauthorized", "No valid `Authorization: Bearer <key>`.", {}),
    404: (
        "Not Found",
        "No such customer in the key's organization: `code` is `customer_not_found`. "
        "(Without `code`: a path the service does not have, such as a wrong base URL.)",
        {"code": {"const": "customer_not_found"}},
    ),
    413: ("Payload Too Large", "The body is larger than the configured limit.", {}),
    422: (
        "Unprocessable entity",
        "A field or parameter breaks a rule; every one that does is listed.",
        {
            "message": {"const": VALIDATION_MESSAGE},
            "error_details": _ref("ErrorDetails"),
        },
    ),
    503: ("Service Unavailable", "The database cannot be reached.", {}),
}

# The example body of each status, beyond status and error.
ERROR_EXAMPLES: dict[int, dict[str, Any]] = {
    400: {"message": "Content-Type must be application/json"},
    404: {"code": "customer_not_found"},
    422: {
        "message": VALIDATION_MESSAGE,
        "error_details": {
            "customer_id": [schemas.MANDATORY],
            "country": [schemas.NOT_A_COUNTRY],
        },
    },
}

OTHER_ERRORS = (
    "Any other error, in the same envelope: 404 for a path the service does not have (a "
    "wrong base URL), 405 with `Allow` for a method the path does not have, 500 for "
    "anything unexpected (the details go to the log, never the body); behind the shipped "
    "nginx, its own 400, 413, 414, 502 or 504."
)


def _error_schemas() -> dict[str, Any]:
    optional = ("code",)  # a 404 of an unknown path has none
    documented = {
        f"Error{status}": _envelope({"const": status}, {"const": title}, extra, optional)
        for status, (title, _, extra) in ERRORS.items()
    }
    other = _envelope(
        {"type": "integer", "minimum": 400, "maximum": 599},
        {"type": "string", "minLength": 1},
        {"message": {"type": "string", "minLength": 1}},
        optional=("message",),
    )
    details = {
        "type": "object",
        "description": "Each failing field or parameter, with its codes.",
        "additionalProperties": {"type": "array", "minItems": 1, "items": _ref("ErrorCode")},
    }
    codes = [schemas.MANDATORY, schemas.INVALID, schemas.TOO_LONG, schemas.NOT_A_COUNTRY]
    return {
        **documented,
        "ErrorDetails": details,
        "ErrorCode": {"type": "string", "enum": codes},
        "Error": other,
    }


def _envelope(
    status: dict, error: dict, extra: dict[str, Any], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    properties = {"status": status, "error": error, **extra}
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


# --- Responses ---------------------------------------------------------------------------


def _responses(
    ok: dict[str, Any], statuses: tuple[int, ...] = (), examples: dict[int, dict] | None = None
) -> dict[str, Any]:
    """An operation's responses: `ok` as the 200, the listed errors, and the `default`
    that every other answer matches."""
    errors = {str(status): _error(status, (examples or {}).get(status)) for status in statuses}
    return {"200": ok, **errors, "default": _other_errors()}


def _customer_answer(description: str) -> dict[str, Any]:
    return _response(description, _ref("CustomerEnvelope"), {"customer": EXAMPLE_CUSTOMER})


def _error(status: int, example: dict[str, Any] | None = None) -> dict[str, Any]:
    title, description, _ = ERRORS[status]
    body = {"status": status, "error": title, **ERROR_EXAMPLES.get(status, {}), **(example or {})}
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"const": "Bearer"}}
    return _response(description, _ref(f"Error{status}"), body, **headers)


def _other_errors() -> dict[str, Any]:
    allow = {
        "description": "On a 405: the methods the path has.",
        "schema": {"type": "string"},
    }
    example = {"status": 405, "error": "Method Not Allowed"}
    return _response(OTHER_ERRORS, _ref("Error"), example, Allow=allow)


def _response(description: str, schema: dict, example: Any = None, **headers: Any) -> dict:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **headers},
        "content": {"application/json": content},
    }
