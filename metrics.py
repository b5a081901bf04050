"""Prometheus metrics: every request counted, and timed, by method, route and status.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(gunicorn.conf.py makes one when it is not set) and `GET /metrics` sums every worker's,
prometheus_client's multiprocess mode. Elsewhere (the double, the test client) the
process's own values are served.

Every label has a fixed set of values, whatever a client sends, so that no request can
add a series: the route label is the route's pattern (`/api/v1/customers/<customer_id>`),
never a raw path, so a customer_id never becomes a label, and requests that match no route
share one; the method is one of HTTP's usual methods, any other (gunicorn and nginx pass
made-up ones on) is `other`; the status is the one the app answered, from its own code.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

UNMATCHED = "unmatched"
_STARTED = "customers.metrics_started"  # the request's arrival, in its WSGI environ
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONVERTER = re.compile(r"<\w+:(\w+)>")  # "<customer_id:customer_id>" -> "<customer_id>"

REQUESTS = Counter(
    "customers_http_requests",
    "HTTP requests answered, refused ones included.",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "customers_http_request_duration_seconds",
    "Time from the request's arrival in the app to its answer.",
    ["method", "route"],
)


def instrument(app: Flask) -> None:
    """Count and time every request of `app`, and serve `GET /metrics`.

    The clock starts when the request enters the app (a WSGI wrapper, cheaper than a
    before_request hook) and stops in an after_request hook, which runs for every answer,
    errors included. This runs on every request: each label set's two series are looked
    up once, then kept (a bounded set, as every label is)."""
    inner = app.wsgi_app

    def timed(environ: dict, start_response: Any) -> Any:
        environ[_STARTED] = time.perf_counter()
        return inner(environ, start_response)

    app.wsgi_app = timed  # type: ignore[method-assign]
    series: dict[tuple[str, str | None, int], tuple[Any, Any]] = {}

    @app.after_request
    def count(response: Response) -> Response:
        served = request._get_current_object()  # type: ignore[attr-defined]
        method = served.method if served.method in METHODS else OTHER_METHOD
        rule = served.url_rule
        pattern = rule.rule if rule is not None else None
        status = response.status_code
        found = series.get((method, pattern, status))
        if found is None:
            route = _CONVERTER.sub(r"<\1>", pattern) if pattern is not None else UNMATCHED
            found = (REQUESTS.labels(method, route, status), DURATION.labels(method, route))
            series[(method, pattern, status)] = found
        found[0].inc()
        started = served.environ.get(_STARTED)
        if started is not None:
            found[1].observe(time.perf_counter() - started)
        return response

    app.add_url_rule(
        "/metrics",
        "metrics",
        view_func=exposition,
        methods=["GET"],
        provide_automatic_options=False,
    )


def exposition() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
