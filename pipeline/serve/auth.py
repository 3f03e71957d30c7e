"""Browser sessions for the web UI, derived from ``gallery.api_token``.

A browser signs in once by posting the token to the login page; it then holds a session
cookie instead of the token. The cookie is ``<nonce>.<expiry>.<mac>`` where ``mac`` is an
HMAC-SHA256 keyed with the API token, so every REST replica (they share the token and
the catalogue database) can verify it, and rotating the token ends every session.
Signing out revokes the nonce in the catalogue (``pipeline.gallery.audit``), so a copy
of the cookie dies with the sign-out on every replica.

The cookie is HttpOnly (page scripts never see it) and SameSite=Strict (no other site
can make the browser send it). By default it is also Secure and named
``__Host-facestream_session``: browsers then send it only over HTTPS (or to
http://localhost), for this host only; ``gallery.ui.secure_cookie = false`` drops both
for a plain-HTTP development server reached by another name.

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
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr
from starlette.requests import HTTPConnection
from starlette.responses import Response

SECURE_COOKIE = "__Host-facestream_session"
PLAIN_COOKIE = "facestream_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    csrf: str

    @property
    def principal(self) -> str:
        # Enough of the nonce to tell sessions apart in the audit, not to forge one.
        return f"ui-session:{self.nonce[:8]}"


def _mac(token: SecretStr, message: str) -> str:
    key = token.get_secret_value().encode()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two strings of any characters (``hmac.compare_digest``
    refuses non-ASCII ``str``: a crafted cookie must get a 401, not a 500)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def token_matches(token: SecretStr | None, given: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return token is not None and same(given, token.get_secret_value())


class Sessions:
    """Issue, verify and end the sessions of one server (``revoked``/``revoke``: the
    shared revocation list)."""

    def __init__(
        self,
        token: SecretStr | None,
        *,
        secure: bool = True,
        hours: float = 12.0,
        revoked: Callable[[str], bool] = lambda _nonce: False,
        revoke: Callable[[str, float], None] = lambda _nonce, _expires: None,
    ) -> None:
        self.token = token
        self.secure = secure
        self.seconds = int(hours * 3600)
        self.cookie = SECURE_COOKIE if secure else PLAIN_COOKIE
        self._revoked = revoked
        self._revoke = revoke

    def issue(self, response: Response) -> Session:
        """Start a session: set its cookie on ``response``."""
        assert self.token is not None
        nonce = secrets.token_urlsafe(18)
        expires = int(time.time()) + self.seconds
        value = f"{nonce}.{expires}.{_mac(self.token, f'session:{nonce}:{expires}')}"
        response.set_cookie(
            self.cookie,
            value,
            max_age=self.seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.secure,
        )
        return Session(nonce, expires, _mac(self.token, f"csrf:{nonce}"))

    def end(self, session: Session, response: Response) -> None:
        """Sign out: the nonce is revoked everywhere, the cookie deleted here."""
        self._revoke(session.nonce, float(session.expires))
        response.delete_cookie(
            self.cookie, path="/", httponly=True, samesite="strict", secure=self.secure
        )

    def current(self, request: HTTPConnection) -> Session | None:
        """The request's valid, unexpired, not signed-out session, or None (no token
        configured: none)."""
        raw = request.cookies.get(self.cookie)
        if self.token is None or not raw:
            return None
        parts = raw.split(".")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return None
        nonce, expires, mac = parts
        if not same(mac, _mac(self.token, f"session:{nonce}:{expires}")):
            return None
        if int(expires) < time.time() or self._revoked(nonce):
            return None
        return Session(nonce, int(expires), _mac(self.token, f"csrf:{nonce}"))

    def cookie_authorises(self, request: HTTPConnection, method: str) -> Session | None:
        """The session that authorises this request: safe methods need the cookie only;
        anything that may change state also needs the ``X-CSRF-Token`` header."""
        sess = self.current(request)
        if sess is None:
            return None
        if method in SAFE_METHODS or csrf_ok(sess, request.headers.get(CSRF_HEADER)):
            return sess
        return None


def csrf_ok(sess: Session, given: str | None) -> bool:
    return given is not None and same(given, sess.csrf)


def principal(
    sessions: Sessions,
    creds: HTTPAuthorizationCredentials | None,
    request: HTTPConnection,
    method: str,
) -> str | None:
    """Who the request is (``api-token`` or ``ui-session:<id>``), or None: the REST
    API's one check, the bearer token or a signed-in browser's cookie."""
    if (
        creds is not None
        and creds.scheme.lower() == "bearer"
        and token_matches(sessions.token, creds.credentials)
    ):
        return "api-token"
    sess = sessions.cookie_authorises(request, method)
    return sess.principal if sess is not None else None


def bearer(request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
    """The Authorization header as credentials (read without FastAPI's dependency, for
    the gate that runs before the app)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if not scheme or not value:
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=value.strip())
