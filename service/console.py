"""The operator console: ``/console/``, a read-only page fed by our own JSON endpoints.

Its files (service/static/) ship in the package and are read once, at import: a request for
one is a dictionary lookup, never a path on disk, so no name a client sends can reach another
file. Each answer carries the page's security headers (a strict Content-Security-Policy: no
inline script or style, nothing from elsewhere, no framing) and an ETag, so a browser
revalidates its copy and gets a 304 while the file is unchanged. The page holds no data: it
asks the endpoints for everything, with the admin token the operator gives it.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import NamedTuple

from aiohttp import web

from service import errors
from service.observe import observed

ROUTE = "/console/"
ASSET_ROUTE = "/console/{asset}"
BARE_ROUTE = "/console"
INDEX = "index.html"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# 'self' only, and nothing inline: a name carrying markup can run nothing even if it were
# ever inserted as markup. form-action 'self': the forms are handled by the script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors' older spelling
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of the console, by name, with its content type and ETag."""
    found = {}
    for entry in resources.files("service").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[entry.name] = Asset(body, _TYPES[suffix], etag)
    return found


ASSETS = load_assets()


def _answer(request: web.Request, asset: Asset, correlation_id: str) -> web.Response:
    headers = {
        **SECURITY_HEADERS,
        "ETag": asset.etag,
        # Kept, but checked each time: a new release's page is never mixed with old assets.
        "Cache-Control": "no-cache",
        "X-Request-ID": correlation_id,
    }
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


@observed()
async def page(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return _answer(request, ASSETS[INDEX], correlation_id)


@observed()
async def asset(request: web.Request, correlation_id: str) -> web.StreamResponse:
    found = ASSETS.get(request.match_info["asset"])
    if found is None:
        return errors.json_error(404, "Not Found", correlation_id, headers=SECURITY_HEADERS)
    return _answer(request, found, correlation_id)


@observed()
async def bare(request: web.Request, correlation_id: str) -> web.StreamResponse:
    """``/console`` without its slash: the page's relative asset links need the slash."""
    return web.Response(
        status=308, headers={"Location": ROUTE, "X-Request-ID": correlation_id, **SECURITY_HEADERS}
    )
