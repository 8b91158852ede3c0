"""Shared parts of the UWS tests: the schema, services on real engines, a real uvicorn."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from lxml import etree

from jobbridge import Config, Engine, load_config
from jobbridge.store.uws import UwsStore

DATA = Path(__file__).parent / "data"
DEFINITIONS = Path(__file__).parent.parent / "examples" / "definitions"
UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
NS = {"uws": UWS_NS, "xlink": "http://www.w3.org/1999/xlink"}


def _schema() -> etree.XMLSchema:
    document = etree.parse(str(DATA / "UWS.xsd"))
    for imported in document.getroot().iter("{http://www.w3.org/2001/XMLSchema}import"):
        imported.set("schemaLocation", (DATA / "xlink.xsd").as_uri())
    return etree.XMLSchema(document)


UWS_SCHEMA = _schema()


def valid_uws(content: bytes) -> etree._Element:
    """The parsed document, after checking it against UWS.xsd 1.1."""
    root = etree.fromstring(content)
    if not UWS_SCHEMA.validate(root):
        raise AssertionError(f"not valid UWS 1.1: {UWS_SCHEMA.error_log}\n{content.decode()}")
    return root


def service_config(data_dir: Path, **service: object) -> Config:
    """The service on a free port of its own, which ``RunningServer`` then serves on, so
    that jobs push to where the service is (as with ``jobbridge serve``)."""
    config = load_config()
    settings = {
        "definitions_dir": str(DEFINITIONS), "max_wait": 30, "port": free_port(), **service
    }  # fmt: skip
    return config.model_copy(
        update={"service": config.service.model_validate(settings), "data_dir": data_dir}
    )


def add_user(engine: Engine, name: str, *, admin: bool = False) -> str:
    users = UwsStore(engine.store)
    try:
        return users.add_user(name, admin=admin)
    finally:
        users.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(name: str, token: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{name}:{token}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RunningServer:
    """A real uvicorn serving ``app`` on 127.0.0.1, in a thread of this process."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        context = getattr(app.state, "uws", None)
        configured = context.settings.port if context is not None else None
        self.port = port or configured or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_for_phase(client: httpx.Client, url: str, phases: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        phase = client.get(f"{url}/phase").text
        if phase in phases or time.monotonic() > deadline:
            return phase
        client.get(url, params={"WAIT": "5", "PHASE": phase})


def serve(app: FastAPI) -> Iterator[RunningServer]:
    with RunningServer(app) as server:
        yield server


class Listener:
    """A plain HTTP server on a loopback address that records every request it gets.
    ``routes`` maps a path to (status, headers, body); ``hold`` makes every answer wait
    until it is set."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        routes: dict[str, tuple[int, dict[str, str], bytes]] | None = None,
    ) -> None:
        self.hits: list[str] = []
        self.connections = 0
        self.routes = routes or {}
        self.hold = threading.Event()
        self.hold.set()
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def setup(self) -> None:
                listener.connections += 1
                super().setup()

            def do_GET(self) -> None:
                listener.hits.append(self.path)
                listener.hold.wait(60)
                status, headers, body = listener.routes.get(self.path, (200, {}, b"1\n2\n"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{address}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
