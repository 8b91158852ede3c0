"""Who is asking: ``Authorization: Bearer TOKEN`` or HTTP Basic (user name + token). A token
the store confirmed is remembered for a minute (``KnownTokens``).

Without credentials a request is served only if the service allows anonymous clients. Each
anonymous client is told apart by a cookie the service signs (``AnonymousClients``): its
jobs are its own, as a user's are. Each user sees only their own jobs; an admin sees every
job. With ``anonymous_job_urls``, an anonymous job's URL alone is enough for any anonymous
client to use it, for clients that keep no cookies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from http.cookies import SimpleCookie
from pathlib import Path

from fastapi import HTTPException, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobbridge.store.uws import ANONYMOUS_PREFIX, User, UwsStore, hash_token, is_anonymous_owner

__all__ = [
    "COOKIE",
    "AnonymousClients",
    "KnownTokens",
    "authenticate",
    "cookie_secret",
    "may_access",
]

COOKIE = "jobbridge_client"
CLIENT_KEY = "jobbridge.client"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobbridge", Basic realm="jobbridge"'}


def _refuse(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=CHALLENGE)


class KnownTokens:
    """The users of the tokens the store confirmed lately. Users and their tokens are only
    ever added (never changed nor removed), so a token confirmed a moment ago is still
    good: a request whose token was confirmed less than ``keep`` seconds ago is served
    without a trip to the store, nor a thread to make it in. A token the store does not
    know is asked about every time."""

    def __init__(self, users: UwsStore, *, keep: float = 60.0, most: int = 10_000) -> None:
        self._users = users
        self._keep = keep
        self._most = most
        self._confirmed: dict[str, tuple[float, User]] = {}

    async def user(self, token: str) -> User | None:
        seen = self._confirmed.get(hash_token(token))
        if seen is not None and time.monotonic() - seen[0] < self._keep:
            return seen[1]
        return await run_in_threadpool(self.look_up, token)

    def look_up(self, token: str) -> User | None:
        """The token's user as the store says (blocking), remembered if there is one."""
        asked = time.monotonic()
        user = self._users.user_for_token(token)
        if user is not None:
            if len(self._confirmed) >= self._most:
                self._confirmed.clear()
            self._confirmed[hash_token(token)] = (asked, user)
        return user


async def authenticate(request: Request, tokens: KnownTokens, *, anonymous: bool) -> User:
    header = request.headers.get("authorization")
    if not header:
        client = request.scope.get(CLIENT_KEY)
        if anonymous and client:
            return User(name=ANONYMOUS_PREFIX + client, anonymous=True)
        raise _refuse("credentials are required: a Bearer token or Basic user name and token")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        user = await tokens.user(credentials.strip())
        if user is None:
            raise _refuse("the token is not valid")
        return user
    if scheme == "basic":
        name, token = _basic(credentials)
        user = await tokens.user(token)
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


def owner_of(user: User) -> str:
    """What a new job of ``user`` records as its owner."""
    return user.name


def may_access(user: User, owner: str | None, *, anonymous_job_urls: bool = False) -> bool:
    if user.admin or owner == user.name:
        return True
    return anonymous_job_urls and user.anonymous and is_anonymous_owner(owner)


def cookie_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, or one made once and kept (owner-only) in ``data_dir``."""
    if configured:
        return configured.encode()
    path = data_dir / "cookie-secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(32).encode()
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(made)
    try:
        os.link(partial, path)  # the first replica to get here wins; the others read it
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_bytes()


class AnonymousClients:
    """ASGI middleware: a request without credentials carries a client id, from its signed
    cookie or, for a new client, a fresh one sent back in ``Set-Cookie``."""

    def __init__(self, app: ASGIApp, *, secret: bytes, enabled: bool) -> None:
        self.app = app
        self._secret = secret
        self._enabled = enabled

    def _sign(self, client: str) -> str:
        return hmac.new(self._secret, client.encode(), hashlib.sha256).hexdigest()[:32]

    def _client(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie = SimpleCookie()
                try:
                    cookie.load(value.decode("latin-1"))
                except Exception:  # noqa: S112 - an unreadable cookie is no cookie
                    continue
                morsel = cookie.get(COOKIE)
                if morsel is not None:
                    client, _, signature = morsel.value.partition(".")
                    if hmac.compare_digest(signature, self._sign(client)) and client:
                        return client
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._enabled:
            await self.app(scope, receive, send)
            return
        if any(name == b"authorization" for name, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        fresh = client is None
        if client is None:
            client = secrets.token_hex(16)
        scope[CLIENT_KEY] = client
        path = scope.get("root_path", "") or "/"
        cookie = f"{COOKIE}={client}.{self._sign(client)}; Path={path}; HttpOnly; SameSite=Lax"

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", cookie.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
