"""CORS: browsers on the configured origins may call the API; others get no CORS headers."""

from collections.abc import Callable

from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.settings import Config
from tests.conftest import CANONICAL_QUERY
from tests.service.conftest import ClientFactory

ALLOWED = "https://shop.example"
OTHER = "https://evil.example"
PATH = "/next-tracking-number"


async def cors_client(make_config: Callable[..., Config], make_client: ClientFactory) -> TestClient:
    return await make_client(make_config("--cors-origins", f"{ALLOWED}, https://other.example"))


async def preflight(client: TestClient, origin: str) -> tuple[int, dict[str, str]]:
    response = await client.options(
        PATH,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-Request-ID",
        },
    )
    return response.status, dict(response.headers)


async def test_a_preflight_from_an_allowed_origin_is_granted(
    allocator: Allocator, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await cors_client(make_config, make_client)
    status, headers = await preflight(client, ALLOWED)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "GET" in headers["Access-Control-Allow-Methods"]
    assert "X-REQUEST-ID" in headers["Access-Control-Allow-Headers"].upper()


async def test_a_preflight_from_another_origin_is_refused(
    allocator: Allocator, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await cors_client(make_config, make_client)
    status, headers = await preflight(client, OTHER)
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers


async def test_a_simple_request_from_an_allowed_origin_can_read_the_answer(
    allocator: Allocator, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await cors_client(make_config, make_client)
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"Origin": ALLOWED})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-REQUEST-ID" in response.headers["Access-Control-Expose-Headers"].upper()


async def test_a_simple_request_from_another_origin_gets_no_cors_headers(
    allocator: Allocator, make_config: Callable[..., Config], make_client: ClientFactory
) -> None:
    client = await cors_client(make_config, make_client)
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_without_configured_origins_there_is_no_cors(
    allocator: Allocator, config: Config, make_client: ClientFactory
) -> None:
    client = await make_client(config)
    response = await client.get(PATH, params=CANONICAL_QUERY, headers={"Origin": ALLOWED})
    assert "Access-Control-Allow-Origin" not in response.headers
    status, headers = await preflight(client, ALLOWED)
    assert status == 405
    assert "Access-Control-Allow-Origin" not in headers
