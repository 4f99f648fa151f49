"""The operator console in a real browser: Debian's chromium, driven by Selenium through
Debian's chromium-driver (its path given, so Selenium Manager never downloads anything),
headless, against the real run.py with the ledger on. ``.ci/browser.sh`` installs them and
fetches axe-core, which only the tests use. Missing parts skip the tests on a developer's
machine and fail them under CI."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Service, unavailable_here

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = Path(os.environ.get("TRACKING_TEST_AXE", REPO / ".cache" / "axe-core" / "axe.min.js"))
# Where the run leaves its screenshots (docs/ keeps one of each width).
SCREENSHOTS = Path(os.environ.get("TRACKING_TEST_SCREENSHOTS", REPO / "build" / "console"))
HINT = "bash .ci/browser.sh installs chromium, chromium-driver and axe-core"
TAB = "\ue004"  # Selenium's Keys.TAB
ENTER = "\ue007"  # Selenium's Keys.ENTER (selenium is imported only once it is known to be there)
WIDTHS = {"phone": (390, 844), "desktop": (1920, 1080)}
# Before any script of the page: CSP violations are collected where the test can read them.
# (A script added through DevTools is not the page's, so the page's CSP does not apply to it.)
CSP_WATCH = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e =>"
    " window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
)

T = TypeVar("T")


class Console:
    """A headless Chromium on the console of one running service."""

    def __init__(self, driver: Any, service: Service, token: str) -> None:
        self.driver = driver
        self.service = service
        self.token = token
        self.url = f"{service.url}/console/"

    def open(self, view: str = "find") -> None:
        self.driver.get(f"{self.url}#{view}")

    def element(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def elements(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.element(css).text

    def wait(self, condition: Callable[[], T], timeout: float = 20.0) -> T:
        """The first truthy value of ``condition``; fails after ``timeout`` seconds."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        deadline = time.monotonic() + timeout
        while True:
            try:
                if value := condition():
                    return value
            except (NoSuchElementException, StaleElementReferenceException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the page reads:\n{self.text('body')}")
            time.sleep(0.05)

    def type_into(self, css: str, text: str, submit: bool = True) -> None:
        field = self.element(css)
        field.clear()
        field.send_keys(text + (ENTER if submit else ""))

    def unreached_by_tab(self, limit: int = 200) -> list[str]:
        """The visible controls that pressing Tab round the page never reaches."""
        reached: list[Any] = []
        for _ in range(limit):
            self.driver.switch_to.active_element.send_keys(TAB)
            focused = self.driver.switch_to.active_element
            if reached and focused == reached[0]:
                break  # round the page once
            if focused not in reached:  # a date field takes a Tab per part
                reached.append(focused)
        controls = self.elements("a[href], button:not([disabled]), input, select, [tabindex='0']")
        return [
            control.get_attribute("id") or control.text
            for control in controls
            if control.is_displayed() and control not in reached
        ]

    def choose(self, css: str, option: str) -> None:
        from selenium.webdriver.support.select import Select

        Select(self.element(css)).select_by_visible_text(option)

    def sign_in(self, token: str | None = None) -> None:
        """Give the token through its form, by keyboard, and wait for the views."""
        self.wait(lambda: self.element("#view-token").is_displayed())
        self.type_into("#token", token or self.token)
        if token is None:
            self.wait(lambda: not self.element("#view-token").is_displayed())

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's WCAG 2.0/2.1 A and AA violations on the page as it is now."""
        self.driver.execute_script(AXE.read_text())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag', values:"
            " ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
            ".then(r => done(r.violations.map(v => ({id: v.id, help: v.help,"
            " nodes: v.nodes.map(n => n.target.join(' '))}))), e => done([{id: String(e)}]));"
        )
        return result

    def screenshots(self, name: str) -> None:
        """The page at a phone's width and a desktop's, saved for people to look at."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for width, height in WIDTHS.values():
            self.driver.set_window_size(width, height)
            # Nothing wider than the window: the page reads without scrolling sideways.
            overflow = self.driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{name} is {overflow} px wider than {width} px"
            self.driver.save_screenshot(str(SCREENSHOTS / f"console-{name}-{width}.png"))
        self.driver.set_window_size(*WIDTHS["desktop"])

    def problems(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Browser console entries of level SEVERE or WARNING, and CSP violations; entries
        containing one of ``allowed`` (an expected failed request) excepted."""
        entries = [
            f"{entry['level']} {entry['message']}"
            for entry in self.driver.get_log("browser")
            if entry["level"] in ("SEVERE", "WARNING")
            and not any(text in entry["message"] for text in allowed)
        ]
        csp = self.driver.execute_script("return window.__cspViolations || []")
        return entries + [f"CSP violation: {violation}" for violation in csp]


def browser_parts() -> None:
    """Skip (fail under CI) when a part of the browser tests is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable_here("selenium is not installed", "make .venv/.installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            unavailable_here(f"{path} is missing", HINT)
    if not AXE.is_file():
        unavailable_here(f"{AXE} is missing", HINT)


@pytest.fixture
def downloads(short_tmp: Path) -> Path:
    path = short_tmp / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def driver(downloads: Path) -> Iterator[Any]:
    browser_parts()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size={},{}".format(*WIDTHS["desktop"]))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    chrome = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    try:
        chrome.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})
        chrome.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield chrome
    finally:
        chrome.quit()


def made_token(service: Service) -> str:
    """The admin token the service made at start, from the file its log names."""
    (line,) = [x for x in service.log_lines() if "tracking.admin_token_file" in x]
    return Path(line["tracking.admin_token_file"]).read_text().strip()


def started(short_tmp: Path, *flags: str) -> Service:
    service = Service(short_tmp / "state", 2, *flags)
    service.state_dir.mkdir(mode=0o700)
    service.start()
    return service


@pytest.fixture
def console(driver: Any, short_tmp: Path) -> Iterator[Console]:
    """The console of a run.py with the ledger on, in the browser, not signed in yet."""
    service = started(short_tmp, "--ledger")
    try:
        yield Console(driver, service, made_token(service))
        driver.get("about:blank")  # its polling stops before the service does
        # The browser keeps its keep-alive connections idle: a draining worker waits for them
        # up to shutdown_timeout - lease_timeout (8 s; docs/reliability.md).
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


@pytest.fixture
def ledger_off_console(driver: Any, short_tmp: Path) -> Iterator[Console]:
    """The console of a run.py with the ledger off (the default)."""
    service = started(short_tmp)
    try:
        yield Console(driver, service, made_token(service))
        driver.get("about:blank")  # its polling stops before the service does
        # The browser keeps its keep-alive connections idle: a draining worker waits for them
        # up to shutdown_timeout - lease_timeout (8 s; docs/reliability.md).
        assert service.stop(timeout=15) == 0
    finally:
        service.kill()


def issue(service: Service, count: int, **fields: str) -> list[str]:
    """``count`` numbers issued in one request, with CANONICAL_QUERY's fields but ``fields``."""
    query = urllib.parse.urlencode({**CANONICAL_QUERY, **fields, "count": str(count)})
    with urllib.request.urlopen(f"{service.url}/next-tracking-number?{query}", timeout=10) as r:
        return json.load(r)["tracking_numbers"]


def records(service: Service, token: str, **filters: str) -> list[dict[str, Any]]:
    """Every record the listing gives for ``filters``, as NDJSON, newest first."""
    request = urllib.request.Request(
        f"{service.url}/tracking-numbers?{urllib.parse.urlencode(filters)}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [json.loads(line) for line in response.read().splitlines()]
