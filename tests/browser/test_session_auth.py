"""The web UI's session cookie and CSRF rules (pipeline/serve/web/auth.py), without a
browser or a gallery: what a forged, stale or foreign cookie gets, and what a write
authorised by the cookie needs."""

from __future__ import annotations

import time

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from pipeline.serve.web import auth

TOKEN = SecretStr("a-token-of-at-least-16")


def request(method: str = "GET", cookie: str | None = None, csrf: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{auth.COOKIE}={cookie}".encode()))
    if csrf is not None:
        headers.append((auth.CSRF_HEADER.lower().encode(), csrf.encode()))
    scope = {"type": "http", "method": method, "path": "/", "headers": headers,
             "scheme": "http", "query_string": b""}  # fmt: skip
    return Request(scope)


def signed_in() -> tuple[str, auth.Session]:
    response = Response()
    sess = auth.issue(TOKEN, request(), response)
    header = response.headers["set-cookie"]
    assert "httponly" in header.lower() and "samesite=strict" in header.lower()
    assert "secure" not in header.lower()  # plain http here; https requests get Secure
    return header.split(";")[0].split("=", 1)[1], sess


def test_a_cookie_of_this_token_is_a_session() -> None:
    cookie, sess = signed_in()
    assert TOKEN.get_secret_value() not in cookie
    assert auth.session(TOKEN, request(cookie=cookie)) == sess


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # MAC altered
        lambda c: "x" + c,  # nonce altered
        lambda c: ".".join([c.split(".")[0], str(int(time.time()) + 10**6), c.split(".")[2]]),
        lambda c: "garbage",
        lambda c: "",
    ],
)
def test_forged_cookies_are_no_session(forge: object) -> None:
    cookie, _ = signed_in()
    assert auth.session(TOKEN, request(cookie=forge(cookie))) is None  # type: ignore[operator]


def test_another_token_or_none_ends_every_session() -> None:
    cookie, _ = signed_in()
    assert auth.session(SecretStr("another-token-16-chars"), request(cookie=cookie)) is None
    assert auth.session(None, request(cookie=cookie)) is None


def test_expired_sessions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cookie, _ = signed_in()
    later = time.time() + auth.SESSION_SECONDS + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    assert auth.session(TOKEN, request(cookie=cookie)) is None


def test_cookie_writes_need_the_sessions_csrf_token() -> None:
    cookie, sess = signed_in()
    other_cookie, other = signed_in()
    assert auth.cookie_authorises(TOKEN, request("GET", cookie))
    assert not auth.cookie_authorises(TOKEN, request("POST", cookie))
    assert not auth.cookie_authorises(TOKEN, request("DELETE", cookie, other.csrf))
    assert auth.cookie_authorises(TOKEN, request("DELETE", cookie, sess.csrf))
    assert sess.csrf != other.csrf and other_cookie != cookie


def test_bearer_needs_no_cookie_and_no_csrf() -> None:
    good = HTTPAuthorizationCredentials(scheme="Bearer", credentials=TOKEN.get_secret_value())
    bad = HTTPAuthorizationCredentials(scheme="Bearer", credentials="wrong-token-16-chars")
    assert auth.authorised(TOKEN, good, request("POST"))
    assert not auth.authorised(TOKEN, bad, request("POST"))
    assert not auth.authorised(None, good, request("POST"))
