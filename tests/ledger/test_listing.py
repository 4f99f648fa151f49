"""Listing the ledger's records (ledger/listing.py), on a real SQLite file written with the
writer's own insert."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import listing
from ledger import sqlite as ledger_sqlite
from ledger.listing import Filters, Position
from ledger.records import Issue, key_digest
from tests.ledger.test_writer import KEY, OTHER_KEY, issue

ACME = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The writer's connection to a new ledger file (its schema made)."""
    connection = ledger_sqlite.open_for_writing(str(tmp_path / "ledger.sqlite3"))
    yield connection
    connection.close()


def write(db: sqlite3.Connection, key: bytes, *issues: Issue) -> None:
    """Commit ``issues`` as one group, as the writer does."""
    key_id = ledger_sqlite.key_id(db, key_digest(key))
    with ledger_sqlite.transaction(db):
        ledger_sqlite.insert(db, key_id, ledger_sqlite.next_issue_id(db), issues)


def walk(db: sqlite3.Connection, filters: Filters, limit: int) -> list[list[int]]:
    """Every page's counters, following each page's last position."""
    pages, after = [], None
    while found := listing.page(db, filters, after, limit):
        pages.append([listed.record.counter for listed in found])
        after = found[-1].position
    return pages


def test_records_come_newest_first_by_commit_then_counter_one_per_number(
    db: sqlite3.Connection,
) -> None:
    write(db, KEY, issue(1), issue(5, 3, 4))
    write(db, KEY, issue(2))  # committed last: first, whatever its counter
    write(db, OTHER_KEY, issue(1))  # another key's counter 1: another record
    found = listing.page(db, Filters(), None, 10)
    assert [(listed.record.counter, listed.record.number) for listed in found] == [
        (1, "MYID00000000001X"),
        (2, "MYID00000000002X"),
        (5, "MYID00000000005X"),
        (4, "MYID00000000004X"),
        (3, "MYID00000000003X"),
        (1, "MYID00000000001X"),
    ]
    assert [listed.position for listed in found] == [
        Position(4, 1),
        Position(3, 2),
        Position(2, 5),
        Position(2, 4),
        Position(2, 3),
        Position(1, 1),
    ]
    # Every field of its request, as the record of one number reads it.
    assert found[3].record == ledger_sqlite.find(db, key_digest(KEY), 4)


def test_pages_continue_after_the_last_position_even_inside_one_request(
    db: sqlite3.Connection,
) -> None:
    write(db, KEY, issue(*range(10, 17)), issue(20))
    write(db, KEY, issue(*range(30, 33)))
    assert walk(db, Filters(), 3) == [[32, 31, 30], [20, 16, 15], [14, 13, 12], [11, 10]]


def test_records_committed_during_a_walk_are_never_seen_twice_and_none_earlier_is_missed(
    db: sqlite3.Connection,
) -> None:
    write(db, KEY, *(issue(counter) for counter in range(100)))
    seen, after, counter = [], None, 1000
    while found := listing.page(db, Filters(), after, 7):
        seen += [listed.record.counter for listed in found]
        after = found[-1].position
        write(db, KEY, issue(counter), issue(counter + 1))  # newer: before the cursor
        counter += 2
    assert seen == list(range(99, -1, -1))


def test_each_filter_selects_its_records(db: sqlite3.Connection) -> None:
    write(
        db,
        KEY,
        issue(1, issued_at_ns=1_000),
        issue(2, issued_at_ns=2_000, customer_id=ACME),
        issue(3, issued_at_ns=3_000, customer_slug="acme"),
        issue(4, issued_at_ns=4_000, origin="SG"),
        issue(5, issued_at_ns=5_000, destination="TH"),
        issue(6, 7, issued_at_ns=6_000, correlation_id="order-77"),
    )
    cases = {
        Filters(customer_id=ACME): [2],
        Filters(customer_slug="acme"): [3],
        Filters(origin="SG"): [4],
        Filters(destination="TH"): [5],
        Filters(correlation_id="order-77"): [7, 6],
        Filters(issued_from_ns=2_000, issued_to_ns=4_000): [3, 2],  # from included, to not
        Filters(issued_from_ns=5_000): [7, 6, 5],
        Filters(issued_to_ns=2_000): [1],
        Filters(origin="MY", destination="ID", issued_from_ns=3_000): [7, 6, 3],
        Filters(customer_id=ACME, origin="SG"): [],
    }
    for filters, expected in cases.items():
        assert [x.record.counter for x in listing.page(db, filters, None, 10)] == expected, filters


