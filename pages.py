"""The pages for people: plain HTML, CSS and JavaScript files under `static/`, no build step.

    GET /                      the customer browser (off with CUSTOMER_BROWSER=off)
    GET /assets/<file>         its script, style and icon
    GET /_double/              the double's page: its request log, live, and its faults
    GET /_double/assets/<file> its script, style and icon

The pages hold no data: they call the JSON API like any client (the browser with the
key the person typed, in the `Authorization` header; the double's page its own control
routes). Each file is answered with a Content-Security-Policy that allows no inline
script or style and no framing, so a value that a page wrongly wrote as HTML still
could not run; the pages write every value as text anyway.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from flask import Flask, Response, request

STATIC = Path(__file__).resolve().parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Asked again each time (an upgrade shows at once), answered 304 while unchanged.
    "Cache-Control": "no-cache",
}

BROWSER_FILES = {"/": "browser.html", "/assets/browser.js": "browser.js"}
DOUBLE_FILES = {"/_double/": "double.html", "/_double/assets/double.js": "double.js"}
SHARED = ("pages.css", "favicon.svg")


def register_browser(app: Flask) -> None:
    """Serve the customer browser at `/` and its assets under `/assets/`."""
    shared = {f"/assets/{name}": name for name in SHARED}
    _register(app, {**BROWSER_FILES, **shared}, "browser")


def register_double_page(app: Flask) -> None:
    """Serve the double's page at `/_double/` and its assets under `/_double/assets/`."""
    shared = {f"/_double/assets/{name}": name for name in SHARED}
    _register(app, {**DOUBLE_FILES, **shared}, "double_page")
    # Without its slash, the page's relative assets would miss: send the browser on, with
    # the page's headers rather than Werkzeug's own HTML redirect (which has none).
    app.add_url_rule(
        "/_double",
        endpoint="double_page_redirect",
        view_func=_to_double_page,
        methods=["GET"],
        provide_automatic_options=False,
    )


def _to_double_page() -> Response:
    response = Response(status=308, headers={"Location": "/_double/", **SECURITY_HEADERS})
    response.autocorrect_location_header = False
    return response


class StaticFile:
    """One file, read once, answered with its type, an ETag and the security headers."""

    def __init__(self, name: str):
        self.data = (STATIC / name).read_bytes()
        self.etag = hashlib.sha256(self.data).hexdigest()[:20]
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.mimetype = "text/javascript" if name.endswith(".js") else kind

    def __call__(self) -> Response:
        if self.etag in request.if_none_match:
            response = Response(status=304)
        else:
            response = Response(self.data, mimetype=self.mimetype)  # text: charset utf-8
        response.set_etag(self.etag)
        response.headers.update(SECURITY_HEADERS)
        return response


def _register(app: Flask, files: dict[str, str], prefix: str) -> None:
    for rule, name in files.items():
        endpoint = f"{prefix}_{name.replace('.', '_')}"
        app.add_url_rule(
            rule,
            endpoint=endpoint,
            view_func=StaticFile(name),
            methods=["GET"],
            provide_automatic_options=False,
        )
