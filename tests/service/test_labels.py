"""Shipping labels over HTTP (service/labels.py), served like production with a real allocator
and ledger writer behind it; every label read back by a real decoder."""

from __future__ import annotations

import base64
import concurrent.futures
import re
import uuid
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient

from allocator.actor import Allocator
from config.settings import Config
from service.labels import LEDGER_OFF, MANY_RULES, NO_RECORD, NUMBERS_RULE, RULES
from service.params import RULES as ISSUING_RULES
from tests.conftest import CANONICAL_QUERY
from tests.labels.decoding import decoded, element_widths, pdf_pages, png_image, svg_image
from tests.service.conftest import ClientFactory
from tests.service.test_listing import ADMIN, TOKEN, issue

MEDIA_TYPES = {
    "pdf": "application/pdf",
    "png": "image/png",
    "svg": "image/svg+xml",
    "zpl": "application/zpl",
}


@pytest.fixture
async def admin_client(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> TestClient:
    return await make_client(make_config("--admin-token", TOKEN))


async def label(client: TestClient, number: str, **params: str) -> tuple[int, str, bytes]:
    response = await client.get(f"/tracking-numbers/{number}/label", params=params, headers=ADMIN)
    return response.status, response.content_type, await response.read()


def read(kind: str, body: bytes) -> list[str]:
    """What a real decoder reads in a label of ``kind``, rasterised at the printer's 203 dpi."""
    if kind == "png":
        return decoded(png_image(body))
    if kind == "pdf":
        return [text for page in pdf_pages(body) for text in decoded(page)]
    assert kind == "svg"
    return decoded(svg_image(body))


@pytest.mark.parametrize("kind", ["pdf", "png", "svg"])
async def test_a_label_in_each_format_reads_back_as_its_number(
    admin_client: TestClient, kind: str
) -> None:
    (number,) = await issue(admin_client)
    status, media_type, body = await label(admin_client, number, format=kind)
    assert status == 200
    assert media_type == MEDIA_TYPES[kind]
    assert read(kind, body) == [number]


async def test_pdf_is_the_default_and_a_number_is_found_in_lower_case_too(
    admin_client: TestClient,
) -> None:
    (number,) = await issue(admin_client)
    status, media_type, body = await label(admin_client, number.lower())
    assert (status, media_type) == (200, "application/pdf")
    assert read("pdf", body) == [number]


async def test_a_zpl_label_sets_its_size_and_carries_exactly_the_number(
    admin_client: TestClient,
) -> None:
    (number,) = await issue(admin_client)
    status, media_type, body = await label(admin_client, number, format="zpl", dpi="300")
    assert (status, media_type) == (200, "application/zpl")
    text = body.decode()
    assert text.startswith("^XA")
    assert text.rstrip().endswith("^XZ")
    assert "^PW1200" in text
    assert "^LL1800" in text
    assert re.findall(r"\^BC[^\^]*\^FD([^\^]*)\^FS", text) == [number]


async def test_every_bad_parameter_is_listed_in_one_400(admin_client: TestClient) -> None:
    (number,) = await issue(admin_client)
    response = await admin_client.get(
        f"/tracking-numbers/{number}/label?format=gif&size=a4&dpi=600", headers=ADMIN
    )
    assert response.status == 400
    assert (await response.json())["details"] == {
        "format": [RULES["format"]],
        "size": [RULES["size"]],
        "dpi": [RULES["dpi"]],
    }
    response = await admin_client.get(
        f"/tracking-numbers/{number}/label?format=pdf&format=png", headers=ADMIN
    )
    assert response.status == 400
    assert set((await response.json())["details"]) == {"format"}


@pytest.mark.parametrize("number", ["MYID0000000000AA", "NOPE", "RR473124829GB"])
async def test_a_number_without_a_record_is_a_404(admin_client: TestClient, number: str) -> None:
    await issue(admin_client)
    response = await admin_client.get(f"/tracking-numbers/{number}/label", headers=ADMIN)
    assert response.status == 404
    body = await response.json()
    assert body["error"] == NO_RECORD
    assert body["correlation_id"]


async def test_a_number_with_its_country_codes_changed_has_no_label(
    admin_client: TestClient,
) -> None:
    """The same serial with other country codes was never issued (the record says which)."""
    (number,) = await issue(admin_client)
    response = await admin_client.get(f"/tracking-numbers/ID{number[2:]}/label", headers=ADMIN)
    assert response.status == 404


async def test_labels_need_the_admin_token(admin_client: TestClient) -> None:
    (number,) = await issue(admin_client)
    response = await admin_client.get(f"/tracking-numbers/{number}/label")
    assert response.status == 401
    response = await admin_client.get("/labels")
    assert response.status == 401


async def test_with_the_ledger_off_labels_are_a_404_that_says_so(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--admin-token", TOKEN, "--no-ledger"))
    (number,) = await issue(client)
    for response in (
        await client.get(f"/tracking-numbers/{number}/label", headers=ADMIN),
        await client.get("/labels", headers=ADMIN),
        await client.post("/labels", json={"numbers": [number]}, headers=ADMIN),
    ):
        assert response.status == 404
        assert (await response.json())["error"] == LEDGER_OFF


async def test_the_listings_filters_give_one_pdf_of_their_labels(
    admin_client: TestClient,
) -> None:
    ours = str(uuid.uuid4())
    numbers = await issue(admin_client, count=30, customer_id=ours)
    await issue(admin_client, count=5)
    response = await admin_client.get(
        "/labels", params={"customer_id": ours, "limit": "25"}, headers=ADMIN
    )
    assert response.status == 200
    assert response.content_type == "application/pdf"
    pages = pdf_pages(await response.read())
    # Newest first, as the listing orders them: the last 25 of the request, highest first.
    assert [decoded(page) for page in pages] == [[number] for number in reversed(numbers[5:])]


async def test_a_list_of_numbers_gives_one_zpl_stream_in_its_order(
    admin_client: TestClient,
) -> None:
    numbers = await issue(admin_client, count=12)
    wanted = numbers[::-1][:10]
    response = await admin_client.post(
        "/labels?format=zpl", json={"numbers": wanted}, headers=ADMIN
    )
    assert response.status == 200
    text = (await response.read()).decode()
    assert text.count("^XA") == text.count("^XZ") == 10
    assert re.findall(r"\^BC[^\^]*\^FD([^\^]*)\^FS", text) == wanted


async def test_many_labels_name_every_number_without_a_record_and_every_bad_field(
    admin_client: TestClient,
) -> None:
    (number,) = await issue(admin_client)
    response = await admin_client.post(
        "/labels", json={"numbers": [number, "MYID0000000000AA", "NOPE"]}, headers=ADMIN
    )
    assert response.status == 404
    assert (await response.json())["details"] == {"numbers": ["MYID0000000000AA", "NOPE"]}
    response = await admin_client.post(
        "/labels?format=png&dpi=100", json={"numbers": []}, headers=ADMIN
    )
    assert response.status == 400
    assert (await response.json())["details"] == {
        "format": [MANY_RULES["format"]],
        "dpi": [RULES["dpi"]],
        "numbers": [NUMBERS_RULE],
    }
    response = await admin_client.post("/labels", json={"numbers": [number] * 1001}, headers=ADMIN)
    assert response.status == 400
    response = await admin_client.get("/labels?limit=1001&format=svg", headers=ADMIN)
    assert response.status == 400
    assert set((await response.json())["details"]) == {"limit", "format"}


@pytest.mark.parametrize("kind", ["pdf", "png", "zpl"])
async def test_the_issuing_route_hands_back_the_label_at_once(
    admin_client: TestClient, kind: str
) -> None:
    response = await admin_client.get(
        "/next-tracking-number", params={**CANONICAL_QUERY, "label": kind}
    )
    assert response.status == 200
    body = await response.json()
    document = base64.b64decode(body["label"]["data"])
    assert body["label"]["media_type"] == MEDIA_TYPES[kind]
    number = body["tracking_number"]
    if kind == "zpl":
        assert re.findall(r"\^FD([^\^]*)\^FS", document.decode()) == [number]
    else:
        assert read(kind, document) == [number]


async def test_an_s10_number_issued_with_a_label_gets_it_too(admin_client: TestClient) -> None:
    query = {**CANONICAL_QUERY, "origin_country_id": "GB", "scheme": "s10"}
    response = await admin_client.get(
        "/next-tracking-number", params={**query, "service_indicator": "RR", "label": "png"}
    )
    assert response.status == 200
    body = await response.json()
    assert re.match(r"^RR[0-9]{9}GB\Z", body["tracking_number"])
    assert read("png", base64.b64decode(body["label"]["data"])) == [body["tracking_number"]]


async def test_a_label_comes_with_one_number_only(admin_client: TestClient) -> None:
    """A batch's labels are POST /labels's, not a JSON answer's."""
    response = await admin_client.get(
        "/next-tracking-number", params={**CANONICAL_QUERY, "label": "pdf", "count": "3"}
    )
    body = await response.json()
    assert len(body["tracking_numbers"]) == 3
    assert "label" not in body
    response = await admin_client.get(
        "/next-tracking-number", params={**CANONICAL_QUERY, "label": "png", "count": "1"}
    )
    body = await response.json()
    assert read("png", base64.b64decode(body["label"]["data"])) == body["tracking_numbers"]


async def test_a_bad_label_on_the_issuing_route_is_a_400(admin_client: TestClient) -> None:
    response = await admin_client.get(
        "/next-tracking-number", params={**CANONICAL_QUERY, "label": "gif"}
    )
    assert response.status == 400
    assert (await response.json())["details"] == {"label": [ISSUING_RULES["label"]]}


async def test_without_label_the_answer_is_unchanged(admin_client: TestClient) -> None:
    response = await admin_client.get("/next-tracking-number", params=CANONICAL_QUERY)
    assert "label" not in await response.json()


async def test_200_issued_numbers_read_back_from_every_format(admin_client: TestClient) -> None:
    """Each of 200 issued numbers, ours and UPU S10, drawn from its record: PNG (its bars and
    spaces whole modules of 3 dots at 203 dpi, the narrowest 3), SVG, one PDF page and one ZPL
    label each, read back exactly."""
    numbers = await issue(admin_client, count=150)
    for indicator, country in (("RR", "GB"), ("EE", "FR")):
        s10 = {"scheme": "s10", "service_indicator": indicator, "count": "25"}
        query = {**CANONICAL_QUERY, "origin_country_id": country, **s10}
        async with admin_client.get("/next-tracking-number", params=query) as response:
            numbers += (await response.json())["tracking_numbers"]
    assert sum(len(number) == 13 for number in numbers) == 50
    drawn = []
    for number in numbers:
        for kind in ("png", "svg"):
            status, _, body = await label(admin_client, number, format=kind)
            assert status == 200
            drawn.append((kind, body, number))
    # Rasterised and decoded two at a time: rsvg-convert and zxing-cpp let go of the GIL.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda done: read(done[0], done[1]), drawn))
    assert found == [[number] for _, _, number in drawn]
    for kind, body, _ in drawn:
        if kind == "png":
            widths = element_widths(png_image(body))
            assert min(widths) == 3
            assert all(width % 3 == 0 for width in widths)
    many = await admin_client.post("/labels", json={"numbers": numbers}, headers=ADMIN)
    assert [decoded(page) for page in pdf_pages(await many.read())] == [[n] for n in numbers]
    many = await admin_client.post("/labels?format=zpl", json={"numbers": numbers}, headers=ADMIN)
    fields = re.findall(r"\^BC[^\^]*\^FD([^\^]*)\^FS", (await many.read()).decode())
    assert fields == numbers


async def test_an_idempotent_request_gets_no_label_and_its_retry_the_same_answer(
    admin_client: TestClient,
) -> None:
    """The kept answer is what a retry gets: no label drawn into it (docs/operations.md)."""
    params = {**CANONICAL_QUERY, "label": "pdf"}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = await admin_client.get("/next-tracking-number", params=params, headers=headers)
    again = await admin_client.get("/next-tracking-number", params=params, headers=headers)
    assert first.status == again.status == 200
    body = await first.json()
    assert "label" not in body
    assert (await again.json())["tracking_number"] == body["tracking_number"]
