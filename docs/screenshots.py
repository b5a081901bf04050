"""The README's pictures of the two pages, taken in headless Chromium from a test double
holding a few made-up customers:

    make screenshots        (or: .venv/bin/python docs/screenshots.py)

writes docs/customer-browser.png and docs/double-page.png.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import double  # noqa: E402
from tests.browser import chromium  # noqa: E402

KEY = "test-key"
PEOPLE = [
    ("Gavin Belson", "Hooli", "gavin@hooli.test", "US", "Palo Alto"),
    ("Richard Hendricks", "Pied Piper", "richard@piedpiper.test", "US", "Palo Alto"),
    ("Monica Hall", "Raviga Capital", "monica@raviga.test", "US", "San Francisco"),
    ("Laurie Bream", "Bream-Hall", "laurie@breamhall.test", "US", "Menlo Park"),
    ("Jian-Yang", "Seefood", "jian@seefood.test", "CN", "Shenzhen"),
    ("Russ Hanneman", "RussFest", "russ@tres-commas.test", "US", "Las Vegas"),
    ("Bertram Gilfoyle", "Anton Systems", "gilfoyle@anton.test", "CA", "Toronto"),
    ("Dinesh Chugtai", "Coleman-Blair", "dinesh@piedpiper.test", "PK", "Karachi"),
    ("Jared Dunn", "Hooli XYZ", "jared@hooli-xyz.test", "US", "Berkeley"),
    ("Ron LaFlamme", "LaFlamme Law", "ron@laflamme.test", "US", "San Jose"),
    ("Ariane Dubois", "Endframe", "ariane@endframe.test", "FR", "Lyon"),
    ("Yuki Tanaka", "Sliceline", "yuki@sliceline.test", "JP", "Osaka"),
]


def customers() -> list[dict]:
    return [
        {
            "customer_id": f"cus-{1000 + n}",
            "name": name,
            "legal_name": company,
            "email": email,
            "country": country,
            "city": city,
            "created_at": f"2022-04-{10 + n:02}T09:{n * 4:02}:00Z",
        }
        for n, (name, company, email, country, city) in enumerate(PEOPLE)
    ]


def send(url: str, method: str, path: str, body=None, key: str = KEY) -> None:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        urllib.request.urlopen(
            urllib.request.Request(url + path, data=data, method=method, headers=headers),
            timeout=10,
        ).close()
    except urllib.error.HTTPError as exc:
        exc.close()


def until(driver, condition) -> None:
    WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda d: condition())


def main() -> None:
    with double.serve(api_key=KEY, seed_document={"customers": customers()}) as running:
        driver = chromium(1280, 760)
        try:
            driver.get(running.url + "/")
            driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
            until(driver, lambda: driver.find_element(By.ID, "total").text)
            driver.find_element(By.CSS_SELECTOR, "#customers tbody tr:nth-child(3) button").click()
            driver.execute_script("window.scrollTo(0, 0)")
            driver.set_window_size(1280, 1220)
            time.sleep(0.2)
            driver.save_screenshot(str(DOCS / "customer-browser.png"))

            driver.get(running.url + "/_double/")
            running.reset()
            running.fault(method="GET", path="/api/v1/customers/cus-1", status=503, times=2)
            body = {"customer": {"customer_id": "cus-1", "name": "Gavin Belson", "country": "us"}}
            send(running.url, "POST", "/api/v1/customers", body)
            send(running.url, "GET", "/api/v1/customers/cus-1")
            send(running.url, "GET", "/api/v1/customers", key="a-wrong-key")
            send(running.url, "POST", "/api/v1/customers", {"customer": {"customer_id": "x"}})
            until(driver, lambda: len(driver.find_elements(By.CSS_SELECTOR, "#requests li")) == 4)
            driver.find_elements(By.CSS_SELECTOR, "#requests summary")[3].click()
            driver.set_window_size(1280, 1100)
            time.sleep(0.2)
            driver.save_screenshot(str(DOCS / "double-page.png"))
        finally:
            driver.quit()
    for name in ("customer-browser.png", "double-page.png"):
        print(DOCS / name)


if __name__ == "__main__":
    main()
