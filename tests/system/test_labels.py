"""Labels from the real run.py (two workers, uvloop, each with its own label thread), drawn
while numbers are issued, every label read back by a real decoder."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp

from tests.conftest import CANONICAL_QUERY
from tests.labels.decoding import decoded, pdf_pages, png_image
from tests.system.conftest import Service

TOKEN = "label-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def labels_and_numbers(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url + "/next-tracking-number", params={**CANONICAL_QUERY, "count": "20"}
        ) as answer:
            numbers = (await answer.json())["tracking_numbers"]

        async def png_label(number: str) -> list[str]:
            async with session.get(
                f"{url}/tracking-numbers/{number}/label", params={"format": "png"}, headers=ADMIN
            ) as answer:
                assert answer.status == 200
                return decoded(png_image(await answer.read()))

        async def issued_with_label() -> list[str]:
            params = {**CANONICAL_QUERY, "label": "png"}
            async with session.get(url + "/next-tracking-number", params=params) as answer:
                body = await answer.json()
            assert body["label"]["media_type"] == "image/png"
            found = decoded(png_image(base64.b64decode(body["label"]["data"])))
            assert found == [body["tracking_number"]]
            return found

        # Labels and issuing at once, over both workers.
        read = await asyncio.gather(
            *(png_label(number) for number in numbers), *(issued_with_label() for _ in range(10))
        )
        assert read[:20] == [[number] for number in numbers]
        async with session.post(
            url + "/labels", json={"numbers": numbers}, headers=ADMIN
        ) as answer:
            assert answer.status == 200
            pages = pdf_pages(await answer.read())
        assert [decoded(page) for page in pages] == [[number] for number in numbers]


def test_the_service_draws_labels_that_read_back_while_it_issues(short_tmp: Path) -> None:
    service = Service(short_tmp, 2, "--ledger", "--admin-token", TOKEN)
    try:
        service.start()
        asyncio.run(labels_and_numbers(service.url))
        assert service.stop() == 0
    finally:
        service.kill()
