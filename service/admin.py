"""The operator endpoints, /metrics and /allocator/status.

They answer loopback clients, and anyone presenting ``Authorization: Bearer <admin_token>``
when a token is configured. Everyone else gets a JSON 401 (a token is configured: present it)
or 403 (none is: these endpoints are for local operators only).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError
from allocator.files import private_directory
from allocator.protocol import AllocatorStatus, Status
from config.settings import Config
from ledger.errors import LedgerError
from ledger.protocol import LedgerStats
from service import errors, metrics
from service.keys import CLIENT, CONFIG, LEDGER, METRICS
from service.observe import observed
from service.server.answers import JsonAnswer

# Where the service keeps the admin token it made, in the runtime directory.
MADE_TOKEN_FILE = "admin-token"


def with_admin_token(config: Config) -> tuple[Config, str | None]:
    """``config`` with an admin token, and the file of the token the service made, if it did.

    Records are personal data and always need the token. So that ``make run`` stays one
    command, a service with no ``admin_token`` makes one, mode 0600 in its runtime directory,
    once per start: a reload reads the same file.
    """
    if config.admin_token:
        return config, None
    path = os.path.join(config.runtime_dir, MADE_TOKEN_FILE)
    # The state directory first: the runtime directory is inside it by default, and the
    # parents private_directory makes are not private.
    private_directory(config.state_dir)
    private_directory(config.runtime_dir)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    with open(path) as file:
        token = file.read().strip()
    return msgspec.structs.replace(config, admin_token=token), path


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
    return _is_loopback(request.remote) or _presents_token(request)


def _presents_token(request: web.Request) -> bool:
    token = request.app[CONFIG].admin_token
    if not token:
        return False
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # The bytes the client sent: a byte that is not UTF-8 arrives as a lone surrogate, which
    # a plain encode() refuses (a 500). Such a token is wrong, not an error.
    sent = presented.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode())


def reads_records(request: web.Request) -> bool:
    """Whether this client may read the ledger's records (personal data): the admin token,
    from anywhere. Loopback alone is not enough: behind a reverse proxy on the same host, every
    client is loopback."""
    return _presents_token(request)


def refusal(request: web.Request, correlation_id: str) -> web.StreamResponse | None:
    """None if this client may use the operator endpoints, else the JSON 401 or 403."""
    if is_operator(request):
        return None
    if request.app[CONFIG].admin_token:
        return errors.unauthorized(correlation_id)
    return errors.forbidden(correlation_id)


def records_refusal(request: web.Request, correlation_id: str) -> web.StreamResponse | None:
    """None if this client may read records (the admin token), else the JSON 401 or 403."""
    if reads_records(request):
        return None
    if request.app[CONFIG].admin_token:
        return errors.unauthorized(correlation_id)
    return errors.json_error(
        403, "Records need the admin token, and this service has none", correlation_id
    )


class LedgerStatus(msgspec.Struct, omit_defaults=True):
    """The ledger as the operator endpoints show it."""

    writer_up: bool
    stats: LedgerStats | None = None
    error: str | None = None  # why the writer could not be asked


class StatusBody(AllocatorStatus, kw_only=True):
    """/allocator/status: the allocator's state, and the ledger's (null with the ledger off)."""

    ledger: LedgerStatus | None = None


async def _status(request: web.Request) -> Status:
    """Everyone's counters and the allocator's state; raises AllocatorError when the allocator
    cannot be asked. Our own counts go first, so that they are current."""
    request.app[METRICS].report_to(request.app[CLIENT])
    return await request.app[CLIENT].status()


async def _ledger_status(request: web.Request) -> LedgerStatus | None:
    """The writer's counts; a writer that cannot be asked is a state to show, not an error."""
    ledger = request.app[LEDGER]
    if ledger is None:
        return None
    try:
        return LedgerStatus(writer_up=True, stats=await ledger.stats())
    except LedgerError as exc:
        return LedgerStatus(writer_up=False, error=str(exc))


async def _answer(
    request: web.Request,
    correlation_id: str,
    render: Callable[[Status, LedgerStatus | None], web.StreamResponse],
) -> web.StreamResponse:
    """An operator endpoint's answer: the refusal, a 503, or ``render`` of the status."""
    if (refused := refusal(request, correlation_id)) is not None:
        return refused
    try:
        status = await _status(request)
    except AllocatorError:
        return errors.unavailable(correlation_id)
    return render(status, await _ledger_status(request))


@observed()
async def metrics_endpoint(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return await _answer(
        request,
        correlation_id,
        lambda status, ledger: web.Response(
            body=metrics.render(status, ledger and ledger.stats, ledger is not None),
            headers={"Content-Type": metrics.CONTENT_TYPE, "X-Request-ID": correlation_id},
        ),
    )


@observed()
async def allocator_status(request: web.Request, correlation_id: str) -> web.StreamResponse:
    def render(status: Status, ledger: LedgerStatus | None) -> web.StreamResponse:
        fields = msgspec.structs.asdict(status.allocator)
        return JsonAnswer(msgspec.json.encode(StatusBody(**fields, ledger=ledger)), correlation_id)

    return await _answer(request, correlation_id, render)
