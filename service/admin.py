"""The operator endpoints, /metrics and /allocator/status.

They answer loopback clients, and anyone presenting ``Authorization: Bearer <admin_token>``
when a token is configured. Everyone else gets a JSON 401 (a token is configured: present it)
or 403 (none is: these endpoints are for local operators only).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError
from allocator.protocol import Status
from service import errors, metrics
from service.keys import CLIENT, CONFIG, METRICS
from service.observe import observed
from service.server.answers import JsonAnswer


def _is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False  # not an IP peer: refuse rather than guess
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def is_operator(request: web.Request) -> bool:
    """Whether this client may use the operator endpoints: loopback, or the admin token."""
    if _is_loopback(request.remote):
        return True
    token = request.app[CONFIG].admin_token
    if not token:
        return False
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # The bytes the client sent: a byte that is not UTF-8 arrives as a lone surrogate, which
    # a plain encode() refuses (a 500). Such a token is wrong, not an error.
    sent = presented.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode())


def refusal(request: web.Request, correlation_id: str) -> web.StreamResponse | None:
    """None if this client may use the operator endpoints, else the JSON 401 or 403."""
    if is_operator(request):
        return None
    if request.app[CONFIG].admin_token:
        return errors.unauthorized(correlation_id)
    return errors.forbidden(correlation_id)


async def _status(request: web.Request) -> Status:
    """Everyone's counters and the allocator's state; raises AllocatorError when the allocator
    cannot be asked. Our own counts go first, so that they are current."""
    request.app[METRICS].report_to(request.app[CLIENT])
    return await request.app[CLIENT].status()


async def _answer(
    request: web.Request, correlation_id: str, render: Callable[[Status], web.StreamResponse]
) -> web.StreamResponse:
    """An operator endpoint's answer: the refusal, a 503, or ``render`` of the status."""
    if (refused := refusal(request, correlation_id)) is not None:
        return refused
    try:
        status = await _status(request)
    except AllocatorError:
        return errors.unavailable(correlation_id)
    return render(status)


@observed()
async def metrics_endpoint(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return await _answer(
        request,
        correlation_id,
        lambda status: web.Response(
            body=metrics.render(status),
            headers={"Content-Type": metrics.CONTENT_TYPE, "X-Request-ID": correlation_id},
        ),
    )


@observed()
async def allocator_status(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return await _answer(
        request,
        correlation_id,
        lambda status: JsonAnswer(msgspec.json.encode(status.allocator), correlation_id),
    )
