"""Who may use the operator endpoints, with the peer injected into the request."""

from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from config.settings import Config
from service.admin import is_operator, refusal
from service.keys import CONFIG


def request_from(peer: str, config: Config, authorization: str | None = None) -> web.Request:
    app = web.Application()
    app[CONFIG] = config
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    headers = {"Authorization": authorization} if authorization else {}
    return make_mocked_request("GET", "/metrics", headers=headers, app=app, transport=transport)


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_need_no_token(config: Config, peer: str) -> None:
    assert refusal(request_from(peer, config), "c") is None


@pytest.mark.parametrize("peer", ["192.0.2.7", "2001:db8::1", "::ffff:192.0.2.7"])
def test_remote_clients_are_forbidden_when_no_token_is_configured(
    config: Config, peer: str
) -> None:
    refused = refusal(request_from(peer, config, "Bearer anything"), "c")
    assert refused is not None
    assert refused.status == 403
    assert refused.content_type == "application/json"


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic s3cret", "Bearer", "s3cret", "Bearer s3cre"]
)
def test_a_missing_or_wrong_token_is_unauthorized(make_config, authorization: str | None) -> None:  # type: ignore[no-untyped-def]
    config = make_config("--admin-token", "s3cret")
    refused = refusal(request_from("192.0.2.7", config, authorization), "c")
    assert refused is not None
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("authorization", ["Bearer s3cret", "bearer s3cret", "Bearer  s3cret "])
def test_the_right_token_opens_the_endpoints_to_anyone(make_config, authorization: str) -> None:  # type: ignore[no-untyped-def]
    config = make_config("--admin-token", "s3cret")
    assert refusal(request_from("192.0.2.7", config, authorization), "c") is None


@pytest.mark.parametrize(
    ("peer", "token", "authorization", "operator"),
    [
        ("127.0.0.1", None, None, True),
        ("::1", "s3cret", None, True),
        ("192.0.2.7", None, "Bearer s3cret", False),
        ("192.0.2.7", "s3cret", "Bearer wrong", False),
        ("192.0.2.7", "s3cret", None, False),
        ("192.0.2.7", "s3cret", "Bearer s3cret", True),
    ],
)
def test_is_operator_says_who_may_use_the_operator_endpoints(
    make_config,  # type: ignore[no-untyped-def]
    peer: str,
    token: str | None,
    authorization: str | None,
    operator: bool,
) -> None:
    config = make_config("--admin-token", token) if token else make_config()
    assert is_operator(request_from(peer, config, authorization)) is operator
