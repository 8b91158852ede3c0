"""Each user's own secrets over the service's API: ``{base}/secrets``. A user sees and
changes only their own; no answer ever carries a value. Anonymous clients have none."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from jobbridge.secrets import Secret, SecretError, SecretKind, Secrets
from jobbridge.store.uws import User
from jobbridge.uws.errors import Forbidden, NotFound, UwsError
from jobbridge.uws.routes import CurrentUser, _blocking, _context, _fields, _one

__all__ = ["secrets_router"]

secrets_router = APIRouter()


def _secrets(request: Request, user: User) -> Secrets:
    if user.anonymous:
        raise Forbidden("anonymous clients have no secrets; send a user's credentials")
    return _context(request).service.engine.secrets


def _shown(secret: Secret) -> dict[str, str]:
    return secret.model_dump(mode="json")


@secrets_router.get("/secrets", summary="The names and kinds of your secrets, never their values")
async def list_secrets(request: Request, user: CurrentUser) -> Response:
    store = _secrets(request, user)
    found = await _blocking(store.of, user.name)
    return JSONResponse({"secrets": [_shown(secret) for secret in found]})


@secrets_router.post("/secrets", status_code=201, summary="Store a secret (NAME, KIND, VALUE)")
async def add_secret(request: Request, user: CurrentUser) -> Response:
    """``NAME``, ``KIND`` (``env``, the default, or ``file``) and ``VALUE``, as form fields;
    a file's value may also come as an uploaded file ``VALUE`` in a multipart body."""
    store = _secrets(request, user)
    fields, uploads = await _fields(request)
    name = _one(fields, "name")
    if not name:
        raise UwsError("NAME is required")
    try:
        kind = SecretKind((_one(fields, "kind") or "env").lower())
    except ValueError:
        raise UwsError("KIND must be env or file") from None
    files = [upload for upload in uploads if upload.name.lower() == "value"]
    text = _one(fields, "value")
    if files:
        value = files[-1].stream.read()
    elif text is not None:
        value = text.encode()
    else:
        raise UwsError("VALUE is required")
    try:
        secret = await _blocking(store.add, user.name, name, kind, value)
    except SecretError as error:
        raise UwsError(str(error)) from None
    return JSONResponse(_shown(secret), status_code=201)


@secrets_router.delete("/secrets/{name}", status_code=204, summary="Forget a secret")
async def remove_secret(request: Request, name: str, user: CurrentUser) -> Response:
    store = _secrets(request, user)
    try:
        await _blocking(store.remove, user.name, name)
    except SecretError as error:
        raise NotFound(str(error)) from None
    return Response(status_code=204)
