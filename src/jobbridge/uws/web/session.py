"""Who is using the web pages, and forms that only the pages themselves can post.

Two cookies, both ``Secure``, ``HttpOnly`` and ``SameSite=Lax``, scoped to the pages' path:

- ``jobbridge_session``: a random session id, made on the first page a browser sees and
  made anew at each login and logout. Every form carries ``_csrf``, an HMAC of that id with
  the service's secret, and every POST is refused (403) unless its ``_csrf`` matches the
  session's: another site can neither read the id nor compute the token.
- ``jobbridge_token``: the user's token, set by the login form; the same token that UWS
  clients send as ``Authorization: Bearer``. Without it, the pages act as an anonymous client
  when the service allows those, and ask to log in otherwise.

Browsers keep ``Secure`` cookies only over HTTPS, or over plain HTTP to ``localhost`` and
loopback addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from jobbridge.store.uws import ANONYMOUS_PREFIX, User, UwsStore
from jobbridge.uws.auth import CLIENT_KEY

__all__ = ["CSRF_FIELD", "SESSION_COOKIE", "TOKEN_COOKIE", "Session", "Sessions", "web_user"]

SESSION_COOKIE = "jobbridge_session"
TOKEN_COOKIE = "jobbridge_token"  # noqa: S105 - a cookie name
CSRF_FIELD = "_csrf"
_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_AGE = 7 * 24 * 3600


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    fresh: bool
    """Made for this request: its cookie is to be sent with the response."""


class Sessions:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def csrf_for(self, session_id: str) -> str:
        message = f"csrf:{session_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _new(self) -> Session:
        session_id = secrets.token_hex(16)
        return Session(session_id, self.csrf_for(session_id), fresh=True)

    def current(self, request: Request) -> Session:
        """The request's session, or a new one (whose cookie ``keep`` sends)."""
        known = request.cookies.get(SESSION_COOKIE, "")
        if _SESSION_ID.match(known):
            return Session(known, self.csrf_for(known), fresh=False)
        return self._new()

    def renewed(self) -> Session:
        """A new session, for a login or a logout (a session id known before a login must
        not carry over)."""
        return self._new()

    def csrf_ok(self, request: Request, sent: object) -> bool:
        known = request.cookies.get(SESSION_COOKIE, "")
        if not _SESSION_ID.match(known) or not isinstance(sent, str):
            return False
        return hmac.compare_digest(sent, self.csrf_for(known))

    def keep(self, response: Response, session: Session, path: str) -> None:
        """Send the session's cookie if it is new; ``path``: where the pages are."""
        if session.fresh:
            _set(response, SESSION_COOKIE, session.id, path)

    def log_in(self, response: Response, token: str, path: str) -> None:
        _set(response, TOKEN_COOKIE, token, path)

    def log_out(self, response: Response, path: str) -> None:
        response.delete_cookie(TOKEN_COOKIE, path=path, secure=True, httponly=True, samesite="lax")


def _set(response: Response, name: str, value: str, path: str) -> None:
    response.set_cookie(
        name, value, max_age=_MAX_AGE, path=path, secure=True, httponly=True, samesite="lax"
    )


def web_user(request: Request, users: UwsStore, *, anonymous: bool) -> User | None:
    """The user whose token the browser keeps; else an anonymous client if the service
    allows those; else None (the pages ask to log in)."""
    token = request.cookies.get(TOKEN_COOKIE)
    if token:
        user = users.user_for_token(token)
        if user is not None:
            return user
    client = request.scope.get(CLIENT_KEY)
    if anonymous and client:
        return User(name=ANONYMOUS_PREFIX + client, anonymous=True)
    return None
