"""Every private name of aiohttp that we rely on, checked on real aiohttp objects.

service/server/ is the one package that uses them; its ``__init__`` says what to check before a
new aiohttp version is allowed. When a release renames, removes or changes one of these, a test
here fails naming the name and the module that relies on it. With the shortcuts off
(``aiohttp_shortcuts = false``) nothing reads them, and the run without them skips these.

aiohttp-cors's router adapter, which ``service.app._AsciiCors`` extends, is not in its public
API either (its module is not exported): its names are checked here too, in both runs.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp
import aiohttp_cors
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from aiohttp.web_protocol import RequestHandler

from tests.service.conftest import shortcuts_only

ANSWERS = "service/server/answers.py"
DISPATCH = "service/server/dispatch.py"
HEADER_TIMEOUT = "service/server/header_timeout.py"
RUNNER = "service/server/runner.py"
TEST_SERVER = "tests/service/conftest.py"
APP = "service/app.py"

ANY = object()  # a name whose value on a fresh object does not matter


class Relied(NamedTuple):
    owner: str  # a key of OWNERS: the aiohttp object the name is read on
    name: str
    module: str  # the module that relies on it
    fresh: object = ANY  # its value on a fresh object, where the module tests for that value
    parameters: tuple[str, ...] = ()  # a method's parameters that the module passes or receives


async def _no_handler(request: web.BaseRequest) -> web.StreamResponse:
    raise AssertionError("never called")


# Real objects, built as aiohttp builds them (a mocked request is a real web.Request).
OWNERS: dict[str, Callable[[], object]] = {
    "StreamResponse": web.StreamResponse,
    "Request": lambda: make_mocked_request("GET", "/"),
    "Server": lambda: web.Server(_no_handler),
    "RequestHandler": lambda: web.Server(_no_handler)(),
    "AppRunner": lambda: web.AppRunner(web.Application()),
    "HTTPException": web.HTTPNotFound,
    "TestServer": lambda: TestServer(web.Application()),
}

RELIED_ON = [
    # The plain answer: it sets what StreamResponse's own prepare and write_eof set, and leaves
    # to aiohttp's way any answer that has cookies, compression or chunking.
    Relied("StreamResponse", "_payload_writer", ANSWERS, fresh=None),
    Relied("StreamResponse", "_eof_sent", ANSWERS, fresh=False),
    Relied("StreamResponse", "_keep_alive", ANSWERS, fresh=None),  # None: force_close() not called
    Relied("StreamResponse", "_req", ANSWERS),
    Relied("StreamResponse", "_body_length", ANSWERS),
    Relied("StreamResponse", "_must_be_empty_body", ANSWERS),
    Relied("StreamResponse", "_headers", ANSWERS),
    Relied("StreamResponse", "_cookies", ANSWERS),
    Relied("StreamResponse", "_compression", ANSWERS, fresh=False),
    Relied("StreamResponse", "_chunked", ANSWERS, fresh=False),
    Relied("Request", "_payload_writer", ANSWERS),
    Relied("Request", "_match_info", ANSWERS),  # whose apps' response signals are to run
    # The shortcut sets the match info, as Application._handle does.
    Relied("Request", "_match_info", DISPATCH),
    # The header timeout: heads parsed so far, and aiohttp's own "waiting for a request".
    Relied("RequestHandler", "_request_count", HEADER_TIMEOUT, fresh=0),
    Relied("RequestHandler", "_waiter", HEADER_TIMEOUT, fresh=None),
    Relied("RequestHandler", "_loop", HEADER_TIMEOUT),
    # The assembly: the server rebuilt from aiohttp's, its handlers made ours, the drain.
    Relied("AppRunner", "_make_server", RUNNER),
    Relied("Server", "_kwargs", RUNNER),
    Relied("Server", "_loop", RUNNER),
    Relied("RequestHandler", "_manager", RUNNER),
    Relied("HTTPException", "__http_exception__", RUNNER, fresh=True),
    # Hooks that are not aiohttp's documented API: renamed, our override would never run.
    Relied(
        "RequestHandler",
        "handle_error",
        RUNNER,
        parameters=("request", "status", "exc", "message"),
    ),
    Relied(
        "RequestHandler", "finish_response", RUNNER, parameters=("request", "resp", "start_time")
    ),
    # The test server built with the production runner.
    Relied("TestServer", "_make_runner", TEST_SERVER),
]

# Names our subclasses add: if aiohttp's base class took one of them, one would overwrite the
# other.
OUR_OWN = [
    Relied("StreamResponse", "_json", ANSWERS),
    Relied("StreamResponse", "_correlation_id", ANSWERS),
    Relied("StreamResponse", "_answer", ANSWERS),
    Relied("StreamResponse", "_rest", ANSWERS),
    Relied("StreamResponse", "aiohttp_prepares", ANSWERS),
    Relied("RequestHandler", "header_timeout", HEADER_TIMEOUT),
    Relied("RequestHandler", "_head_timer", HEADER_TIMEOUT),
    Relied("RequestHandler", "_arm_head_timer", HEADER_TIMEOUT),
    Relied("RequestHandler", "_disarm_head_timer", HEADER_TIMEOUT),
    Relied("RequestHandler", "_head_timed_out", HEADER_TIMEOUT),
    Relied("RequestHandler", "answer_error", RUNNER),
    Relied("Server", "answer_error", RUNNER),
    Relied("Server", "header_timeout", RUNNER),
    Relied("Server", "draining", RUNNER),
    Relied("AppRunner", "drain", RUNNER),
    Relied("AppRunner", "_issue_route", RUNNER),
    Relied("AppRunner", "_answer_error", RUNNER),
    Relied("AppRunner", "_header_timeout", RUNNER),
]

# Routines whose logic we repeat, with a fingerprint of the source that was read against ours
# (aiohttp 3.14.5). A new source fails here until someone has compared it with our copy and
# updated the fingerprint.
COPIED: list[tuple[Callable[..., Any], str, str]] = [
    (web.Application._handle, "1294b2b208b1", DISPATCH + ": issuing_first"),
    (web.Request._prepare_hook, "7a5763052879", ANSWERS + ": _signalled"),
    (web.StreamResponse._start, "7e03ebd82e7f", ANSWERS + ": JsonAnswer.prepare"),
    (web.StreamResponse.write_eof, "12b174e4cfe3", ANSWERS + ": JsonAnswer.write_eof"),
    (
        RequestHandler._process_keepalive,
        "b472e0fb8445",
        HEADER_TIMEOUT + ": _head_timed_out",
    ),
    (web.Server.__init__, "ceb06418afb9", RUNNER + ": AppRunner._make_server"),
    (web.Server.__call__, "c5700549e688", RUNNER + ": JsonErrorServer.__call__"),
]


AIOHTTP = f"aiohttp {aiohttp.__version__}"
AIOHTTP_CORS = f"aiohttp-cors {aiohttp_cors.__version__}"


def problem(owner: object, relied: Relied, library: str = AIOHTTP) -> str | None:
    """What is wrong with ``relied`` on ``owner``, a real object of ``library``; None if
    nothing."""
    where = f"{library}: {relied.owner}.{relied.name}, which {relied.module}"
    if not hasattr(owner, relied.name):
        return f"{where} relies on, is gone"
    value = getattr(owner, relied.name)
    if relied.fresh is not ANY and value != relied.fresh:
        return f"{where} relies on, is {value!r} on a fresh object, not {relied.fresh!r}"
    missing = [p for p in relied.parameters if p not in inspect.signature(value).parameters]
    if missing:
        return f"{where} overrides or calls, has no parameter {', '.join(missing)}"
    return None


def fingerprint(routine: Callable[..., Any]) -> str:
    return hashlib.sha256(inspect.getsource(routine).encode()).hexdigest()[:12]


def _id(relied: Relied) -> str:
    return f"{relied.owner}.{relied.name}-{relied.module}"


@shortcuts_only
@pytest.mark.parametrize("relied", RELIED_ON, ids=_id)
async def test_aiohttp_keeps_every_private_name_we_rely_on(relied: Relied) -> None:
    # Async: a Server and its handlers are built on the running loop.
    found = problem(OWNERS[relied.owner](), relied)
    assert found is None, found


@shortcuts_only
@pytest.mark.parametrize("ours", OUR_OWN, ids=_id)
async def test_aiohttp_does_not_take_the_names_our_subclasses_add(ours: Relied) -> None:
    assert not hasattr(OWNERS[ours.owner](), ours.name), (
        f"aiohttp {aiohttp.__version__} now has {ours.owner}.{ours.name} too, which "
        f"{ours.module} adds for its own use: rename ours"
    )


@shortcuts_only
@pytest.mark.parametrize(
    ("routine", "reviewed", "copy"), COPIED, ids=[copy for _, _, copy in COPIED]
)
def test_the_routines_we_copy_are_those_we_read(
    routine: Callable[..., Any], reviewed: str, copy: str
) -> None:
    assert fingerprint(routine) == reviewed, (
        f"aiohttp {aiohttp.__version__} changed {routine.__qualname__}, which {copy} repeats: "
        f"compare the two, update the copy if needed, then the fingerprint here "
        f"({fingerprint(routine)})"
    )


def _cors_adapter() -> object:
    from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

    return ResourcesUrlDispatcherRouterAdapter(web.Application().router, {})


# _AsciiCors subclasses aiohttp-cors's router adapter, which CorsConfig takes as router_adapter,
# and overrides the two hooks through which every CORS header of a request reaches aiohttp-cors:
# renamed, the overrides would never run, and a non-ASCII Origin would cost the answer.
CORS_OWNERS: dict[str, Callable[[], object]] = {
    "ResourcesUrlDispatcherRouterAdapter": _cors_adapter,
    "CorsConfig": lambda: aiohttp_cors.CorsConfig,
}
CORS_RELIED_ON = [
    Relied("CorsConfig", "__init__", APP, parameters=("app", "defaults", "router_adapter")),
    Relied(
        "ResourcesUrlDispatcherRouterAdapter", "__init__", APP, parameters=("router", "defaults")
    ),
    Relied(
        "ResourcesUrlDispatcherRouterAdapter",
        "is_cors_enabled_on_request",
        APP,
        parameters=("request",),
    ),
    Relied(
        "ResourcesUrlDispatcherRouterAdapter",
        "get_preflight_request_config",
        APP,
        parameters=("preflight_request", "origin", "requested_method"),
    ),
]


@pytest.mark.parametrize("relied", CORS_RELIED_ON, ids=_id)
def test_aiohttp_cors_keeps_every_name_our_cors_adapter_relies_on(relied: Relied) -> None:
    found = problem(CORS_OWNERS[relied.owner](), relied, AIOHTTP_CORS)
    assert found is None, found


def test_a_missing_or_changed_name_is_reported_with_the_module_relying_on_it() -> None:
    # The checks above must be able to fail, and say where to look when they do.
    gone = Relied("StreamResponse", "_gone", ANSWERS)
    assert problem(web.StreamResponse(), gone) == (
        f"aiohttp {aiohttp.__version__}: StreamResponse._gone, which {ANSWERS} relies on, is gone"
    )
    changed = Relied("StreamResponse", "_eof_sent", ANSWERS, fresh=True)
    assert "_eof_sent" in (problem(web.StreamResponse(), changed) or "")
    renamed = Relied("StreamResponse", "write_eof", ANSWERS, parameters=("payload",))
    assert "no parameter payload" in (problem(web.StreamResponse(), renamed) or "")
