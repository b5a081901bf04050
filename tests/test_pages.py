"""The pages for people, in a real browser: the customer browser at `/` and the double's
page at `/_double/`, driven in headless Chromium (Debian's, through Selenium; see
tests/browser.py). Each browser test saves a screenshot under test-screenshots/ and
prints its path.

The search and country-filter tests need the list route's `search_term` and
`countries[]` (the contract's "Search and filters")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

import double
import pages
from tests.browser import SCREENSHOTS, chromium
from tests.conftest import API_KEY
from tests.servers import Nginx
from tests.support import REPO, Gunicorn, request
from tests.test_upsert import OBJECT_KEYS

WAIT = 10  # seconds for the page to show what a test waits for (a poll is 0.5 s)
HOSTILE = "<img src=x onerror=alert(1)>"


# --- Servers, the browser, screenshots ------------------------------------------------


@dataclass
class Running:
    app: Flask
    url: str


@pytest.fixture
def service(make_app) -> Iterator[Running]:
    """The service (create_app on this test's database) on a free port, in a thread."""
    app = make_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Running(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        app.extensions["customers.db"].close_all()


@pytest.fixture
def the_double() -> Iterator[double.Double]:
    with double.serve(api_key=API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def chrome():
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome, request, capsys):
    """The module's Chromium at 1440 px wide, on a blank page; after the test, its
    screenshot is saved (and its path printed), and the page must have logged no error:
    no blocked inline script or style, no exception."""
    chrome.set_window_size(1440, 900)
    chrome.get("about:blank")
    chrome.get_log("browser")  # what earlier tests left
    yield chrome
    screenshot(chrome, request.node.name, capsys)
    errors = [
        entry["message"]
        for entry in chrome.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert errors == []


def screenshot(driver, name: str, capsys) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
    driver.save_screenshot(str(path))
    with capsys.disabled():
        print(f"\nscreenshot: {path}")


def wait(driver, condition, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())


def by_id(driver, element_id: str):
    return driver.find_element(By.ID, element_id)


def seed(app: Flask, customers: list[dict[str, Any]]) -> None:
    assert double.seed(app, {"customers": customers}) == len(customers)


def numbered(count: int) -> list[dict[str, Any]]:
    """`count` customers, one a minute: number `count` is the newest."""
    return [
        {
            "customer_id": f"cus-{n:03}",
            "name": f"Customer {n:03}",
            "country": "FR" if n % 2 else "US",
            "created_at": f"2022-05-01T{n // 60:02}:{n % 60:02}:00Z",
        }
        for n in range(1, count + 1)
    ]


# --- The customer browser -------------------------------------------------------------


def sign_in(driver, url: str, key: str = API_KEY) -> None:
    driver.get(url + "/")
    field = wait(driver, lambda: by_id(driver, "api-key"))
    field.send_keys(key, Keys.ENTER)


def rows_of(driver, table: str) -> list[list[str]]:
    """A table's rows as shown (each cell's text), read in one go: the pages redraw them."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
        ".map(row => [...row.cells].map(cell => cell.innerText))",
        table,
    )


def listed(driver) -> list[list[str]]:
    return rows_of(driver, "#customers")


def listed_ids(driver) -> list[str]:
    return [row[1] for row in listed(driver)]


def signed_in(driver) -> bool:
    return by_id(driver, "customers-panel").is_displayed() and bool(by_id(driver, "total").text)


def stored_key(driver) -> str | None:
    return driver.execute_script("return sessionStorage.getItem('customers.api_key')")


def test_sign_in_lists_the_newest_first_and_pages_by_50(browser, service):
    seed(service.app, numbered(120))
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    assert by_id(browser, "total").text == "120 customers"
    assert by_id(browser, "page-info").text == "Page 1 of 3"
    assert listed_ids(browser) == [f"cus-{n:03}" for n in range(120, 70, -1)]
    assert listed(browser)[0] == ["Customer 120", "cus-120", "", "US", "2022-05-01 02:00:00"]
    assert not by_id(browser, "prev-page").is_enabled()

    by_id(browser, "next-page").click()
    wait(browser, lambda: by_id(browser, "page-info").text == "Page 2 of 3")
    assert listed_ids(browser) == [f"cus-{n:03}" for n in range(70, 20, -1)]
    by_id(browser, "next-page").click()
    wait(browser, lambda: by_id(browser, "page-info").text == "Page 3 of 3")
    assert listed_ids(browser) == [f"cus-{n:03}" for n in range(20, 0, -1)]
    assert not by_id(browser, "next-page").is_enabled()
    by_id(browser, "prev-page").click()
    wait(browser, lambda: by_id(browser, "page-info").text == "Page 2 of 3")

    # The key is in this tab's sessionStorage and nowhere else the page can put it.
    assert stored_key(browser) == API_KEY
    assert API_KEY not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""
    assert browser.execute_script("return localStorage.length") == 0
    # A reload in the same tab keeps the person signed in.
    browser.refresh()
    wait(browser, lambda: signed_in(browser))
    assert len(listed(browser)) == 50


def test_a_customer_opens_from_the_keyboard_with_its_full_record(browser, service):
    full = {
        "customer_id": "cus-full",
        "name": "Gavin Belson",
        "legal_name": "Hooli",
        "email": "gavin@hooli.test",
        "country": "us",
        "city": "Palo Alto",
        "created_at": "2022-04-29T08:59:51Z",
        "lago_id": "99a6094e-199b-4101-896a-54e927ce7bd7",
    }
    seed(service.app, [full, *numbered(3)])
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    by_id(browser, "search-term").click()
    # Tab from the search box to Gavin Belson's row (the last), and open it with Enter.
    for _ in range(12):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if browser.switch_to.active_element.text == "Gavin Belson":
            break
    assert browser.switch_to.active_element.text == "Gavin Belson"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser, lambda: by_id(browser, "customer-panel").is_displayed())
    assert by_id(browser, "customer-title").text == "Customer cus-full"
    terms = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#customer-record dt")]
    values = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#customer-record dd")]
    assert terms == OBJECT_KEYS  # every key of the customer object, in its order
    record = dict(zip(terms, values, strict=True))
    assert record["lago_id"] == "99a6094e-199b-4101-896a-54e927ce7bd7"
    assert record["country"] == "US"
    assert record["legal_name"] == "Hooli"
    assert record["created_at"] == "2022-04-29T08:59:51Z"
    assert record["phone"] == "not set"
    by_id(browser, "close-customer").send_keys(Keys.ENTER)
    assert not by_id(browser, "customer-panel").is_displayed()
    assert browser.switch_to.active_element.text == "Gavin Belson"  # focus back on the row


def test_a_wrong_key_shows_the_401_and_stores_nothing(browser, service):
    seed(service.app, numbered(2))
    sign_in(browser, service.url, key="not-the-key")
    wait(browser, lambda: by_id(browser, "message").is_displayed())
    assert by_id(browser, "message").text == "The key was refused: 401 Unauthorized"
    assert not by_id(browser, "customers-panel").is_displayed()
    assert listed(browser) == []
    assert stored_key(browser) is None
    # The right key then signs in.
    by_id(browser, "api-key").clear()
    by_id(browser, "api-key").send_keys(API_KEY, Keys.ENTER)
    wait(browser, lambda: signed_in(browser))
    assert not by_id(browser, "message").is_displayed()
    assert listed_ids(browser) == ["cus-002", "cus-001"]


def test_sign_out_forgets_the_key_and_the_customers(browser, service):
    seed(service.app, numbered(2))
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    assert stored_key(browser) == API_KEY
    by_id(browser, "sign-out").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    assert by_id(browser, "sign-in-panel").is_displayed()
    assert not by_id(browser, "customers-panel").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#customers tbody tr") == []
    browser.refresh()  # and a reload does not sign in again
    wait(browser, lambda: by_id(browser, "sign-in-panel").is_displayed())
    assert not by_id(browser, "customers-panel").is_displayed()


FILTERABLE = [
    {"customer_id": "pp-1", "name": "Pied Piper", "country": "US", "email": "richard@pp.test"},
    {"customer_id": "ho-1", "name": "Hooli", "country": "US", "legal_name": "Hooli XYZ"},
    {"customer_id": "ra-1", "name": "Raviga", "country": "FR", "email": "monica@raviga.test"},
    {"customer_id": "ba-1", "name": "Bachmanity", "country": "FR"},
    {"customer_id": "en-1", "name": "Endframe", "country": "DE"},
]


def filterable(app: Flask) -> None:
    seed(
        app,
        [
            {**customer, "created_at": f"2022-06-01T00:00:0{n}Z"}
            for n, customer in enumerate(FILTERABLE)
        ],
    )


def apply_filters(driver, search: str = "", countries: str = "") -> None:
    for element_id, value in (("search-term", search), ("countries", countries)):
        field = by_id(driver, element_id)
        field.clear()
        field.send_keys(value)
    by_id(driver, "countries").send_keys(Keys.ENTER)  # the list is busy from here
    wait(driver, lambda: by_id(driver, "customers-panel").get_attribute("aria-busy") == "false")


def test_the_search_box_narrows_the_list(browser, service):
    """Needs the list route's `search_term`."""
    filterable(service.app)
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    assert by_id(browser, "total").text == "5 customers"
    apply_filters(browser, search="  HOOLI ")
    assert listed_ids(browser) == ["ho-1"]
    assert by_id(browser, "total").text == "1 customer match"
    apply_filters(browser, search="raviga.test")  # the email
    assert listed_ids(browser) == ["ra-1"]
    apply_filters(browser, search="")
    assert listed_ids(browser) == ["en-1", "ba-1", "ra-1", "ho-1", "pp-1"]


def test_the_country_filter_narrows_the_list(browser, service):
    """Needs the list route's `countries[]`."""
    filterable(service.app)
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    apply_filters(browser, countries="fr")
    assert listed_ids(browser) == ["ba-1", "ra-1"]
    assert by_id(browser, "total").text == "2 customers match"
    apply_filters(browser, countries="fr, de")
    assert listed_ids(browser) == ["en-1", "ba-1", "ra-1"]
    apply_filters(browser, search="a", countries="FR")  # AND between the two
    assert listed_ids(browser) == ["ba-1", "ra-1"]
    # A code that is no country: the 422, by the field.
    apply_filters(browser, countries="ZZ")
    wait(browser, lambda: by_id(browser, "countries-error").is_displayed())
    assert by_id(browser, "message").text.startswith("422 Unprocessable entity")
    assert by_id(browser, "countries").get_attribute("aria-invalid") == "true"


def test_a_hostile_customer_is_shown_as_text_and_runs_nothing(browser, service):
    seed(
        service.app,
        [
            {
                "customer_id": '"><script>document.title="pwned"</script>',
                "name": HOSTILE,
                "email": "<b>bold</b>@x.test",
                "city": "<svg onload=alert(2)>",
            }
        ],
    )
    sign_in(browser, service.url)
    wait(browser, lambda: signed_in(browser))
    [row] = listed(browser)
    assert row[:3] == [HOSTILE, '"><script>document.title="pwned"</script>', "<b>bold</b>@x.test"]
    by_id(browser, "customers").find_element(By.CSS_SELECTOR, "button").click()
    wait(browser, lambda: by_id(browser, "customer-panel").is_displayed())
    values = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#customer-record dd")]
    assert HOSTILE in values and "<svg onload=alert(2)>" in values
    # Nothing was made of it: no element, no script run, no dialog.
    for tag in ("img", "svg", "b", "script"):
        assert browser.find_elements(By.CSS_SELECTOR, f"main {tag}") == []
    assert browser.title == "Customers"
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check


# --- The double's page ------------------------------------------------------------------


def send(url: str, method: str, path: str, body: Any = None, key: str = API_KEY):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def logged(driver) -> list[str]:
    """The request log's summaries, newest first: method, path, status, duration, fault."""
    texts = driver.execute_script(
        "return [...document.querySelectorAll('#requests > li summary')].map(s => s.innerText)"
    )
    return [" ".join(text.split()) for text in texts]


def open_double_page(driver, the_double: double.Double) -> None:
    driver.get(the_double.url + "/_double/")
    wait(driver, lambda: by_id(driver, "live-state").text.startswith("Live"))


def fault_rows(driver) -> list[list[str]]:
    return rows_of(driver, "#faults")


@pytest.mark.sqlite_only  # the double runs on its own SQLite file
def test_a_request_appears_on_the_doubles_page_while_a_client_sends_it(browser, the_double):
    open_double_page(browser, the_double)
    assert logged(browser) == []
    assert by_id(browser, "no-requests").is_displayed()
    body = {"customer": {"customer_id": "c-1", "name": "Gavin", "country": "us"}}
    client = threading.Thread(
        target=lambda: [
            send(the_double.url, "POST", "/api/v1/customers", body),
            send(the_double.url, "GET", "/api/v1/customers/nobody"),
            send(the_double.url, "GET", "/api/v1/customers", key="wrong"),
        ]
    )
    client.start()
    wait(browser, lambda: len(logged(browser)) == 3)
    client.join()
    summaries = logged(browser)
    assert re.fullmatch(r"GET /api/v1/customers 401( [\d.]+ ms)?", summaries[0])
    assert re.fullmatch(r"GET /api/v1/customers/nobody 404( [\d.]+ ms)?", summaries[1])
    assert re.fullmatch(r"POST /api/v1/customers 200( [\d.]+ ms)?", summaries[2])
    statuses = browser.find_elements(By.CSS_SELECTOR, "#requests .status")
    assert [s.get_attribute("class") for s in statuses] == [
        "status status-4xx",
        "status status-4xx",
        "status status-2xx",
    ]

    # The oldest opens on the body sent, the answer (pretty-printed) and a curl command.
    post = browser.find_elements(By.CSS_SELECTOR, "#requests > li")[2]
    post.find_element(By.TAG_NAME, "summary").click()
    sent, answer, curl = [pre.text for pre in post.find_elements(By.TAG_NAME, "pre")]
    assert json.loads(sent) == body
    assert sent.startswith('{\n  "customer": {\n    "customer_id": "c-1"')
    assert json.loads(answer)["customer"]["country"] == "US"
    assert curl == (
        f"curl -sS -X POST '{the_double.url}/api/v1/customers'"
        ' -H "Authorization: Bearer $API_KEY"'
        " -H 'Content-Type: application/json'"
        """ --data-raw '{"customer":{"customer_id":"c-1","name":"Gavin","country":"us"}}'"""
    )
    assert API_KEY not in browser.page_source
    # "Copy as curl" puts that command on the clipboard.
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {
            "origin": the_double.url,
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
        },
    )
    post.find_element(By.XPATH, ".//button[text()='Copy as curl']").click()
    wait(browser, lambda: "Copied" in post.text)
    pasted = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], e => arguments[0](String(e)))"
    )
    assert pasted == curl
    # And the command repeats the request, with the key from $API_KEY.
    before = len(the_double.requests())
    ran = subprocess.run(
        ["bash", "-c", pasted], env={**os.environ, "API_KEY": API_KEY}, capture_output=True
    )
    assert ran.returncode == 0, ran.stderr
    repeated = the_double.requests()[before:]
    assert [(r["method"], r["path"], r["status"], r["body"]) for r in repeated] == [
        ("POST", "/api/v1/customers", 200, body)
    ]
    # More requests: they come in on top, and the opened one stays open.
    send(the_double.url, "DELETE", "/api/v1/customers/c-1")
    wait(browser, lambda: len(logged(browser)) == 5)
    assert logged(browser)[0].startswith("DELETE /api/v1/customers/c-1 200")
    assert logged(browser)[1].startswith("POST /api/v1/customers 200")  # the curl command's
    assert post.find_element(By.TAG_NAME, "details").get_attribute("open") == "true"


