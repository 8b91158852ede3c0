"""Request bodies, bounded: a body larger than ``max_upload_bytes`` is refused with 413,
before it is read when it says its length, else as soon as it grows past the limit. The end
of each body is kept, so that a multipart body cut short can be told from a whole one."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobbridge.uws.errors import TooLarge

__all__ = ["BodyLimit", "body_tail"]

_KEY = "jobbridge.body"
_TAIL = 512


@dataclass
class _Seen:
    size: int = 0
    tail: bytes = b""


def _too_large(limit: int) -> str:
    return f"limit max_upload_bytes reached: a request body may have at most {limit} bytes"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = PlainTextResponse(_too_large(self.max_bytes) + "\n", status_code=413)
            await response(scope, receive, send)
            return
        seen = scope[_KEY] = _Seen()

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                seen.size += len(chunk)
                if seen.size > self.max_bytes:
                    raise TooLarge(_too_large(self.max_bytes))
                seen.tail = (seen.tail + chunk)[-_TAIL:]
            return message

        await self.app(scope, counted, send)


def body_tail(request: Request) -> bytes:
    """The last bytes of the request's body, once it has been read."""
    seen: _Seen | None = request.scope.get(_KEY)
    return b"" if seen is None else seen.tail
