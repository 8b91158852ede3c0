"""The web pages, under ``/ui``: the job definitions, a form per definition, the job lists
and each job with its phase kept up to date by server-sent events.

Every action goes through the UWS service layer (``UwsService``), so ownership and the
rules of each phase are the API's own. The pages need no JavaScript except for the live
phase; each form posts to its own URL and answers with a 303 to the page to show next.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from jobbridge.errors import JobbridgeError, JobNotFoundError
from jobbridge.phase import Phase
from jobbridge.spec import format_validation_error
from jobbridge.store.uws import User
from jobbridge.uws.control import parse_timestamp
from jobbridge.uws.definitions import JobDefinition, ParameterError, ParameterType
from jobbridge.uws.errors import Forbidden, NotFound, UwsError
from jobbridge.uws.routes import ServiceContext
from jobbridge.uws.service import JobState, Upload
from jobbridge.uws.waiting import wait_for
from jobbridge.uws.web.session import CSRF_FIELD, Session, Sessions, web_user
from jobbridge.uws.web.views import field_views, job_page, shown_time

__all__ = ["PREFIX", "add_web"]

PREFIX = "/ui"
_HERE = Path(__file__).resolve().parent.parent
_LIST_LIMIT = 500
_KEEPALIVE = 10.0
_STREAM_SECONDS = 600.0
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_FAILURES = (UwsError, ParameterError, ValidationError, JobbridgeError)

T = TypeVar("T")

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["when"] = shown_time


@dataclass
class Page:
    """One request to the pages: who asks, their session and where links lead."""

    request: Request
    context: ServiceContext
    sessions: Sessions
    session: Session
    user: User | None

    @property
    def root(self) -> str:
        return str(self.request.scope.get("root_path", "")).rstrip("/") + PREFIX

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = _templates.get_template(template).render(
            root=self.root, user=self.user, csrf=self.session.csrf, csrf_field=CSRF_FIELD,
            anonymous=self.context.settings.anonymous, **values,
        )  # fmt: skip
        response = HTMLResponse(html, status_code=status, headers=_HEADERS)
        self.sessions.keep(response, self.session, self.root)
        return response

    def problem(self, error: Exception) -> HTMLResponse:
        status, title = _status_of(error)
        return self.render("error.html", status, title=title, message=_message(error))

    def see_other(self, path: str) -> Response:
        response = Response(status_code=303, headers={"Location": path, **_HEADERS})
        self.sessions.keep(response, self.session, self.root)
        return response

    def login_first(self) -> Response:
        wanted = self.request.url.path
        return self.see_other(f"{self.root}/login?{urlencode({'next': wanted})}")


def _message(error: Exception) -> str:
    return format_validation_error(error) if isinstance(error, ValidationError) else str(error)


def _status_of(error: Exception) -> tuple[int, str]:
    if isinstance(error, Forbidden):
        return 403, "Not allowed"
    if isinstance(error, NotFound | JobNotFoundError):
        return 404, "Not found"
    if isinstance(error, UwsError):
        return error.status, "Refused"
    return 400, "Refused"


async def _blocking(function: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(function, *args)


def _router(sessions: Sessions) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    async def page_for(request: Request, *, renew: bool = False) -> Page:
        context: ServiceContext = request.app.state.uws
        user = await _blocking(
            lambda: web_user(request, context.service.uws, anonymous=context.settings.anonymous)
        )
        session = sessions.renewed() if renew else sessions.current(request)
        return Page(request, context, sessions, session, user)

    async def posted(page: Page) -> FormData | Response:
        """The form, if its CSRF token is the session's; else the refusal to send."""
        form = await page.request.form()
        if not sessions.csrf_ok(page.request, form.get(CSRF_FIELD)):
            await form.close()
            return page.render(
                "error.html", 403, title="Form expired",
                message="This form does not belong to your session (it may have expired)."
                " Go back, reload the page and send it again.",
            )  # fmt: skip
        return form

    async def job_state(page: Page, definition: str, job_id: str) -> JobState:
        assert page.user is not None
        return await _blocking(page.context.service.state, definition, job_id, page.user)

    @router.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        page = await page_for(request)
        return page.render("home.html", definitions=page.context.service.definitions.values())

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "") -> Response:
        page = await page_for(request)
        return page.render("login.html", next=_local(next, page.root), error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        page = await page_for(request)
        form = await posted(page)
        if isinstance(form, Response):
            return form
        token = str(form.get("token", "")).strip()
        wanted = _local(str(form.get("next", "")), page.root)
        user = await _blocking(page.context.service.uws.user_for_token, token) if token else None
        if user is None:
            return page.render(
                "login.html", 400, next=wanted, error="That token is not valid. Check it"
                " and try again; `jobbridge user add NAME` prints a user's token.",
            )  # fmt: skip
        page = await page_for(request, renew=True)
        response = page.see_other(wanted or f"{page.root}/")
        sessions.log_in(response, token, page.root)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        page = await page_for(request)
        form = await posted(page)
        if isinstance(form, Response):
            return form
        page = await page_for(request, renew=True)
        response = page.see_other(f"{page.root}/")
        sessions.log_out(response, page.root)
        return response

    @router.get("/definitions/{name}", response_class=HTMLResponse)
    async def definition_page(request: Request, name: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        try:
            definition = page.context.service.definition(name)
        except UwsError as error:
            return page.problem(error)
        return _form_page(page, definition)

    @router.post("/jobs/{name}")
    async def create(request: Request, name: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        try:
            definition = page.context.service.definition(name)
        except UwsError as error:
            return page.problem(error)
        form = await posted(page)
        if isinstance(form, Response):
            return form
        fields, uploads, shown = _job_fields(definition, form)
        try:
            job = await _blocking(page.context.service.create, name, page.user, fields, uploads)
        except _FAILURES as error:
            status, _ = _status_of(error)
            return _form_page(page, definition, shown, error=_message(error), status=status)
        finally:
            await form.close()
        return page.see_other(f"{page.root}/jobs/{quote(name, safe='')}/{quote(job.id, safe='')}")

    @router.get("/jobs/{name}", response_class=HTMLResponse)
    async def job_list(request: Request, name: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        user = page.user
        service = page.context.service
        params = request.query_params
        chosen = [p for p in params.getlist("phase") if p]
        after_text = params.get("after", "").strip()
        try:
            service.definition(name)
            phases = [_phase(text) for text in chosen]
            after = parse_timestamp(after_text, "after") if after_text else None
            refs = await _blocking(
                lambda: service.uws.job_list(
                    name, owner=user.name, every_owner=user.admin, phases=phases or None,
                    after=after, last=_LIST_LIMIT,
                )
            )  # fmt: skip
        except _FAILURES as error:
            return page.problem(error)
        return page.render(
            "jobs.html", definition=name, jobs=refs, phases=[p.value for p in Phase],
            chosen={p.value for p in phases}, after=after_text, limit=_LIST_LIMIT,
            admin=user.admin,
        )  # fmt: skip

    @router.get("/jobs/{name}/{job_id}", response_class=HTMLResponse)
    async def job(request: Request, name: str, job_id: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        try:
            state = await job_state(page, name, job_id)
            shown = await _blocking(job_page, page.context.service, state, _job_path(page, state))
        except _FAILURES as error:
            return page.problem(error)
        return page.render("job.html", job=shown)

    @router.get("/jobs/{name}/{job_id}/events")
    async def job_events(request: Request, name: str, job_id: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return Response("log in first\n", status_code=401, media_type="text/plain")
        try:
            state = await job_state(page, name, job_id)
        except _FAILURES as error:
            status, _ = _status_of(error)
            return Response(f"{error}\n", status_code=status, media_type="text/plain")
        return StreamingResponse(
            _job_stream(page, state),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/jobs/{name}/{job_id}/results/{result_id:path}")
    async def result(request: Request, name: str, job_id: str, result_id: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        service = page.context.service
        try:
            state = await job_state(page, name, job_id)
            files = await _blocking(service.result_files, state)
            chosen = next((f for f in files if f.id == result_id), None)
            if chosen is None:
                raise NotFound(f"job {job_id} has no result {result_id!r}")
            try:
                path = await _blocking(service.results.checked_path, state.job, chosen)
            except PermissionError as error:
                raise Forbidden(str(error)) from None
        except _FAILURES as error:
            return page.problem(error)
        filename = quote(os.path.basename(chosen.path))
        headers = {
            "Content-Length": str(chosen.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
            "X-Content-Type-Options": "nosniff",
        }
        chunks = service.results.chunks(state.job, path, 0, chosen.size)
        return StreamingResponse(chunks, media_type=chosen.media_type, headers=headers)

    @router.post("/jobs/{name}/{job_id}/phase")
    async def change_phase(request: Request, name: str, job_id: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        form = await posted(page)
        if isinstance(form, Response):
            return form
        try:
            state = await job_state(page, name, job_id)
            await _blocking(page.context.service.set_phase, state, str(form.get("PHASE", "")))
        except _FAILURES as error:
            return page.problem(error)
        return page.see_other(_job_path(page, state))

    @router.post("/jobs/{name}/{job_id}/delete")
    async def delete(request: Request, name: str, job_id: str) -> Response:
        page = await page_for(request)
        if page.user is None:
            return page.login_first()
        form = await posted(page)
        if isinstance(form, Response):
            return form
        try:
            state = await job_state(page, name, job_id)
            await _blocking(page.context.service.delete, state)
        except _FAILURES as error:
            return page.problem(error)
        return page.see_other(f"{page.root}/jobs/{quote(name, safe='')}")

    return router


def _job_path(page: Page, state: JobState) -> str:
    definition = quote(state.record.definition, safe="")
    return f"{page.root}/jobs/{definition}/{quote(state.job.id, safe='')}"


async def _job_stream(page: Page, state: JobState) -> AsyncIterator[str]:
    """``job`` events, each with the phase and the job's live part as HTML: one at once,
    then one at each phase change the engine announces, until the job ends (``gone`` if it
    is deleted). Comments keep the connection open; the browser reconnects after
    ``_STREAM_SECONDS``."""
    service = page.context.service
    user = page.user
    assert user is not None
    definition, job_id = state.record.definition, state.job.id
    base = _job_path(page, state)
    deadline = time.monotonic() + _STREAM_SECONDS
    shown: tuple[Phase, str | None] | None = None
    yield "retry: 3000\n\n"
    while True:
        waiters = page.context.waiters
        if waiters is None:
            return
        with waiters.watching(job_id) as changed:
            try:
                state = await _blocking(service.state, definition, job_id, user)
            except (NotFound, JobNotFoundError):
                yield "event: gone\ndata: {}\n\n"
                return
            now = (state.job.phase, state.job.detail)
            if now != shown:
                view = await _blocking(job_page, service, state, base)
                html = _templates.get_template("_live.html").render(
                    root=page.root, job=view, csrf=page.session.csrf, csrf_field=CSRF_FIELD
                )
                data = {"phase": view.phase.value, "final": view.final, "html": html}
                yield f"event: job\ndata: {json.dumps(data)}\n\n"
                shown = now
            if state.job.phase.is_final:
                return
            if not await wait_for(changed, _KEEPALIVE):
                if time.monotonic() > deadline:
                    return
                yield ": still here\n\n"


def _form_page(
    page: Page,
    definition: JobDefinition,
    sent: dict[str, str] | None = None,
    *,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    sent = sent or {}
    return page.render(
        "definition.html", status, definition=definition,
        fields=field_views(definition, sent), error=error,
        run=sent.get("_run", "on" if not sent else "") == "on",
        duration=sent.get("_executionduration", str(definition.execution_duration.default)),
        run_id=sent.get("_runid", ""), max_duration=definition.execution_duration.max,
    )  # fmt: skip


def _job_fields(
    definition: JobDefinition, form: FormData
) -> tuple[list[tuple[str, str]], list[Upload], dict[str, str]]:
    """The form as the service takes it (parameters, control fields, uploads) and what was
    typed, to show again if the job is refused. An empty field takes the default."""
    fields: list[tuple[str, str]] = []
    uploads: list[Upload] = []
    shown: dict[str, str] = {}
    for name, parameter in definition.parameters.items():
        if parameter.type is ParameterType.FILE:
            upload = form.get(name)
            url = _text(form, f"_url.{name}")
            if isinstance(upload, UploadFile) and upload.filename:
                uploads.append(Upload(name, upload.filename, upload.file))
            elif url:
                fields.append((name, url))
            continue
        value = _text(form, name)
        shown[name] = value
        if value.strip():
            fields.append((name, value))
    for field, control in (("_executionduration", "EXECUTIONDURATION"), ("_runid", "RUNID")):
        value = _text(form, field)
        shown[field] = value
        if value.strip():
            fields.append((control, value))
    shown["_run"] = "on" if _text(form, "_run") else "off"
    if shown["_run"] == "on":
        fields.append(("PHASE", "RUN"))
    return fields, uploads, shown


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _phase(text: str) -> Phase:
    try:
        return Phase(text.strip().upper())
    except ValueError:
        raise UwsError(f"phase {text!r} is not a UWS phase") from None


def _local(path: str, root: str) -> str:
    """``path`` if it is a page of this service (no redirect elsewhere), else ''."""
    if path.startswith(root + "/") and not path.startswith("//") and "\\" not in path:
        return path
    return ""


def add_web(app: FastAPI, *, secret: bytes) -> None:
    """Serve the pages, their style sheet and script under ``/ui``; ``/`` leads there."""
    sessions = Sessions(secret)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=_HERE / "static"), name="ui-static")
    app.include_router(_router(sessions))

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return Response(status_code=303, headers={"Location": f"{root}{PREFIX}/"})