@pytest.mark.sqlite_only
def test_a_fault_added_from_the_form_answers_and_is_cleared(browser, the_double):
    open_double_page(browser, the_double)
    assert by_id(browser, "no-faults").is_displayed()
    for element_id, value in (
        ("fault-method", "get"),
        ("fault-path", "/api/v1/customers"),
        ("fault-status", "503"),
        ("fault-times", "2"),
        ("fault-headers", '{"Retry-After": "2"}'),
    ):
        by_id(browser, element_id).send_keys(value)
    by_id(browser, "fault-headers").send_keys(Keys.ENTER)
    wait(browser, lambda: len(fault_rows(browser)) == 1)
    [listed_fault] = the_double.app.extensions["customers.double_faults"].listed()
    assert fault_rows(browser) == [
        [
            listed_fault["id"],
            "GET /api/v1/customers",
            "answers 503, with Retry-After: 2",
            "2 of 2",
        ]
    ]
    assert by_id(browser, "fault-status").get_attribute("value") == ""  # the form is emptied

    assert send(the_double.url, "GET", "/api/v1/customers") == 503
    wait(browser, lambda: fault_rows(browser)[0][3] == "1 of 2")
    wait(browser, lambda: len(logged(browser)) == 1)
    assert logged(browser)[0].startswith("GET /api/v1/customers 503")
    assert logged(browser)[0].endswith(f"fault {listed_fault['id']}")
    status = browser.find_element(By.CSS_SELECTOR, "#requests .status")
    assert status.get_attribute("class") == "status status-5xx"

    by_id(browser, "clear-faults").click()
    wait(browser, lambda: fault_rows(browser) == [])
    assert by_id(browser, "no-faults").is_displayed()
    assert the_double.app.extensions["customers.double_faults"].listed() == []
    assert send(the_double.url, "GET", "/api/v1/customers") == 200


