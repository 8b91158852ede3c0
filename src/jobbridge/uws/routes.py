"""The UWS 1.1 REST binding: the job list of each definition, its jobs and their
sub-resources. XML by default, JSON when the client accepts ``application/json``."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from jobbridge.config import ServiceSettings
from jobbridge.phase import Phase
from jobbridge.store.uws import User
from jobbridge.uws import xml
from jobbridge.uws.auth import KnownTokens, authenticate, owner_of
from jobbridge.uws.body import body_tail
from jobbridge.uws.control import MAX_INTEGER, parse_timestamp
from jobbridge.uws.errors import Forbidden, NotFound, UnsupportedMediaType, UwsError
from jobbridge.uws.models import utc_text
from jobbridge.uws.notify import JobListener
from jobbridge.uws.results import RangeNotSatisfiable, parse_range
from jobbridge.uws.service import WAITABLE_PHASES, JobState, Upload, UwsService
from jobbridge.uws.views import (
    Links,
    error_text,
    job_view,
    parameter_views,
    ref_views,
    result_views,
    shown_owner,
)
from jobbridge.uws.waiting import PhaseWaiters, wait_for

__all__ = ["ServiceContext", "router"]

XML_TYPE = "application/xml"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain"
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"

T = TypeVar("T")


@dataclass
class ServiceContext:
    """What every request needs, kept in ``app.state.uws``."""

    service: UwsService
    settings: ServiceSettings
    tokens: KnownTokens
    waiters: PhaseWaiters | None = None
    listener: JobListener | None = None
    """Hears other replicas' phase changes (PostgreSQL only)."""
    creations: CapacityLimiter | None = None
    """The lane of the creations that only write to a store that writes one transaction at
    a time (see ``UwsService.only_writes``): they run one at a time, as they would take
    turns at its lock anyway, and threads taking turns there cost more than the writes."""


router = APIRouter()


def _context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.uws
    return context


async def _user(request: Request) -> User:
    context = _context(request)
    return await authenticate(request, context.tokens, anonymous=context.settings.anonymous)


CurrentUser = Annotated[User, Depends(_user)]


def _links(request: Request) -> Links:
    configured = _context(request).settings.base_url
    return Links(configured or str(request.base_url))


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return JSON_TYPE in accept and XML_TYPE not in accept.split(",")[0]


def _document(request: Request, data: Any, render: Callable[[], bytes]) -> Response:
    if _wants_json(request):
        return Response(json.dumps(data), media_type=JSON_TYPE)
    return Response(render(), media_type=XML_TYPE)


def _see_other(url: str) -> Response:
    return Response(status_code=303, headers={"Location": url})


def _text(value: object) -> PlainTextResponse:
    return PlainTextResponse("" if value is None else str(value))


async def _blocking(
    function: Callable[..., T], *args: Any, limiter: CapacityLimiter | None = None
) -> T:
    return await to_thread.run_sync(functools.partial(function, *args), limiter=limiter)


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    kind, *options = header.split(";")
    parameters = {}
    for option in options:
        key, _, value = option.partition("=")
        parameters[key.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), parameters


async def _fields(request: Request) -> tuple[list[tuple[str, str]], list[Upload]]:
    """Query and form fields in order, and the files of a multipart body. Any other body
    is refused (415), and so is a multipart body cut short (400)."""
    fields = list(request.query_params.multi_items())
    uploads: list[Upload] = []
    media_type, options = _media_type(request.headers.get("content-type", ""))
    if media_type not in (FORM_TYPE, MULTIPART_TYPE):
        if await request.body():
            shown = media_type or "a body without Content-Type"
            raise UnsupportedMediaType(
                f"parameters are sent as {FORM_TYPE} or {MULTIPART_TYPE}, not {shown}"
            )
        return fields, uploads
    form = await request.form()
    if media_type == MULTIPART_TYPE:
        closing = b"--" + options.get("boundary", "").encode("latin-1") + b"--"
        if closing not in body_tail(request):
            raise UwsError("the multipart body is cut short: its closing boundary is missing")
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            uploads.append(Upload(key, value.filename or key, value.file))
        else:
            fields.append((key, value))
    return fields, uploads


