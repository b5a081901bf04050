"""The HTTP edges: what nginx (deploy/nginx.conf as shipped) and gunicorn answer by
themselves, before the app sees a request, is the contract's JSON envelope with an
X-Request-Id; bad body framing is a 400 whose log lines hold no request bytes; every
customer_id nginx lets through works in the path."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import API_KEY
from tests.servers import Nginx
from tests.support import Gunicorn, request
from tests.test_read_delete import AWKWARD_IDS, path_of

SECRET = "s3cret-request-bytes"  # sent inside the bad requests; must reach no log


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("edges")
    env = {
        "DATABASE_URL": f"sqlite:///{workdir / 'customers.db'}",
        "API_KEY": API_KEY,
        "TRUST_PROXY": "1",
        "LOG_LEVEL": "DEBUG",
    }
    gunicorn = Gunicorn(env, workers=2, log_path=workdir / "gunicorn.log").start()
    try:
        with Nginx(gunicorn.port) as nginx:
            yield gunicorn, nginx
    finally:
        gunicorn.stop()


def raw(host: str, port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; read one HTTP answer."""
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


def assert_json_envelope(status: int, headers: dict[str, str], body: bytes, expected: int):
    assert status == expected, body
    assert headers["Content-Type"] == "application/json", body
    document = json.loads(body)
    assert document["status"] == expected and isinstance(document["error"], str)
    if expected == 400:
        assert document["message"]
    assert headers.get("X-Request-Id")
    assert SECRET not in body.decode("latin-1")


def line(request_line: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    return (
        request_line
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in (b"Host: x", *headers))
        + (b"\r\n" + body)
    )


CHUNKED = (
    b"Authorization: Bearer " + API_KEY.encode(),
    b"Content-Type: application/json",
    b"Transfer-Encoding: chunked",
)
BAD_CHUNKS = b"0x2\r\n{}\r\n0\r\n\r\nGET /health?s3cret-request-bytes HTTP/1.1\r\nHost: x\r\n\r\n"

THROUGH_NGINX = {
    "climbs above the root": (b"GET /../x HTTP/1.1", 400),
    "bad percent escape": (b"GET /api/v1/customers/%zz HTTP/1.1", 400),
    "lowercase method": (b"get /health HTTP/1.1", 400),
    "URI of 9,000 characters": (b"GET /" + b"a" * 9000 + b" HTTP/1.1", 414),
    "URI of 5,000 characters": (b"GET /" + b"a" * 5000 + b" HTTP/1.1", 414),
    "NUL in the URI": (b"GET /a%00b HTTP/1.1", 400),
    "control character in the URI": (b"GET /a\x01b HTTP/1.1", 400),
    "OPTIONS *": (b"OPTIONS * HTTP/1.1", 400),
    "CONNECT": (b"CONNECT x:443 HTTP/1.1", 400),
    "TRACE": (b"TRACE / HTTP/1.1", 405),
    "HTTP/9.9": (b"GET /health HTTP/9.9", 505),
    "encoded path climbing out": (
        b"GET /api/v1/customers/..%2F..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1",
        400,
    ),
    "nginx's internal error pages": (b"GET /_customers_errors/400 HTTP/1.1", 404),
}


