"""Who is asking: ``Authorization: Bearer TOKEN`` or HTTP Basic (user name + token).

Without credentials a request is served as the anonymous user only if the service is
configured to allow it. Each user sees only their own jobs; an admin sees every job.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import HTTPException, Request, status

from jobbridge.store.uws import User, UwsStore

__all__ = ["ANONYMOUS", "authenticate", "may_access"]

ANONYMOUS = User(name="anonymous", admin=False)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobbridge", Basic realm="jobbridge"'}


def _refuse(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=_CHALLENGE)


def authenticate(request: Request, users: UwsStore, *, anonymous: bool) -> User:
    header = request.headers.get("authorization")
    if not header:
        if anonymous:
            return ANONYMOUS
        raise _refuse("credentials are required: a Bearer token or Basic user name and token")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        user = users.user_for_token(credentials.strip())
        if user is None:
            raise _refuse("the token is not valid")
        return user
    if scheme == "basic":
        name, token = _basic(credentials)
        user = users.user_for_token(token)
        if user is None or not hmac.compare_digest(user.name, name):
            raise _refuse("the user name and token do not match")
        return user
    raise _refuse(f"authorization scheme {scheme!r} is not supported; use Bearer or Basic")


def _basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _refuse("Basic credentials are not valid base64") from None
    name, sep, token = decoded.partition(":")
    if not sep:
        raise _refuse("Basic credentials must be NAME:TOKEN")
    return name, token


def owner_of(user: User) -> str | None:
    """What a new job of ``user`` records as its owner (None: anonymous)."""
    return None if user is ANONYMOUS else user.name


def may_access(user: User, owner: str | None) -> bool:
    return user.admin or owner == owner_of(user)