def test_a_walk_with_filters_finds_every_matching_record_once(db: sqlite3.Connection) -> None:
    other = issue(0).customer_id
    issues = [
        issue(*range(c * 5, c * 5 + (c % 3) + 1), customer_id=ACME if c % 2 else other)
        for c in range(60)
    ]
    for start in range(0, 60, 6):
        write(db, KEY, *issues[start : start + 6])
    expected = sorted(
        (n.counter for x in issues if x.customer_id == ACME for n in x.numbers), reverse=True
    )
    pages = walk(db, Filters(customer_id=ACME), 4)
    assert [counter for found in pages for counter in found] == expected
    assert all(len(found) == 4 for found in pages[:-1])


PLANS = {
    "customer_id": (Filters(customer_id=ACME), "issue_by_customer_id"),
    "customer_slug": (Filters(customer_slug="acme"), "issue_by_slug"),
    "customer and correlation id": (
        Filters(customer_id=ACME, correlation_id="c-1"),
        "issue_by_customer_id",
    ),
    "customer and the rest": (
        Filters(
            customer_id=ACME,
            origin="MY",
            destination="ID",
            issued_from_ns=1,
            issued_to_ns=2,
        ),
        "issue_by_customer_id",
    ),
    "slug and time": (Filters(customer_slug="acme", issued_from_ns=1), "issue_by_slug"),
}


@pytest.mark.parametrize("name", PLANS)
@pytest.mark.parametrize("after", [None, Position(10, 5)])
def test_a_filtered_page_is_read_through_an_index_in_order_without_a_sort(
    db: sqlite3.Connection, name: str, after: Position | None
) -> None:
    """The page starts where the cursor is, found through the filter's index (with the issue's
    id after the value), and the issue's numbers through theirs: no scan, no sort."""
    filters, index = PLANS[name]
    sql, parameters = listing.query(filters, after, 100)
    plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]
    bound = " AND rowid<?" if after is not None else ""
    assert plan[0].startswith(f"SEARCH i USING INDEX {index} (")
    assert plan[0].endswith(f"=?{bound})")
    assert plan[1] == "SEARCH n USING INDEX issued_number_by_issue (issue_id=?)"
    assert len(plan) == 2  # no "USE TEMP B-TREE FOR ORDER BY"


@pytest.mark.parametrize(
    "filters",
    [Filters(), Filters(origin="MY", issued_from_ns=1, issued_to_ns=2, correlation_id="c-1")],
)
def test_without_an_indexed_filter_a_page_walks_the_ledger_newest_first_without_a_sort(
    db: sqlite3.Connection, filters: Filters
) -> None:
    sql, parameters = listing.query(filters, Position(10, 5), 100)
    plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]
    assert plan == [
        "SEARCH i USING INTEGER PRIMARY KEY (rowid<?)",
        "SEARCH n USING INDEX issued_number_by_issue (issue_id=?)",
    ]


async def test_pages_are_read_through_a_read_only_connection_of_their_own(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    async with listing.reading(str(tmp_path / "none.sqlite3")) as nothing:
        assert nothing is None  # no file yet: nothing recorded
        assert await listing.read_page(nothing, Filters(), None, 10) == []
    write(db, KEY, issue(1), issue(2))
    async with listing.reading(path) as reader:
        assert reader is not None
        found = await listing.read_page(reader, Filters(), None, 10)
        assert [x.record.counter for x in found] == [2, 1]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM issue")


def test_an_existing_file_opens_and_gains_the_listing_indexes(tmp_path: Path) -> None:
    """A ledger made before the listing (the old schema, without its indexes) still opens."""
    path = str(tmp_path / "old.sqlite3")
    with contextlib.closing(sqlite3.connect(path)) as old:
        old.executescript(
            "CREATE TABLE issue (id INTEGER PRIMARY KEY, issued_at_ns INTEGER NOT NULL,"
            " origin TEXT NOT NULL, destination TEXT NOT NULL, weight TEXT NOT NULL,"
            " created_at TEXT NOT NULL, customer_id TEXT NOT NULL, customer_name TEXT NOT NULL,"
            " customer_slug TEXT NOT NULL, correlation_id TEXT NOT NULL, host TEXT NOT NULL,"
            " idempotency_key_digest BLOB);"
            "CREATE INDEX issue_by_customer ON issue (customer_id, issued_at_ns);"
        )
    db = ledger_sqlite.open_for_writing(path)
    try:
        write(db, KEY, issue(1, customer_id=ACME))
        found = listing.page(db, Filters(customer_id=ACME), None, 5)
        assert [x.record.counter for x in found] == [1]
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"issue_by_customer_id", "issue_by_slug", "issued_number_by_issue"} <= names
    finally:
        db.close()
