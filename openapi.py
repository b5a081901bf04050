"""The OpenAPI 3.1 description of the API, built from the marshmallow schemas that
validate requests (schemas.py): a field's length, nullability or rule changes there,
and the document follows. Served at GET /api/v1/openapi.json. Knows no HTTP framework.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import schemas

# Characters a string field may hold: anything but C0 controls other than tab, LF, CR.
_ALLOWED = "\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F"
TEXT_PATTERN = f"^[^{_ALLOWED}]*$"
NON_BLANK_PATTERN = f"^[^{_ALLOWED}]*[^\\s{_ALLOWED}][^{_ALLOWED}]*$"

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


def _input_property(field: schemas.CustomerString) -> dict[str, Any]:
    """What a request may send for one field, from the field's own rules."""
    if isinstance(field, schemas.CountryCode):
        codes = sorted(schemas.COUNTRY_CODES)
        variants: list[dict[str, Any]] = [
            {"type": "string", "enum": codes + [code.lower() for code in codes]}
        ]
    else:
        text = {
            "type": "string",
            "maxLength": field.max_length,
            "pattern": NON_BLANK_PATTERN if field.mandatory else TEXT_PATTERN,
        }
        if field.mandatory:
            text["minLength"] = 1
        # A JSON integer is stored as its decimal text, so it may have as many characters
        # (its sign included) as the field.
        integer = {
            "type": "integer",
            "minimum": -(10 ** (field.max_length - 1) - 1),
            "maximum": 10**field.max_length - 1,
        }
        variants = [text, integer]
    if field.allow_none:
        variants.append({"type": "null"})
    return {"anyOf": variants}


def _list_filter_parameters() -> list[dict[str, Any]]:
    """The list's search and filters (schemas.load_list_filters); each list both as
    `name[]` (Lago's) and as a plain repeated `name`."""
    text = {"type": "string", "maxLength": schemas.DEFAULT_MAX_LENGTH, "pattern": TEXT_PATTERN}
    codes = sorted(schemas.COUNTRY_CODES)
    items = {
        "countries": {"type": "string", "enum": codes + [code.lower() for code in codes]},
        "states": text,
        "zipcodes": text,
    }
    parameters: list[dict[str, Any]] = [
        {
            "name": "cursor",
            "in": "query",
            "description": "A `meta.next_cursor` of an earlier answer: the customers after "
            "it, in the same order; not with `page`.",
            "schema": {"type": "string", "minLength": 1},
        },
        {
            "name": "search_term",
            "in": "query",
            "description": "Case-insensitive substring of name, legal_name, customer_id or "
            "email; surrounding spaces ignored; blank: no filter; %, _ and \\ are literal.",
            "schema": text,
        },
    ]
    for name in schemas.FILTER_LISTS:
        for spelled in (f"{name}[]", name):
            parameters.append(
                {
                    "name": spelled,
                    "in": "query",
                    "description": f"Exact {name}, any of them (OR); with the other "
                    "parameters, all of them (AND).",
                    "style": "form",
                    "explode": True,
                    "schema": {"type": "array", "items": items[name]},
                }
            )
    return parameters


def _output_property(name: str, field: Any) -> dict[str, Any]:
    if name == "lago_id":
        return {"type": "string", "format": "uuid"}
    if name == "created_at":
        return {"type": "string", "format": "date-time", "pattern": "Z$"}
    kind = "string" if not field.allow_none else ["string", "null"]
    return {"type": kind, "maxLength": field.max_length}


