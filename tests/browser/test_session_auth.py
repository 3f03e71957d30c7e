"""The web UI's session cookie and CSRF rules (pipeline/serve/auth.py), without a
browser or a gallery: what a forged, stale, signed-out or foreign cookie gets, and what
a write authorised by the cookie needs."""

from __future__ import annotations

import time

import pytest
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

from pipeline.serve import auth

TOKEN = SecretStr("a-token-of-at-least-16")


def sessions(token: SecretStr | None = TOKEN, **kw: object) -> auth.Sessions:
    return auth.Sessions(token, **kw)  # type: ignore[arg-type]  # each test's keyword options


def request(
    method: str = "GET",
    cookie: str | None = None,
    csrf: str | None = None,
    name: str = auth.SECURE_COOKIE,
) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{name}={cookie}".encode()))
    if csrf is not None:
        headers.append((auth.CSRF_HEADER.lower().encode(), csrf.encode()))
    scope = {"type": "http", "method": method, "path": "/", "headers": headers,
             "scheme": "http", "query_string": b""}  # fmt: skip
    return Request(scope)


def signed_in(s: auth.Sessions | None = None) -> tuple[str, auth.Session]:
    s = s or sessions()
    response = Response()
    sess = s.issue(response)
    header = response.headers["set-cookie"]
    lower = header.lower()
    assert "httponly" in lower and "samesite=strict" in lower and "path=/" in lower
    assert header.startswith(f"{s.cookie}=")
    return header.split(";")[0].split("=", 1)[1], sess


def test_the_cookie_is_secure_and_host_bound_by_default() -> None:
    response = Response()
    sessions().issue(response)
    header = response.headers["set-cookie"]
    assert header.startswith("__Host-facestream_session=") and "; secure" in header.lower()
    assert "domain=" not in header.lower()  # a __Host- cookie names no domain
    plain = Response()
    sessions(secure=False).issue(plain)
    assert plain.headers["set-cookie"].startswith("facestream_session=")
    assert "secure" not in plain.headers["set-cookie"].lower()


def test_a_cookie_of_this_token_is_a_session() -> None:
    cookie, sess = signed_in()
    assert TOKEN.get_secret_value() not in cookie
    assert sessions().current(request(cookie=cookie)) == sess


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # MAC altered
        lambda c: "x" + c,  # nonce altered
        lambda c: ".".join([c.split(".")[0], str(int(time.time()) + 10**6), c.split(".")[2]]),
        lambda c: "garbage",
        lambda c: "",
        lambda c: c[:-1] + "é",  # non-ASCII MAC: refused, not a 500 (issue 17)
        lambda c: "é." + c.split(".", 1)[1],  # non-ASCII nonce
        lambda c: ".".join([c.split(".")[0], "１２３", c.split(".")[2]]),  # non-ASCII digits
    ],
)
def test_forged_cookies_are_no_session(forge: object) -> None:
    cookie, _ = signed_in()
    assert sessions().current(request(cookie=forge(cookie))) is None  # type: ignore[operator]  # the parametrized forgeries are callables


def test_a_signed_out_session_is_dead_everywhere() -> None:
    revoked: dict[str, float] = {}
    s = sessions(revoked=revoked.__contains__, revoke=revoked.__setitem__)
    cookie, sess = signed_in(s)
    copy = request(cookie=cookie)  # a copy of the cookie, taken before the sign-out
    assert s.current(copy) == sess
    s.end(sess, Response())
    assert revoked == {sess.nonce: float(sess.expires)}
    # Another replica: same token, same revocation list.
    other = sessions(revoked=revoked.__contains__)
    assert s.current(copy) is None and other.current(copy) is None


def test_another_token_or_none_ends_every_session() -> None:
    cookie, _ = signed_in()
    assert sessions(SecretStr("another-token-16-chars")).current(request(cookie=cookie)) is None
    assert sessions(None).current(request(cookie=cookie)) is None


def test_expired_sessions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    s = sessions(hours=1.0)
    cookie, _ = signed_in(s)
    later = time.time() + 3600 + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    assert s.current(request(cookie=cookie)) is None


def test_cookie_writes_need_the_sessions_csrf_token() -> None:
    s = sessions()
    cookie, sess = signed_in(s)
    other_cookie, other = signed_in(s)
    assert s.cookie_authorises(request("GET", cookie), "GET")
    assert not s.cookie_authorises(request("POST", cookie), "POST")
    assert not s.cookie_authorises(request("DELETE", cookie, other.csrf), "DELETE")
    assert s.cookie_authorises(request("DELETE", cookie, sess.csrf), "DELETE")
    assert not s.cookie_authorises(request("DELETE", cookie, "é"), "DELETE")
    assert sess.csrf != other.csrf and other_cookie != cookie


def test_bearer_needs_no_cookie_and_no_csrf() -> None:
    good = HTTPAuthorizationCredentials(scheme="Bearer", credentials=TOKEN.get_secret_value())
    bad = HTTPAuthorizationCredentials(scheme="Bearer", credentials="wrong-token-16-chars")
    odd = HTTPAuthorizationCredentials(scheme="Bearer", credentials="tokén-with-ümlauts")
    assert auth.principal(sessions(), good, request("POST"), "POST") == "api-token"
    assert auth.principal(sessions(), bad, request("POST"), "POST") is None
    assert auth.principal(sessions(), odd, request("POST"), "POST") is None
    assert auth.principal(sessions(None), good, request("POST"), "POST") is None