def _one(fields: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in fields if k.lower() == name]
    return values[-1] if values else None


async def _state(request: Request, definition: str, job_id: str, user: User) -> JobState:
    return await _blocking(_context(request).service.state, definition, job_id, user)


async def _wait(
    request: Request,
    waiters: PhaseWaiters,
    state: JobState,
    seconds: float,
    expected: Phase | None,
    user: User,
) -> JobState:
    """The job once its phase is no longer the one it had (UWS WAIT), or after ``seconds``.
    A wake-up that finds the phase unchanged (all waiting requests are woken when the
    notification listener has reconnected) waits again for the time left."""
    definition, job_id = state.definition.name, state.job.id
    deadline = time.monotonic() + seconds
    with waiters.watching(job_id) as changed:
        state = await _state(request, definition, job_id, user)
        phase = state.job.phase
        if phase not in WAITABLE_PHASES or expected not in (None, phase):
            return state
        while (left := deadline - time.monotonic()) > 0:
            if not await wait_for(changed, left):
                return state
            changed.clear()  # before reading, so that a change after the read still wakes
            state = await _state(request, definition, job_id, user)
            if state.job.phase is not phase:
                return state
    return state


# -- the job list ----------------------------------------------------------------------------


@router.get("/jobs/{definition}", summary="UWS job list of a job definition")
async def job_list(request: Request, definition: str, user: CurrentUser) -> Response:
    service = _context(request).service
    service.definition(definition)
    params = request.query_params
    phases = [_phase(p) for p in params.getlist("PHASE") + params.getlist("phase")]
    after_text = params.get("AFTER") or params.get("after")
    last_text = params.get("LAST") or params.get("last")
    after = None if after_text is None else parse_timestamp(after_text, "AFTER")
    last = None if last_text is None else _last(last_text)
    refs = await _blocking(
        lambda: service.uws.job_list(
            definition, owner=owner_of(user), every_owner=user.admin,
            phases=phases or None, after=after, last=last,
        )
    )  # fmt: skip
    views = ref_views(definition, refs, _links(request))
    data = {"version": xml.UWS_VERSION, "jobs": [v.model_dump(mode="json", by_alias=True)
                                                 for v in views]}  # fmt: skip
    return _document(request, data, lambda: xml.job_list_document(views))


@router.post("/jobs/{definition}", status_code=303, summary="Create a job")
async def create_job(request: Request, definition: str, user: CurrentUser) -> Response:
    context = _context(request)
    service = context.service
    fields, uploads = await _fields(request)
    lane = context.creations if service.only_writes(definition, fields, uploads) else None
    job = await _blocking(service.create, definition, user, fields, uploads, limiter=lane)
    return _see_other(_links(request).job(definition, job.id))


# -- one job ---------------------------------------------------------------------------------