@pytest.mark.sqlite_only
def test_a_refused_fault_shows_each_error_by_its_field(browser, the_double):
    open_double_page(browser, the_double)
    for element_id, value in (
        ("fault-status", "700"),
        ("fault-delay", "-5"),
        ("fault-times", "zero"),
        ("fault-headers", "not json"),
        ("fault-path", "/_double/requests"),
    ):
        by_id(browser, element_id).send_keys(value)
    by_id(browser, "fault-status").send_keys(Keys.ENTER)
    wait(browser, lambda: by_id(browser, "message").is_displayed())
    assert by_id(browser, "message").text == (
        "The fault was refused: 422 Unprocessable entity: Validation error on the record"
    )

    def error_of(element_id: str) -> str:
        field = by_id(browser, element_id)
        return field.find_element(By.XPATH, "..").find_element(By.CLASS_NAME, "field-error").text

    for element_id in ("fault-status", "fault-delay", "fault-times", "fault-headers", "fault-path"):
        assert error_of(element_id) == "value_is_invalid", element_id
        assert by_id(browser, element_id).get_attribute("aria-invalid") == "true"
    assert error_of("fault-method") == ""
    assert fault_rows(browser) == []
    assert the_double.app.extensions["customers.double_faults"].listed() == []
    # `status` with `action`: keyed `action`, as the route says.
    for element_id in ("fault-delay", "fault-times", "fault-headers", "fault-path", "fault-status"):
        by_id(browser, element_id).clear()
    by_id(browser, "fault-status").send_keys("500")
    by_id(browser, "fault-action").send_keys("drop")
    by_id(browser, "fault-status").send_keys(Keys.ENTER)
    wait(browser, lambda: error_of("fault-status") == "")
    assert error_of("fault-action") == "value_is_invalid"


