"""The stand-in node agent's log endpoint: the kubelet's
``/containerLogs/{namespace}/{pod}/{container}`` over TLS, for the API server's
``pods/{name}/log`` (see node_agent.py)."""

from __future__ import annotations

import argparse
import logging
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("node-agent")


class LogFiles(Protocol):
    def log_file(self, namespace: str, pod: str, name: str) -> Path | None: ...


def log_handler(agent: LogFiles) -> type[BaseHTTPRequestHandler]:
    class ContainerLogs(BaseHTTPRequestHandler):
        """The kubelet's ``/containerLogs/{namespace}/{pod}/{container}`` endpoint."""

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(404, "not found")
                return
            query = dict(urllib.parse.parse_qsl(url.query))
            path = agent.log_file(parts[1], parts[2], parts[3])
            if path is None:
                self.send_error(400, f'container "{parts[3]}" in pod "{parts[2]}" has no log')
                return
            data = path.read_bytes()
            if query.get("tailLines"):
                lines = data.splitlines(keepends=True)
                data = (
                    b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
                )
            if query.get("limitBytes"):
                data = data[: int(query["limitBytes"])]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("log endpoint: " + format, *args)

    return ContainerLogs


def serve_logs(agent: LogFiles, args: argparse.Namespace) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((args.address, args.port), log_handler(agent))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    context.load_verify_locations(args.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name="log-endpoint").start()
    return server
