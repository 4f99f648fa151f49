"""The operator console in headless Chromium, against the real run.py (tests/console/conftest.py):
find, browse, download, the live allocator panel and its faults, markup in a customer's name,
the browser's console log, CSP violations, and axe-core's WCAG 2.1 AA rules on each view."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

from allocator.counter import NEW_STORE_SCHEME
from service.lookalikes import _SWAPS
from service.numbers import serial_limit
from service.verify import suggestion
from tests.conftest import CANONICAL_QUERY
from tests.console.conftest import ENTER, Console, issue, records

OTHER = {
    "customer_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "customer_name": "Kedai Runcit Ah Meng",
    "customer_slug": "kedai-runcit-ah-meng",
    "origin_country_id": "SG",
    "destination_country_id": "TH",
}
MARKUP = "<img src=x onerror=alert(1)><script>window.__ran = 1</script>"
# The request Chromium logs as failed when the token typed is wrong (the page says so itself).
REFUSED = "status of 401"


def record_shown(console: Console) -> dict[str, str]:
    """The record the find view shows, label by label."""
    terms = [x.text for x in console.elements("#find-result dt")]
    values = [x.text for x in console.elements("#find-result dd")]
    return dict(zip(terms, values, strict=True))


def lookalike_typo(numbers: list[str]) -> tuple[str, str]:
    """An issued number and the same with one lookalike character wrong, for which the
    service suggests exactly that number back."""
    serials = serial_limit(NEW_STORE_SCHEME)
    for number in numbers:
        for position, char in enumerate(number):
            for swap in _SWAPS.get(char, ""):
                typo = number[:position] + swap + number[position + 1 :]
                if suggestion(typo, serials) == number:
                    return number, typo
    raise AssertionError("no issued number has a lookalike typo with one fix")


def test_a_looked_up_number_shows_its_verdict_and_record(console: Console) -> None:
    mine = issue(console.service, 3)
    issue(console.service, 2, **OTHER)
    console.open()
    assert console.axe() == [], "the token view"
    assert "cat state/run/admin-token" in console.text("#view-token")  # make run's token
    console.sign_in("not-the-token")
    console.wait(lambda: "refused this token" in console.text("#token-problem"))
    console.sign_in()
    # Kept for the tab only: not in localStorage, not in a cookie.
    kept = console.driver.execute_script(
        "return [Object.values(sessionStorage), localStorage.length, document.cookie]"
    )
    assert kept == [[console.token], 0, ""]
    console.type_into("#number", mine[1].lower())  # typed in lower case
    console.wait(lambda: console.elements("#find-result dl"))
    assert console.text("#find-result .verdict") == f"{mine[1]} is valid"
    assert "Issued by this service." in console.text("#find-result")
    shown = record_shown(console)
    assert shown["Number"] == mine[1]
    assert shown["Customer name"] == CANONICAL_QUERY["customer_name"]
    assert shown["Customer id"] == CANONICAL_QUERY["customer_id"]
    assert shown["Origin"] == "MY"
    assert shown["Destination"] == "ID"
    assert shown["Weight (kg)"] == CANONICAL_QUERY["weight"]
    assert console.axe() == [], "the find view"
    console.screenshots("find")
    # A UPU S10 number (13 characters) is found the same way, with its record.
    s10 = {"origin_country_id": "GB", "scheme": "s10", "service_indicator": "RR"}
    (upu,) = issue(console.service, 1, **s10)
    console.type_into("#number", upu)
    console.wait(lambda: upu in console.text("#find-result .verdict"))
    console.wait(lambda: console.elements("#find-result dl"))
    assert console.text("#find-result .verdict") == f"{upu} is valid"
    assert "Issued by this service." in console.text("#find-result")
    assert record_shown(console)["Number"] == upu
    assert record_shown(console)["Origin"] == "GB"
    assert console.problems(allowed=(REFUSED,)) == []
    # The console's own requests are logged like any other.
    paths = {line["url.path"] for line in console.service.access_lines()}
    assert {"/console/", "/console/console.js", "/console/console.css"} <= paths


def test_a_lookalike_typo_offers_the_fix_as_a_link_that_finds_the_number(
    console: Console,
) -> None:
    number, typo = lookalike_typo(issue(console.service, 50))
    console.open()
    console.sign_in()
    console.type_into("#number", typo)
    link = console.wait(lambda: console.element("#suggestion"))
    assert console.text("#find-result .verdict") == f"{typo} is not valid"
    assert link.text == number
    link.send_keys(ENTER)  # followed by keyboard
    console.wait(lambda: console.elements("#find-result dl"))
    assert console.text("#find-result .verdict") == f"{number} is valid"
    assert record_shown(console)["Number"] == number
    assert console.element("#number").get_attribute("value") == number
    assert console.problems() == []


def test_browsing_one_customer_across_pages_forward_and_back_repeats_and_misses_nothing(
    console: Console,
) -> None:
    mine: list[str] = []
    for _ in range(4):  # the two customers' numbers interleaved in the ledger
        mine += issue(console.service, 6)
        issue(console.service, 4, **OTHER)
    console.open("browse")
    console.sign_in()
    console.type_into("#customer", CANONICAL_QUERY["customer_slug"], submit=False)
    console.choose("#limit", "10")
    console.element("#customer").send_keys(ENTER)

    def page(number: int) -> list[str]:
        console.wait(lambda: console.text("#browse-count").startswith(f"Page {number}:"))
        return [x.text for x in console.elements("#browse-table tbody td:first-child")]

    forward = [page(1)]
    assert console.text("#browse-count") == (
        "Page 1: records 1 to 10 shown, newest first; more on the next page."
    )
    assert console.element("#previous-page").get_attribute("disabled") is not None
    assert console.axe() == [], "the browse view"
    assert console.unreached_by_tab() == []  # every control, the table's links included
    console.screenshots("browse")
    for number in (2, 3):
        console.element("#next-page").send_keys(ENTER)
        forward.append(page(number))
    assert console.text("#browse-count") == (
        "Page 3: records 21 to 24 shown, newest first; this is the last page."
    )
    assert console.element("#next-page").get_attribute("disabled") is not None
    backward = [forward[2]]
    for number in (2, 1):
        console.element("#previous-page").send_keys(ENTER)
        backward.append(page(number))
    assert [len(x) for x in forward] == [10, 10, 4]
    assert backward == forward[::-1]
    walked = [n for one in forward for n in one]
    assert len(walked) == len(set(walked)) == len(mine)
    assert set(walked) == set(mine)
    # Newest first, as the listing orders them.
    token = console.token
    assert walked == [
        r["tracking_number"]
        for r in records(console.service, token, limit="1000")
        if r["customer_id"] == CANONICAL_QUERY["customer_id"]
    ]
    assert console.problems() == []


def test_the_csv_download_holds_every_record_of_the_filter_as_issued(
    console: Console, downloads: Path
) -> None:
    mine = issue(console.service, 30) + issue(console.service, 5)
    others = issue(console.service, 7, **OTHER)
    console.open("browse")
    console.sign_in()
    console.type_into("#customer", CANONICAL_QUERY["customer_id"])
    console.wait(lambda: console.text("#browse-count").startswith("Page 1:"))
    console.element("#download-csv").send_keys(ENTER)
    (saved,) = console.wait(lambda: list(downloads.glob("tracking-numbers-*.csv")))
    with open(saved, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["tracking_number"] for row in rows) == sorted(mine)
    for row in rows:
        assert row["customer_id"] == CANONICAL_QUERY["customer_id"]
        assert row["customer_name"] == CANONICAL_QUERY["customer_name"]
        assert row["customer_slug"] == CANONICAL_QUERY["customer_slug"]
        assert (row["origin_country"], row["destination_country"]) == ("MY", "ID")
        assert row["weight_kg"] == CANONICAL_QUERY["weight"]
        assert row["created_at"] == CANONICAL_QUERY["created_at"]
    console.element("#download-ndjson").send_keys(ENTER)
    (saved,) = console.wait(lambda: list(downloads.glob("tracking-numbers-*.ndjson")))
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert sorted(x["tracking_number"] for x in lines) == sorted(mine)
    assert not set(others) & {x["tracking_number"] for x in lines}
    # An issue window: one that ends in the past holds none of them, one that is open, all.
    window = "document.getElementById('issued-to').value = arguments[0]"
    console.driver.execute_script(window, "2020-01-01T00:00:00")
    console.element("#customer").send_keys(ENTER)
    console.wait(lambda: console.text("#browse-count") == "No record matches these filters.")
    console.driver.execute_script(window, "2099-01-01T00:00:00")
    console.element("#customer").send_keys(ENTER)
    console.wait(lambda: console.text("#browse-count").startswith("Page 1: records 1 to 35"))
    assert console.problems() == []


def test_a_stopped_allocator_shows_as_a_fault_and_the_panel_recovers(console: Console) -> None:
    issue(console.service, 5)
    console.open("allocator")
    console.sign_in()
    console.wait(lambda: console.text("#live-state").startswith("Live:"))

    def issuing() -> bool:
        issue(console.service, 20)  # until the chart shows a rate
        return "peak 0.0" not in console.text("#rate-summary")

    console.wait(issuing)
    assert console.element("#rate-line").get_attribute("points")
    assert console.elements("#workers tbody tr")  # the workers' blocks
    marks = dict(
        zip(
            [x.text for x in console.elements("#marks dt")],
            [x.text for x in console.elements("#marks dd")],
            strict=True,
        )
    )
    assert int(marks["Next counter"].replace(",", "")) >= 5
    assert console.axe() == [], "the allocator view"
    console.screenshots("allocator")
    allocator = console.service.child_pids("allocator")[-1]
    os.kill(allocator, signal.SIGSTOP)
    try:
        console.wait(lambda: "allocator does not answer" in console.text("#live-state"))
        assert "bad" in console.element("#live-state").get_attribute("class")
    finally:
        os.kill(allocator, signal.SIGCONT)
    console.wait(lambda: console.text("#live-state").startswith("Live:"))
    # Only the status requests that answered 503 while the allocator was stopped.
    assert console.problems(allowed=("allocator/status", "status of 503")) == []


def test_a_customer_name_carrying_markup_is_shown_as_text_and_runs_nothing(
    console: Console,
) -> None:
    (number,) = issue(console.service, 1, customer_name=MARKUP)
    console.open(f"find/{number}")
    console.sign_in()
    console.wait(lambda: console.elements("#find-result dl"))
    assert record_shown(console)["Customer name"] == MARKUP
    console.element('a[data-view="browse"]').send_keys(ENTER)
    console.type_into("#customer", CANONICAL_QUERY["customer_id"])
    console.wait(lambda: console.text("#browse-count").startswith("Page 1:"))
    cells = console.elements("#browse-table tbody td")
    assert MARKUP in [cell.text for cell in cells]
    assert console.elements("main img, main script") == []
    assert console.driver.execute_script("return window.__ran") is None
    assert console.problems() == []  # an alert, or a blocked script, would show here


def test_with_the_ledger_off_browse_says_so_plainly(ledger_off_console: Console) -> None:
    console = ledger_off_console
    console.open("browse")
    console.sign_in()
    console.element("#customer").send_keys(ENTER)
    console.wait(lambda: "The ledger is off" in console.text("#browse-problem"))
    assert not console.element("#browse-result").is_displayed()
    # The listing's 404 is the answer the page explains, not a fault of the page.
    assert console.problems(allowed=("tracking-numbers", "status of 404")) == []