def _error(status: int, title: str, **extra: Any) -> dict[str, Any]:
    properties = {"status": {"const": status}, "error": {"const": title}}
    properties.update(extra)
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _response(description: str, schema: dict, example: Any = None, **headers: Any) -> dict:
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {
        "description": description,
        "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}, **headers},
        "content": {"application/json": content},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERRORS = {
    400: ("Bad Request", "The body is not a JSON object with a `customer` object."),
    401: ("Unauthorized", "No valid `Authorization: Bearer <key>`."),
    404: ("Not Found", "No such customer in the key's organization."),
    413: ("Payload Too Large", "The body is larger than the configured limit."),
    414: ("URI Too Long", "The request line is longer than the server takes (8 KiB)."),
    422: ("Unprocessable entity", "A field or parameter breaks a rule."),
    503: ("Service Unavailable", "The database cannot be reached."),
}


def _errors(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        title, description = ERRORS[status]
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = {"schema": {"const": "Bearer"}}
        example = {"status": status, "error": title}
        if status == 400:
            example["message"] = "Content-Type must be application/json"
        out[str(status)] = _response(description, _ref(f"Error{status}"), example, **headers)
    return out


@cache
def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of release `version` (built once per process)."""
    schema = schemas.CustomerSchema()
    inputs = {name: _input_property(f) for name, f in schema.load_fields.items()}
    outputs = {name: _output_property(name, f) for name, f in schema.dump_fields.items()}
    error_schemas = {
        f"Error{status}": _error(status, title) for status, (title, _) in ERRORS.items()
    }
    error_schemas["Error400"] = _error(
        400, "Bad Request", message={"type": "string", "minLength": 1}
    )
    error_schemas["Error404"] = _error(404, "Not Found", code={"const": "customer_not_found"})
    error_schemas["Error422"] = _error(
        422,
        "Unprocessable entity",
        message={"const": "Validation error on the record"},
        error_details={
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {
                    "enum": [
                        schemas.MANDATORY,
                        schemas.INVALID,
                        schemas.TOO_LONG,
                        schemas.NOT_A_COUNTRY,
                    ]
                },
            },
        },
    )
    customer_path = {
        "name": "customer_id",
        "in": "path",
        "required": True,
        "description": "The caller's customer_id, URL-encoded.",
        "schema": {"type": "string", "minLength": 1},
    }
    page_meta: dict[str, Any] = {
        name: {
            # A page read by cursor has no page numbers.
            "type": ["integer", "null"] if name.endswith("_page") else "integer",
            "minimum": 0,
        }
        for name in ("current_page", "next_page", "prev_page", "total_pages", "total_count")
    }
    page_meta["next_cursor"] = {
        "type": ["string", "null"],
        "description": "Pass as `cursor` for the customers after this page; null at the end.",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Customers registry (Lago customers API)",
            "version": version,
            "description": "Create or update, read, list and delete an organization's "
            "customers, keyed by the caller's customer_id.",
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/v1/customers": {
                "post": {
                    "operationId": "upsertCustomer",
                    "summary": "Create or update a customer",
                    "description": "Absent keys keep the stored value; null clears it "
                    "(not `name`). `name` is required when creating. Unknown keys are "
                    "ignored. A JSON integer is stored as its decimal text.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": _ref("CustomerRequest"),
                                "example": {
                                    "customer": {
                                        k: v
                                        for k, v in EXAMPLE_CUSTOMER.items()
                                        if k not in ("lago_id", "created_at")
                                    }
                                },
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            **_response(
                                "Created or updated.",
                                _ref("CustomerEnvelope"),
                                {"customer": EXAMPLE_CUSTOMER},
                            ),
                            "links": {
                                "GetCustomer": {
                                    "operationId": "getCustomer",
                                    "parameters": {
                                        "customer_id": "$response.body#/customer/customer_id"
                                    },
                                },
                                "DeleteCustomer": {
                                    "operationId": "deleteCustomer",
                                    "parameters": {
                                        "customer_id": "$response.body#/customer/customer_id"
                                    },
                                },
                            },
                        },
                        **_errors(400, 401, 413, 422, 503),
                    },
                },
                "get": {
                    "operationId": "listCustomers",
                    "summary": "List customers, newest first",
                    "parameters": [
                        {
                            "name": "page",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": schemas.MAX_PAGE,
                                "default": 1,
                            },
                        },
                        {
                            "name": "per_page",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": schemas.MAX_PER_PAGE,
                                "default": schemas.DEFAULT_PER_PAGE,
                            },
                        },
                        *_list_filter_parameters(),
                    ],
                    "responses": {
                        "200": _response("A page of customers.", _ref("CustomerList")),
                        **_errors(401, 414, 422, 503),
                    },
                },
            },
            "/api/v1/customers/{customer_id}": {
                "parameters": [customer_path],
                "get": {
                    "operationId": "getCustomer",
                    "summary": "Read a customer",
                    "responses": {
                        "200": _response("The customer.", _ref("CustomerEnvelope")),
                        **_errors(401, 404, 503),
                    },
                },
                "delete": {
                    "operationId": "deleteCustomer",
                    "summary": "Delete a customer; answers it as it was",
                    "responses": {
                        "200": _response("The customer, as it was.", _ref("CustomerEnvelope")),
                        **_errors(401, 404, 503),
                    },
                },
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {
                        "200": _response(
                            "The database answers.",
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "ok"}},
                            },
                        ),
                        **_errors(503),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": _response("This document.", {"type": "object"}),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "RequestId": {
                    "description": "The caller's X-Request-Id, or a new one.",
                    "schema": {"type": "string"},
                }
            },
            "schemas": {
                "CustomerInput": {
                    "type": "object",
                    "description": "`name` may be left out of an update (the stored name "
                    "is kept); a new customer needs one.",
                    "required": ["customer_id", "name"],
                    "properties": inputs,
                    "additionalProperties": True,
                },
                "CustomerRequest": {
                    "type": "object",
                    "required": ["customer"],
                    "properties": {
                        "customer": {
                            "allOf": [_ref("CustomerInput")],
                            "minProperties": 1,
                        }
                    },
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
                        "meta": {
                            "type": "object",
                            "required": list(page_meta),
                            "properties": page_meta,
                        },
                    },
                },
                **error_schemas,
            },
        },
    }
