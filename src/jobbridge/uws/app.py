"""The FastAPI application: the UWS routes, VOSI-style capabilities and availability, the
error mapping, the web pages (``/ui``), the metrics (``/metrics``), and the engine refreshing
in the background while the service runs, and the pilots of its pilot pools coordinated
(by one replica at a time). On PostgreSQL, the phase changes that other
replicas make wake this one's waiting requests too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle  # type: ignore[import-untyped]
from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from lxml import etree
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from jobbridge import __version__
from jobbridge.config import Config, load_config
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobNotFoundError
from jobbridge.job import utcnow
from jobbridge.pilot.pools import PoolCoordination, pools_of
from jobbridge.push import PushAddress, PushKey
from jobbridge.spec import format_validation_error
from jobbridge.store.uws import UwsStore
from jobbridge.uws.auth import AnonymousClients, KnownTokens, cookie_secret
from jobbridge.uws.body import BodyLimit
from jobbridge.uws.definitions import Definitions, ParameterError, load_definitions
from jobbridge.uws.errors import UwsError
from jobbridge.uws.metrics import ServiceMetrics, add_metrics
from jobbridge.uws.models import utc_text
from jobbridge.uws.notify import JobListener
from jobbridge.uws.openapi import uws_openapi
from jobbridge.uws.push import PushContext, push_endpoint
from jobbridge.uws.push import router as push_router
from jobbridge.uws.routes import ServiceContext, router
from jobbridge.uws.secrets import secrets_router
from jobbridge.uws.service import UwsService
from jobbridge.uws.waiting import PhaseWaiters
from jobbridge.uws.web import add_web

__all__ = ["create_app"]

_VOSI_CAPABILITIES = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
_VOSI_AVAILABILITY = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
_VR = "http://www.ivoa.net/xml/VOResource/v1.0"
_VS = "http://www.ivoa.net/xml/VODataService/v1.1"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_UWS_STANDARD = "ivo://ivoa.net/std/UWS#1.1"
_ASSETS = "/docs-assets"


def create_app(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    definitions: Definitions | None = None,
) -> FastAPI:
    """The service on ``config`` (the embedded defaults if None). An ``engine`` given here
    stays the caller's to close; one made here is closed when the application stops."""
    config = config or load_config()
    settings = config.service
    owned = engine is None
    engine = engine or Engine.from_config(config)
    if definitions is None:
        directory = settings.definitions_dir
        definitions = load_definitions(directory) if directory else Definitions({})
    service = UwsService(
        engine,
        UwsStore(engine.store),
        definitions,
        config.data_dir / "uws" / "uploads",
        settings=settings,
    )
    context = ServiceContext(service=service, settings=settings, tokens=KnownTokens(service.uws))
    metrics = ServiceMetrics(engine)
    started = utcnow()
    secret = cookie_secret(settings.cookie_secret, config.data_dir / "uws")
    push_key = PushKey.derived(secret)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        waiters = context.waiters = PhaseWaiters(asyncio.get_running_loop(), engine.hooks)
        if engine.store.writes_in_turns:
            context.creations = CapacityLimiter(1)
        listener = None
        if engine.store.dialect == "postgresql":
            listener = context.listener = JobListener(
                engine.store.url, _also_waking(engine, waiters.poke), waiters.poke_all
            )
            listener.start()
        await asyncio.to_thread(service.sweep_orphans)
        metrics.attach()
        if settings.push:
            engine.push_to(PushAddress(push_endpoint(settings), push_key))
        engine.start_background()
        pools = PoolCoordination(engine) if pools_of(engine) else None
        if pools is not None:
            pools.start()
        try:
            yield
        finally:
            engine.push_to(None)
            if pools is not None:
                pools.stop()
            engine.stop_background()
            if listener is not None:
                listener.close()
                context.listener = None
            metrics.detach()
            context.waiters.close()
            context.waiters = None
            context.creations = None
            service.close()
            service.uws.close()
            if owned:
                engine.close()

    app = FastAPI(
        title="jobbridge UWS service",
        version=__version__,
        description="IVOA UWS 1.1 job lists, one per job definition, on any jobbridge backend.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.uws = context
    app.state.push = PushContext(engine, push_key, metrics)
    app.include_router(router)
    app.include_router(secrets_router)
    app.include_router(push_router)
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AnonymousClients, secret=secret, enabled=settings.anonymous)
    add_metrics(app, metrics)
    add_web(app, secret=secret)
    app.openapi = lambda: uws_openapi(app, definitions, anonymous=settings.anonymous)  # type: ignore[method-assign]
    _add_docs(app)

    @app.get("/availability", summary="VOSI availability", tags=["VOSI"])
    def availability() -> Response:
        root = etree.Element(
            f"{{{_VOSI_AVAILABILITY}}}availability", nsmap={"vosi": _VOSI_AVAILABILITY}
        )
        etree.SubElement(root, f"{{{_VOSI_AVAILABILITY}}}available").text = (
            "true" if engine.running else "false"
        )
        etree.SubElement(root, f"{{{_VOSI_AVAILABILITY}}}upSince").text = utc_text(started)
        return Response(etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
                        media_type="application/xml")  # fmt: skip

    @app.get("/capabilities", summary="VOSI capabilities", tags=["VOSI"])
    def capabilities(request: Request) -> Response:
        base = (settings.base_url or str(request.base_url)).rstrip("/")
        entries = [
            ("ivo://ivoa.net/std/VOSI#capabilities", "/capabilities", "full"),
            ("ivo://ivoa.net/std/VOSI#availability", "/availability", "full"),
            *((_UWS_STANDARD, f"/jobs/{name}", "base") for name in definitions),
        ]
        return Response(capabilities_document(base, entries), media_type="application/xml")

    @app.get("/jobs", summary="The job definitions, each a UWS job list")
    def definitions_index(request: Request) -> dict[str, Any]:
        base = (settings.base_url or str(request.base_url)).rstrip("/")
        return {
            "definitions": [
                {
                    "name": d.name, "description": d.description, "url": f"{base}/jobs/{d.name}",
                    "parameters": {k: p.model_dump(mode="json") for k, p in d.parameters.items()},
                }
                for d in definitions.values()
            ]
        }  # fmt: skip

    return app


