"""The FastAPI application: the UWS routes, VOSI-style capabilities and availability, the
error mapping, and the engine refreshing in the background while the service runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from lxml import etree
from pydantic import ValidationError

from jobbridge import __version__
from jobbridge.config import Config, load_config
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobNotFoundError
from jobbridge.job import utcnow
from jobbridge.spec import format_validation_error
from jobbridge.store.uws import UwsStore
from jobbridge.uws.definitions import Definitions, ParameterError, load_definitions
from jobbridge.uws.models import utc_text
from jobbridge.uws.routes import ServiceContext, router
from jobbridge.uws.service import UwsError, UwsService
from jobbridge.uws.waiting import PhaseWaiters

__all__ = ["create_app"]

_VOSI_CAPABILITIES = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
_VOSI_AVAILABILITY = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
_VOSI_TYPE = "http://www.ivoa.net/xml/VOResource/v1.0"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


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
        default_destruction=timedelta(days=settings.default_destruction_days),
    )
    context = ServiceContext(service=service, settings=settings)
    started = utcnow()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        context.waiters = PhaseWaiters(asyncio.get_running_loop(), engine.hooks)
        await asyncio.to_thread(service.sweep_orphans)
        engine.start_background()
        try:
            yield
        finally:
            engine.stop_background()
            context.waiters.close()
            context.waiters = None
            service.close()
            service.uws.close()
            if owned:
                engine.close()

    app = FastAPI(
        title="jobbridge UWS service",
        version=__version__,
        description="IVOA UWS 1.1 job lists, one per job definition, on any jobbridge backend.",
        lifespan=lifespan,
    )
    app.state.uws = context
    app.include_router(router)
    _add_error_handlers(app)

    @app.get("/availability", summary="VOSI availability")
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

    @app.get("/capabilities", summary="VOSI capabilities: one UWS job list per definition")
    def capabilities(request: Request) -> Response:
        base = (settings.base_url or str(request.base_url)).rstrip("/")
        root = etree.Element(
            f"{{{_VOSI_CAPABILITIES}}}capabilities",
            nsmap={"vosi": _VOSI_CAPABILITIES, "vr": _VOSI_TYPE, "xsi": _XSI},
        )
        entries = [(d, f"/jobs/{d}") for d in definitions]
        for name, suffix in [*entries, ("availability", "/availability")]:
            capability = etree.SubElement(root, "capability")
            capability.set("standardID", _standard_id(name))
            interface = etree.SubElement(capability, "interface")
            interface.set(f"{{{_XSI}}}type", "vs:ParamHTTP")
            access = etree.SubElement(interface, "accessURL")
            access.set("use", "base")
            access.text = base + suffix
        return Response(etree.tostring(root, xml_declaration=True, encoding="UTF-8"),
                        media_type="application/xml")  # fmt: skip

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


def _standard_id(name: str) -> str:
    if name == "availability":
        return "ivo://ivoa.net/std/VOSI#availability"
    return "ivo://ivoa.net/std/UWS#1.1"


def _add_error_handlers(app: FastAPI) -> None:
    def plain(status: int, message: str) -> PlainTextResponse:
        return PlainTextResponse(message + "\n", status_code=status)

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
