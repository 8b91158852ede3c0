"""The push endpoint: ``POST /push/{job id}`` with ``event``, ``token`` and, for an array
member, ``index`` (see ``jobbridge.push``). A wrong token is 403 before anything is looked
up, an unknown job 404, a malformed message 400; a verified push answers 204 once the
engine has read the job's own records, whether or not they changed anything."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from jobbridge.config import ServiceSettings
from jobbridge.engine import Engine
from jobbridge.errors import JobNotFoundError
from jobbridge.push import PushEvent, PushKey
from jobbridge.uws.metrics import ServiceMetrics

__all__ = ["PushContext", "push_endpoint", "router"]

PATH = "/push"
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - recognised, not bound

router = APIRouter()


@dataclass(frozen=True)
class PushContext:
    """What the endpoint needs, kept in ``app.state.push``."""

    engine: Engine
    key: PushKey
    metrics: ServiceMetrics


def push_endpoint(settings: ServiceSettings) -> str:
    """The URL jobs push to (without the job id)."""
    if settings.push_url:
        return settings.push_url.rstrip("/")
    if settings.base_url:
        return settings.base_url.rstrip("/") + PATH
    host = "127.0.0.1" if settings.host in _WILDCARDS else settings.host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name
    return f"http://{host}:{settings.port}{PATH}"


def _refused(context: PushContext, status: int, message: str) -> Response:
    context.metrics.push_refused.inc()
    return PlainTextResponse(message + "\n", status_code=status)


@router.post(PATH + "/{job_id}", status_code=204, include_in_schema=False)
async def receive_push(request: Request, job_id: str) -> Response:
    context: PushContext = request.app.state.push
    form = await request.form()
    token, event_text, index_text = (form.get(name) for name in ("token", "event", "index"))
    if not isinstance(token, str) or not context.key.verify(job_id, token):
        return _refused(context, 403, "the push token does not fit this job")
    try:
        event = PushEvent(event_text if isinstance(event_text, str) else "")
    except ValueError:
        return _refused(context, 400, "event must be started or ended")
    index = None
    if isinstance(index_text, str) and index_text:
        if not (index_text.isascii() and index_text.isdigit()) or len(index_text) > 9:
            return _refused(context, 400, "index must be an array index")
        index = int(index_text)
    try:
        await run_in_threadpool(context.engine.pushed, job_id, event, index)
    except JobNotFoundError:
        return _refused(context, 404, "no such job")
    context.metrics.push_messages.labels(event.value).inc()
    return Response(status_code=204)
