"""The console's files as the workers serve them: security headers, caching, weight, no inline
code, nothing from elsewhere, and shipped in the package (the browser tests: tests/console/)."""

from __future__ import annotations

import fnmatch
import html.parser
import re
import tomllib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from service.console import ASSETS

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "service" / "static"
PATHS = ["/console/", "/console/console.js", "/console/console.css", "/console/favicon.svg"]
TYPES = ["text/html", "text/javascript", "text/css", "image/svg+xml"]


@pytest.mark.parametrize(("path", "content_type"), list(zip(PATHS, TYPES, strict=True)))
async def test_the_page_and_its_assets_carry_the_security_headers(
    client: TestClient, path: str, content_type: str
) -> None:
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == content_type
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Request-ID"]


async def test_an_unchanged_asset_is_revalidated_with_its_etag(client: TestClient) -> None:
    first = await client.get("/console/console.js")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/console/console.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["Content-Security-Policy"] == first.headers["Content-Security-Policy"]
    other = await client.get("/console/console.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200


async def test_no_name_reaches_a_file_that_is_not_the_consoles(client: TestClient) -> None:
    for path in ("/console/nothing.js", "/console/..%2Fapp.py", "/console/%2e%2e"):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/json"
    bare = await client.get("/console", allow_redirects=False)
    assert bare.status == 308
    assert bare.headers["Location"] == "/console/"


def test_the_page_weighs_at_most_60_kb() -> None:
    weight = sum(len(ASSETS[name].body) for name in ("index.html", "console.css", "console.js"))
    assert weight <= 60_000, weight


class _Markup(html.parser.HTMLParser):
    """What in a page the Content-Security-Policy would block or the page would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.references: list[str] = []
        self.labels: set[str] = set()
        self.fields: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.inline += [f"{tag} {name}" for name, _ in attrs if name.startswith("on")]
        if "style" in values or tag == "style":
            self.inline.append(f"{tag} style")
        self.references += [values[name] or "" for name in ("src", "href") if name in values]
        self._in_script = tag == "script"
        if tag == "label":
            self.labels.add(values.get("for") or "")
        if tag in ("input", "select", "textarea"):
            self.fields.append(values.get("id") or "")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_page_has_no_inline_code_loads_nothing_from_elsewhere_and_labels_every_field() -> None:
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.inline == []
    assert [ref for ref in markup.references if "//" in ref or ":" in ref] == []
    assert markup.fields
    assert set(markup.fields) <= markup.labels


def test_the_script_inserts_text_never_markup() -> None:
    script = (STATIC / "console.js").read_text()
    sinks = r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function"
    assert re.findall(sinks, script) == []


def test_the_consoles_files_ship_in_the_package() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "service.static" in setuptools["packages"]
    patterns = setuptools["package-data"]["service.static"]
    for path in STATIC.iterdir():
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path.name
    assert set(ASSETS) == {path.name for path in STATIC.iterdir()}


def test_every_subpackage_ships_in_the_wheel() -> None:
    """``packages`` is a list: a package left out of it is missing from a wheel (and from an
    installed service that does not run from its source tree)."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    for top in list(packages):
        for init in (REPO / top).rglob("__init__.py"):
            package = ".".join(init.parent.relative_to(REPO).parts)
            assert package in packages, f"{package} is left out of the wheel"
