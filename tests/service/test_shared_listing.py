"""``GET /tracking-numbers`` on a PostgreSQL store: the listing reads the shared ledger, every
host's records, served like production with a real allocator on PostgreSQL and a real writer
forwarding to it; skipped without a PostgreSQL server, like the forwarder's tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Config
from service.app import create_app
from service.listing_query import RULES
from tests.conftest import CANONICAL_QUERY, Allocators
from tests.ledger.test_forwarder import Forwarding, plant
from tests.service.conftest import JsonErrorTestServer
from tests.service.test_listing import ADMIN, TOKEN, issue, listing
from tests.system.conftest import PostgresServer

ANOTHER_HOSTS_NUMBER = "CAUS00000000042Y"


Serve = Callable[[Config], Awaitable[TestClient]]


@pytest.fixture
def serve(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> Serve:
    async def make(config: Config) -> TestClient:
        return await aiohttp_client(JsonErrorTestServer(create_app(config)))

    return make


@pytest.fixture
async def shared(
    make_config: Callable[..., Config], allocators: Allocators, database: str, serve: Serve
) -> AsyncIterator[tuple[TestClient, Forwarding]]:
    """The app of a host of a PostgreSQL store, and its writer forwarding to it."""
    config = make_config("--admin-token", TOKEN, "--store", database)
    await allocators.start(store=database)
    forwarding = Forwarding(config, database)
    await forwarding.start()
    try:
        yield await serve(config), forwarding
    finally:
        await forwarding.client.close()
        await forwarding.stop()


async def test_the_listing_pages_through_every_hosts_records_in_the_shared_ledger(
    shared: tuple[TestClient, Forwarding], database: str
) -> None:
    client, forwarding = shared
    mine = await issue(client, 3)
    await forwarding.until_forwarded()
    await plant(database, 10**9, ANOTHER_HOSTS_NUMBER)  # another host's, forwarded last
    status, page, headers = await listing(
        client, customer_id=CANONICAL_QUERY["customer_id"], limit="2"
    )
    assert status == 200
    assert [item["tracking_number"] for item in page["items"]] == [ANOTHER_HOSTS_NUMBER, mine[2]]
    assert page["items"][0]["host"] == "host-b"
    link = headers["Link"]
    response = await client.get(link[1 : link.index(">")], headers=ADMIN)
    rest = await response.json()
    assert [item["tracking_number"] for item in rest["items"]] == [mine[1], mine[0]]
    assert rest["next_cursor"] is None
    # A cursor of this listing, altered, or sent with other filters, is refused.
    cursor = page["next_cursor"]
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for params in ({"cursor": flipped}, {"cursor": cursor, "origin_country_id": "MY"}):
        status, body, _ = await listing(
            client, customer_id=CANONICAL_QUERY["customer_id"], limit="2", **params
        )
        assert (status, body["details"]) == (400, {"cursor": [RULES["cursor"]]}), params
    # A stream reads the shared ledger too.
    status, body, _ = await listing(client, headers={"Accept": "application/x-ndjson"})
    assert [json.loads(line)["tracking_number"] for line in body.splitlines()] == [
        ANOTHER_HOSTS_NUMBER,
        *mine[::-1],
    ]


async def test_when_postgresql_cannot_be_read_the_listing_is_a_503_with_retry_after(
    make_config: Callable[..., Config],
    allocators: Allocators,
    server: PostgresServer,
    serve: Serve,
) -> None:
    # A store whose database does not exist: every connection is refused, as with a server
    # down. The allocator, on this host's file, hands out the cursor's key as ever.
    await allocators.start()
    missing = server.database_url("tn_missing_database")
    client = await serve(make_config("--admin-token", TOKEN, "--store", missing))
    for accept in ("application/json", "application/x-ndjson", "text/csv"):
        status, body, headers = await listing(client, headers={"Accept": accept})
        assert status == 503, accept
        assert headers["Retry-After"] == "1"
        assert body["error"] == "The ledger cannot be read right now; retry shortly"