def _also_waking(engine: Engine, poke: Callable[[str, str], object]) -> Callable[[str, str], None]:
    """What to do on hearing of a change another process made: wake the requests waiting
    for that job, and the engine's refresh (the change may be new work for it)."""

    def heard(job_id: str, phase: str) -> None:
        poke(job_id, phase)
        engine.wake()

    return heard


def capabilities_document(base: str, entries: list[tuple[str, str, str]]) -> bytes:
    """VOSI capabilities: each entry a standard id, the path of its resource and the use
    of its URL; each interface a VODataService ``vs:ParamHTTP``."""
    root = etree.Element(
        f"{{{_VOSI_CAPABILITIES}}}capabilities",
        nsmap={"vosi": _VOSI_CAPABILITIES, "vr": _VR, "vs": _VS, "xsi": _XSI},
    )
    for standard, suffix, use in entries:
        capability = etree.SubElement(root, "capability")
        capability.set("standardID", standard)
        interface = etree.SubElement(capability, "interface")
        interface.set(f"{{{_XSI}}}type", "vs:ParamHTTP")
        interface.set("role", "std")
        access = etree.SubElement(interface, "accessURL")
        access.set("use", use)
        access.text = base + suffix
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _add_docs(app: FastAPI) -> None:
    """Swagger UI from files installed with the service: no page loads anything from
    elsewhere."""
    app.mount(_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="jobbridge UWS service",
            swagger_js_url=f"{root}{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_ASSETS}/favicon-32x32.png",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``text/plain``: one line that says what is wrong (UWS clients show
    the body as it is)."""

    def plain(
        status: int, message: str, headers: dict[str, str] | None = None
    ) -> PlainTextResponse:
        return PlainTextResponse(message.rstrip("\n") + "\n", status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> Response:
        if error.status_code < 400:
            return Response(status_code=error.status_code, headers=error.headers)
        return plain(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def request_error(_request: Request, error: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg')}"
            for e in error.errors()
        )
        return plain(400, problems or "the request is not valid")

    @app.exception_handler(ClientDisconnect)
    async def disconnected(_request: Request, _error: ClientDisconnect) -> Response:
        return plain(400, "the request body ended early")

    @app.exception_handler(UwsError)
    async def uws_error(_request: Request, error: UwsError) -> Response:
        return plain(error.status, str(error))

    @app.exception_handler(ParameterError)
    async def parameter_error(_request: Request, error: ParameterError) -> Response:
        return plain(400, str(error))

    @app.exception_handler(ValidationError)
    async def validation_error(_request: Request, error: ValidationError) -> Response:
        return plain(400, format_validation_error(error))

    @app.exception_handler(JobNotFoundError)
    async def not_found(_request: Request, error: JobNotFoundError) -> Response:
        return plain(404, str(error))

    @app.exception_handler(JobbridgeError)
    async def refused(_request: Request, error: JobbridgeError) -> Response:
        return plain(400, str(error))