@pytest.mark.sqlite_only
def test_reset_from_the_page_forgets_requests_and_faults(browser, the_double):
    the_double.fault(status=500, times=None)
    send(the_double.url, "GET", "/api/v1/customers")
    open_double_page(browser, the_double)
    wait(browser, lambda: len(logged(browser)) == 1)
    assert fault_rows(browser)[0][1:] == [
        "any method any /api/v1/ path",
        "answers 500",
        "every time",
    ]
    by_id(browser, "reset").click()
    wait(browser, lambda: logged(browser) == [] and fault_rows(browser) == [])
    assert the_double.requests() == []
    assert by_id(browser, "message").text.startswith("The double is reset")
    assert by_id(browser, "message").get_attribute("class") == "message ok"


@pytest.mark.sqlite_only
def test_hostile_requests_are_shown_as_text_on_the_doubles_page(browser, the_double):
    open_double_page(browser, the_double)
    hostile_path = "/api/v1/customers/" + urllib.parse.quote(HOSTILE)
    send(the_double.url, "GET", hostile_path)
    send(the_double.url, "POST", "/api/v1/customers", {"customer": {"customer_id": HOSTILE}})
    wait(browser, lambda: len(logged(browser)) == 2)
    assert logged(browser)[1].startswith(f"GET /api/v1/customers/{HOSTILE} 404")
    for item in browser.find_elements(By.CSS_SELECTOR, "#requests > li summary"):
        item.click()
    assert HOSTILE in browser.find_elements(By.CSS_SELECTOR, "#requests pre")[0].text
    for tag in ("img", "script"):
        assert browser.find_elements(By.CSS_SELECTOR, f"main {tag}") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


