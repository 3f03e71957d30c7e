"""Browser sessions for the web UI, derived from ``gallery.api_token``.

A browser signs in once by posting the token to the login page; it then holds a session
cookie instead of the token. The cookie is ``<nonce>.<expiry>.<mac>`` where ``mac`` is an
HMAC-SHA256 keyed with the API token, so every REST replica (they share the token and
nothing else) can verify it without server-side state, and rotating the token ends every
session. The cookie is HttpOnly (page scripts never see it) and SameSite=Strict (no other
site can make the browser send it); it is Secure when the request came over HTTPS.

CSRF: SameSite=Strict already keeps cross-site requests cookie-less in current browsers;
as a second, browser-independent line every state-changing request authenticated by the
cookie must also carry a CSRF token, ``HMAC(token, "csrf:" + nonce)``: bound to this
session, unguessable without the cookie, and unreadable from another origin. The UI's
forms carry it in a hidden ``csrf`` field; scripts and API calls send it as the
``X-CSRF-Token`` header. Requests with the bearer header need no CSRF token: a browser
never attaches that header on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "facestream_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str


def _mac(token: SecretStr, message: str) -> str:
    key = token.get_secret_value().encode()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def token_matches(token: SecretStr | None, given: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return token is not None and hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    )


def _csrf(token: SecretStr, nonce: str) -> str:
    return _mac(token, f"csrf:{nonce}")


def issue(token: SecretStr, request: Request, response: Response) -> Session:
    """Start a session: set its cookie on ``response``."""
    nonce = secrets.token_urlsafe(18)
    expires = int(time.time()) + SESSION_SECONDS
    value = f"{nonce}.{expires}.{_mac(token, f'session:{nonce}:{expires}')}"
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return Session(nonce, expires, _csrf(token, nonce))


def end(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def session(token: SecretStr | None, request: Request) -> Session | None:
    """The request's valid, unexpired session, or None (no token configured: none)."""
    raw = request.cookies.get(COOKIE)
    if token is None or not raw:
        return None
    parts = raw.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    nonce, expires, mac = parts
    if not hmac.compare_digest(mac, _mac(token, f"session:{nonce}:{expires}")):
        return None
    if int(expires) < time.time():
        return None
    return Session(nonce, int(expires), _csrf(token, nonce))


def csrf_ok(sess: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), sess.csrf.encode())


def cookie_authorises(token: SecretStr | None, request: Request) -> bool:
    """Does the session cookie authorise this request? Safe methods need the cookie only;
    anything that may change state also needs the ``X-CSRF-Token`` header."""
    sess = session(token, request)
    if sess is None:
        return False
    if request.method in SAFE_METHODS:
        return True
    return csrf_ok(sess, request.headers.get(CSRF_HEADER))


def authorised(
    token: SecretStr | None, creds: HTTPAuthorizationCredentials | None, request: Request
) -> bool:
    """The REST API's one check: the bearer token, or a signed-in browser's cookie."""
    if (
        creds is not None
        and creds.scheme.lower() == "bearer"
        and token_matches(token, creds.credentials)
    ):
        return True
    return cookie_authorises(token, request)