@pytest.mark.parametrize("name", THROUGH_NGINX)
def test_what_nginx_refuses_by_itself_is_json(stack, name):
    gunicorn, nginx = stack
    request_line, expected = THROUGH_NGINX[name]
    assert_json_envelope(*raw(nginx.host, nginx.port, line(request_line)), expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        (line(b"GET /health HTTP/1.1", b"X-Bad: a\x01" + SECRET.encode()), 400),
        (line(b"GET /health HTTP/1.1", b"X-Bad: a\x0b" + SECRET.encode()), 400),
        (line(b"GET /health HTTP/1.1", *(b"X-%d: v" % n for n in range(101))), 431),
        (line(b"POST /api/v1/customers HTTP/1.1", b"Transfer-Encoding: gzip, chunked"), 501),
        (line(b"POST /api/v1/customers HTTP/1.1", *CHUNKED, body=BAD_CHUNKS), 400),
    ],
    ids=["\\x01 in a header", "\\x0b in a header", "101 headers", "gzip, chunked", "chunks"],
)
def test_what_gunicorn_refuses_reaches_clients_through_nginx_as_json(stack, data, expected):
    gunicorn, nginx = stack
    assert_json_envelope(*raw(nginx.host, nginx.port, data), expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        (line(b"GET /health HTTP/1.1", b"X-Bad: a\x01" + SECRET.encode()), 400),
        (line(b"GET /health HTTP/1.1", *(b"X-%d: v" % n for n in range(101))), 431),
        (line(b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414),
        (line(b"GET /health?" + SECRET.encode() + b" HTTP/9.9"), 400),
        (line(b"get /health?" + SECRET.encode() + b" HTTP/1.1"), 400),
        (line(b"GET /a\x01" + SECRET.encode() + b" HTTP/1.1"), 400),
        (line(b"POST /api/v1/customers HTTP/1.1", *CHUNKED, body=BAD_CHUNKS), 400),
    ],
    ids=["\\x01 in a header", "101 headers", "URI too long", "HTTP/9.9", "get", "\\x01", "chunks"],
)
def test_what_gunicorn_refuses_by_itself_is_json(stack, data, expected):
    gunicorn, nginx = stack
    assert_json_envelope(*raw("127.0.0.1", gunicorn.port, data), expected)


def test_bad_chunked_framing_is_a_400_and_no_request_bytes_reach_the_log(stack):
    gunicorn, nginx = stack
    status, headers, body = raw(
        "127.0.0.1",
        gunicorn.port,
        line(b"POST /api/v1/customers HTTP/1.1", *CHUNKED, body=BAD_CHUNKS),
    )
    assert json.loads(body) == {
        "status": 400,
        "error": "Bad Request",
        "message": "The body is cut short or its chunked framing is broken",
    }
    # A chunked body cut short: the client sends part of it and closes its side.
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=15) as sock:
        head = line(b"POST /api/v1/customers HTTP/1.1", *CHUNKED)
        sock.sendall(head + b'40\r\n{"customer": {"customer_id": "' + SECRET.encode())
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())["message"]) == (
            400,
            "The body is cut short or its chunked framing is broken",
        )
    log = Path(gunicorn.log_path).read_text()
    assert "framing is broken" in log  # the cause is logged ...
    assert SECRET not in log and "Traceback" not in log  # ... never the bytes


CLIMBING_ID = "../../../../etc/passwd"


def test_every_customer_id_nginx_lets_through_works_in_the_path(stack):
    gunicorn, nginx = stack
    headers = {"Authorization": f"Bearer {API_KEY}"}
    ids = [*AWKWARD_IDS, "../x", "a/../../b", "..", "%2e%2e", CLIMBING_ID]
    for customer_id in ids:
        body = {"customer": {"customer_id": customer_id, "name": "Through nginx"}}
        reply = request(nginx.port, "POST", "/api/v1/customers", body, headers, host=nginx.host)
        assert reply.status == 200, customer_id
    for customer_id in ids:
        fetched = request(nginx.port, "GET", path_of(customer_id), headers=headers, host=nginx.host)
        if customer_id == CLIMBING_ID:
            # nginx refuses a path that climbs above "/" while reading the request line.
            assert (fetched.status, fetched.json()["status"]) == (400, 400)
            continue
        assert fetched.status == 200, customer_id
        assert fetched.json()["customer"]["customer_id"] == customer_id
        deleted = request(
            nginx.port, "DELETE", path_of(customer_id), headers=headers, host=nginx.host
        )
        assert deleted.status == 200, customer_id
    # What nginx cannot address stays reachable on gunicorn's own address (README).
    direct = request(gunicorn.port, "DELETE", path_of(CLIMBING_ID), headers=headers)
    assert direct.status == 200