@pytest.mark.sqlite_only
def test_copy_as_curl_quotes_a_hostile_method(browser, the_double, tmp_path):
    """A method is any HTTP token, and a token may hold `` ` ``, `$` and `'`: pasted into
    a shell, the command sends that method again and runs nothing of it."""
    open_double_page(browser, the_double)
    method = "X`touch$IFS'pwned'`"
    assert send(the_double.url, method, "/api/v1/customers") == 405
    wait(browser, lambda: len(logged(browser)) == 1)
    browser.find_element(By.CSS_SELECTOR, "#requests > li summary").click()
    curl = browser.find_elements(By.CSS_SELECTOR, "#requests pre")[-1].text
    assert curl.startswith("curl -sS -X 'X`touch$IFS'\\''pwned'\\''`' ")
    ran = subprocess.run(["bash", "-c", curl], cwd=tmp_path, env={**os.environ, "API_KEY": ""})
    assert ran.returncode == 0
    assert list(tmp_path.iterdir()) == []
    assert [r["method"] for r in the_double.requests()] == [method, method]


# --- Both pages: size, layout, labels -------------------------------------------------


@pytest.mark.sqlite_only
@pytest.mark.parametrize("width", [375, 1440])
def test_both_pages_fit_the_width_and_label_every_input(browser, the_double, width, capsys):
    browser.set_window_size(width, 900)
    the_double.seed({"customers": FILTERABLE})
    long = {"customer": {"customer_id": "x" * 80, "name": "y" * 80, "email": "z" * 80}}
    assert send(the_double.url, "POST", "/api/v1/customers", long) == 200
    sign_in(browser, the_double.url)
    wait(browser, lambda: signed_in(browser))
    # The customer of long values, opened: its title and record wrap too.
    by_id(browser, "customers").find_element(By.XPATH, f".//button[text()='{'y' * 80}']").click()
    assert by_id(browser, "customer-title").text == f"Customer {'x' * 80}"
    check_page(browser, width)
    screenshot(browser, f"test_customer_browser_at_{width}", capsys)
    open_double_page(browser, the_double)
    wait(browser, lambda: len(logged(browser)) >= 3)
    browser.find_element(By.CSS_SELECTOR, "#requests summary").click()
    check_page(browser, width)