@router.get("/jobs/{definition}/{job_id}", summary="A job; WAIT blocks for a phase change")
async def get_job(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    context = _context(request)
    params = request.query_params
    wait_text = params.get("WAIT") or params.get("wait")
    phase_text = params.get("PHASE") or params.get("phase")
    wait = None if wait_text is None else _wait_seconds(wait_text, context.settings.max_wait)
    expected = None if phase_text is None else _phase(phase_text)
    state = await _state(request, definition, job_id, user)
    if wait and context.waiters is not None:
        state = await _wait(request, context.waiters, state, wait, expected, user)
    view = await _blocking(job_view, context.service, state, _links(request))
    return _document(
        request, view.model_dump(mode="json", by_alias=True), lambda: xml.job_document(view)
    )


@router.post("/jobs/{definition}/{job_id}", status_code=303, summary="Change or delete a job")
async def post_job(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    service = _context(request).service
    links = _links(request)
    state = await _state(request, definition, job_id, user)
    fields, uploads = await _fields(request)
    action = _one(fields, "action")
    if action is not None:
        if action.upper() != "DELETE":
            raise UwsError(f"ACTION={action!r}: only DELETE")
        await _blocking(service.delete, state)
        return _see_other(links.job_list(definition))
    phase = _one(fields, "phase")
    control = {"phase", "runid", "executionduration", "destruction"}
    parameters = [(k, v) for k, v in fields if k.lower() not in control]
    await _blocking(service.update_parameters, state, parameters, uploads)
    for name, setter in (
        ("runid", service.set_run_id),
        ("executionduration", service.set_execution_duration),
        ("destruction", service.set_destruction),
    ):
        value = _one(fields, name)
        if value is not None:
            await _blocking(setter, state, value)
            state = await _state(request, definition, job_id, user)
    if phase is not None:
        await _blocking(service.set_phase, state, phase)
    return _see_other(links.job(definition, job_id))


@router.delete("/jobs/{definition}/{job_id}", status_code=303, summary="Delete a job")
async def delete_job(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    state = await _state(request, definition, job_id, user)
    await _blocking(_context(request).service.delete, state)
    return _see_other(_links(request).job_list(definition))


# -- sub-resources ---------------------------------------------------------------------------


@router.get("/jobs/{definition}/{job_id}/phase", response_class=PlainTextResponse)
async def get_phase(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    return _text((await _state(request, definition, job_id, user)).job.phase.value)


@router.post("/jobs/{definition}/{job_id}/phase", status_code=303)
async def post_phase(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    state = await _state(request, definition, job_id, user)
    fields, _ = await _fields(request)
    phase = _one(fields, "phase")
    if phase is None:
        raise UwsError("PHASE is missing: RUN or ABORT")
    await _blocking(_context(request).service.set_phase, state, phase)
    return _see_other(_links(request).job(definition, job_id))


@router.get("/jobs/{definition}/{job_id}/executionduration", response_class=PlainTextResponse)
async def get_execution_duration(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    return _text((await _state(request, definition, job_id, user)).record.execution_duration)


@router.post("/jobs/{definition}/{job_id}/executionduration", status_code=303)
async def post_execution_duration(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    return await _set_field(request, definition, job_id, user, "executionduration")


@router.get("/jobs/{definition}/{job_id}/destruction", response_class=PlainTextResponse)
async def get_destruction(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    job = (await _state(request, definition, job_id, user)).job
    return _text(None if job.destruction is None else utc_text(job.destruction))


@router.post("/jobs/{definition}/{job_id}/destruction", status_code=303)
async def post_destruction(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    return await _set_field(request, definition, job_id, user, "destruction")


async def _set_field(
    request: Request, definition: str, job_id: str, user: User, name: str
) -> Response:
    service = _context(request).service
    state = await _state(request, definition, job_id, user)
    fields, _ = await _fields(request)
    value = _one(fields, name)
    if value is None:
        raise UwsError(f"{name.upper()} is missing")
    setter = service.set_execution_duration if name == "executionduration" else (
        service.set_destruction
    )  # fmt: skip
    await _blocking(setter, state, value)
    return _see_other(_links(request).job(definition, job_id))


@router.get("/jobs/{definition}/{job_id}/quote", response_class=PlainTextResponse)
async def get_quote(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    state = await _state(request, definition, job_id, user)
    quote = _context(request).service.quote(state)
    return _text(None if quote is None else utc_text(quote))


@router.get("/jobs/{definition}/{job_id}/error", response_class=PlainTextResponse)
async def get_error(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    state = await _state(request, definition, job_id, user)
    service = _context(request).service
    failure = None
    if state.job.phase is Phase.ABORTED:
        failure = await _blocking(service.fetch_failure, state)
    message = error_text(state.job, failure)
    if failure is not None:
        return _text(message)
    if message is None:
        raise NotFound(f"job {job_id} is {state.job.phase}, not ERROR: it has no error")
    engine = _context(request).service.engine
    stderr = await _blocking(engine.read_output, job_id, "stderr", -4096)
    tail = stderr.decode(errors="replace")
    return _text(f"{message}\n\nend of stderr:\n{tail}" if tail else message)


@router.get("/jobs/{definition}/{job_id}/owner", response_class=PlainTextResponse)
async def get_owner(request: Request, definition: str, job_id: str, user: CurrentUser) -> Response:
    return _text(shown_owner((await _state(request, definition, job_id, user)).record.owner))


@router.get("/jobs/{definition}/{job_id}/parameters")
async def get_parameters(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    state = await _state(request, definition, job_id, user)
    views = parameter_views(state, _links(request))
    data = [v.model_dump(mode="json", by_alias=True) for v in views]
    return _document(request, data, lambda: xml.parameters_document(views))


@router.post("/jobs/{definition}/{job_id}/parameters", status_code=303)
async def post_parameters(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    state = await _state(request, definition, job_id, user)
    fields, uploads = await _fields(request)
    await _blocking(_context(request).service.update_parameters, state, fields, uploads)
    return _see_other(_links(request).job(definition, job_id))


@router.get("/jobs/{definition}/{job_id}/parameters/{name}")
async def get_parameter(
    request: Request, definition: str, job_id: str, name: str, user: CurrentUser
) -> Response:
    state = await _state(request, definition, job_id, user)
    for parameter in state.record.parameters:
        if parameter.id.lower() == name.lower():
            if parameter.local_path is not None and parameter.fetch_job is None:
                return FileResponse(parameter.local_path, filename=parameter.value)
            return _text(parameter.value)
    raise NotFound(f"job {job_id} has no parameter {name!r}")


@router.put("/jobs/{definition}/{job_id}/parameters/{name}", status_code=303)
async def put_parameter(
    request: Request, definition: str, job_id: str, name: str, user: CurrentUser
) -> Response:
    state = await _state(request, definition, job_id, user)
    try:
        body = (await request.body()).decode()
    except UnicodeDecodeError:
        raise UwsError(f"the value of {name} is not UTF-8 text") from None
    await _blocking(_context(request).service.update_parameters, state, [(name, body)], [])
    return _see_other(_links(request).job(definition, job_id))


@router.get("/jobs/{definition}/{job_id}/results")
async def get_results(
    request: Request, definition: str, job_id: str, user: CurrentUser
) -> Response:
    service = _context(request).service
    state = await _state(request, definition, job_id, user)
    files = await _blocking(service.result_files, state)
    views = result_views(state, files, _links(request))
    data = [v.model_dump(mode="json", by_alias=True) for v in views]
    return _document(request, data, lambda: xml.results_document(views))


@router.get("/jobs/{definition}/{job_id}/results/{result_id:path}", summary="One result file")
async def get_result(
    request: Request, definition: str, job_id: str, result_id: str, user: CurrentUser
) -> Response:
    service = _context(request).service
    state = await _state(request, definition, job_id, user)
    files = await _blocking(service.result_files, state)
    chosen = next((f for f in files if f.id == result_id), None)
    if chosen is None:
        raise NotFound(f"job {job_id} has no result {result_id!r}")
    try:
        byte_range = parse_range(request.headers.get("range"), chosen.size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{chosen.size}"})
    try:
        path = await _blocking(service.results.checked_path, state.job, chosen)
    except PermissionError as error:
        raise Forbidden(str(error)) from None
    headers = {"Accept-Ranges": "bytes"}
    if byte_range is None:
        start, length, status = 0, chosen.size, 200
    else:
        start, length, status = byte_range.start, byte_range.length, 206
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{chosen.size}"
    headers["Content-Length"] = str(length)
    chunks = service.results.chunks(state.job, path, start, length)
    return StreamingResponse(
        chunks, status_code=status, media_type=chosen.media_type, headers=headers
    )


# -- parsing request values ------------------------------------------------------------------


def _phase(text: str) -> Phase:
    try:
        return Phase(text.strip().upper())
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise UwsError(f"PHASE {text!r} is not a UWS phase ({known})") from None


def _last(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UwsError(f"LAST {text!r} is not a whole number") from None
    if not 1 <= value <= MAX_INTEGER:
        raise UwsError(f"LAST must be 1 to {MAX_INTEGER}")
    return value


def _wait_seconds(text: str, maximum: float) -> float:
    try:
        value = int(text)
    except ValueError:
        raise UwsError(f"WAIT {text!r} is not a whole number of seconds") from None
    if not -1 <= value <= MAX_INTEGER:
        raise UwsError(f"WAIT must be -1 (as long as the service allows) or 0 to {MAX_INTEGER}")
    return maximum if value == -1 else min(float(value), maximum)