def check_page(driver, width: int) -> None:
    # Nothing wider than the window (a wide table scrolls in its own box).
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"
    )
    assert unlabelled == []
    # Every control can take the keyboard's focus.
    unreachable = driver.execute_script(
        "return [...document.querySelectorAll('button, input, select, summary')]"
        ".filter(e => e.tabIndex < 0).map(e => e.id || e.textContent)"
    )
    assert unreachable == []


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self.tags and self.tags[-1][0] in ("script", "style"):
            self.data.append(data.strip())


def test_the_pages_are_small_files_with_no_inline_script_or_style():
    files = sorted((REPO / "static").iterdir())
    assert {f.name for f in files} == {
        "browser.html",
        "browser.js",
        "double.html",
        "double.js",
        "favicon.svg",
        "pages.css",
    }
    assert sum(f.stat().st_size for f in files) < 100 * 1024
    for page in ("browser.html", "double.html"):
        parser = _Tags()
        parser.feed((REPO / "static" / page).read_text())
        assert not any(tag == "style" for tag, _ in parser.tags), page
        for tag, attrs in parser.tags:
            assert "style" not in attrs, (page, tag)
            assert not any(name.startswith("on") for name in attrs), (page, tag)
            if tag == "script":
                assert attrs.get("src"), page
            if tag in ("script", "link", "img") and (attrs.get("src") or attrs.get("href")):
                assert "//" not in (attrs.get("src") or attrs.get("href")), page  # nothing remote
        assert parser.data == [] or set(parser.data) == {""}, page
    for script in ("browser.js", "double.js"):
        assert "innerHTML" not in (REPO / "static" / script).read_text()


# --- Serving: headers, the setting, nginx, the command ----------------------------------


def assert_page_headers(headers) -> None:
    assert headers["Content-Security-Policy"] == pages.SECURITY_HEADERS["Content-Security-Policy"]
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "path,kind",
    [
        ("/", "text/html; charset=utf-8"),
        ("/assets/browser.js", "text/javascript; charset=utf-8"),
        ("/assets/pages.css", "text/css; charset=utf-8"),
    ],
)
def test_the_browser_files_are_served_with_the_security_headers(client, path, kind):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == kind
    assert_page_headers(response.headers)
    # Unchanged: a 304, with the same headers.
    again = client.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert (again.status_code, again.data) == (304, b"")
    assert_page_headers(again.headers)


@pytest.mark.parametrize("path", ["/", "/assets/browser.js", "/assets/pages.css"])
def test_customer_browser_off_leaves_the_api_alone(make_app, path):
    app = make_app(CUSTOMER_BROWSER="off")
    try:
        response = app.test_client().get(path)
        assert response.status_code == 404
        assert response.get_json() == {"status": 404, "error": "Not Found"}
        assert "Content-Security-Policy" not in response.headers
    finally:
        app.extensions["customers.db"].close_all()


def test_customer_browser_setting_is_on_or_off(make_app):
    with pytest.raises(ValueError, match="CUSTOMER_BROWSER"):
        make_app(CUSTOMER_BROWSER="maybe")


def test_the_service_has_no_doubles_page(client):
    assert client.get("/_double/").status_code == 404
    assert client.get("/_double/assets/double.js").status_code == 404


@pytest.mark.sqlite_only
@pytest.mark.parametrize(
    "path", ["/_double/", "/_double/assets/double.js", "/_double/assets/pages.css"]
)
def test_the_doubles_page_is_served_with_the_security_headers(path):
    with double.serve() as running:
        reply = request(int(running.url.rsplit(":", 1)[1]), "GET", path)
        assert reply.status == 200
        assert_page_headers(reply.headers)
        assert running.requests() == []  # the page's own requests are not in the log


@pytest.mark.sqlite_only
def test_the_doubles_page_without_its_slash_redirects_with_the_security_headers():
    """`/_double` sends a browser to `/_double/` (whose assets are relative to it): an
    answer with the page's headers and no HTML of its own, whatever the query holds."""
    with double.serve() as running:
        reply = request(int(running.url.rsplit(":", 1)[1]), "GET", "/_double?x=%3Cscript%3E")
    assert (reply.status, reply.headers["Location"], reply.body) == (308, "/_double/", b"")
    assert_page_headers(reply.headers)


@pytest.mark.sqlite_only
def test_the_command_prints_the_pages_address_after_its_ready_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "double.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        text=True,
    )
    try:
        url = process.stdout.readline().rstrip("\n")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)  # the first line: the URL alone
        assert process.stderr.readline() == f"customers-double: its page: {url}/_double/\n"
        reply = request(int(url.rsplit(":", 1)[1]), "GET", "/_double/")
        assert reply.status == 200 and b"customers-double" in reply.body
    finally:
        process.terminate()
        assert process.wait(15) == 0
        process.stdout.close()
        process.stderr.close()


@pytest.fixture
def behind_nginx(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "TRUST_PROXY": "1"}
    with Gunicorn(env, workers=1, log_path=tmp_path / "gunicorn.log") as gunicorn:
        with Nginx(gunicorn.port) as nginx:
            yield gunicorn, nginx


def test_the_browser_through_nginx_as_shipped(behind_nginx, browser):
    gunicorn, nginx = behind_nginx
    for path, name in pages.BROWSER_FILES.items():
        reply = request(nginx.port, "GET", path, host=nginx.host)
        assert reply.status == 200, path
        assert_page_headers(reply.headers)
        assert reply.body == (REPO / "static" / name).read_bytes()
    base = f"http://{nginx.host}:{nginx.port}"
    customer = {"customer": {"customer_id": "n", "name": "Via nginx"}}
    assert send(base, "POST", "/api/v1/customers", customer) == 200
    sign_in(browser, base)
    wait(browser, lambda: signed_in(browser))
    assert listed(browser)[0][:2] == ["Via nginx", "n"]
    # The key went in a header: neither nginx's access log nor gunicorn's holds it.
    logs = (nginx.prefix / "customers.access.log").read_text() + gunicorn.log_path.read_text()
    assert "GET /api/v1/customers" in logs
    assert API_KEY not in logs
