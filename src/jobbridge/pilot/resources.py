"""Which backend a pilot goes to: a configured backend's name, or a SAGA-style URL such as
``local://``, ``slurm://``, ``sge+ssh://user@login`` or ``slurm+ssh://user@login:2222``.

A URL is served by a backend of the engine of that kind and host if there is one, else by a
new backend of that kind with its default options (and the ``context``: SSH settings such as
``identity_file`` or ``known_hosts``, or any option of the kind), added to the engine under
the URL as its name."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from jobbridge.backends.base import Backend, BackendContext
from jobbridge.backends.registry import backend_kind, create_backend
from jobbridge.config import BackendConfig
from jobbridge.engine import Engine
from jobbridge.errors import ConfigError, UnknownBackendError

__all__ = ["parse_rm", "resolve_backend"]

_KIND_ALIASES = {
    "fork": "local",
    "gridengine": "sge",
    "oge": "sge",
    "pbs": "pbspro",
    "condor": "htcondor",
}


def parse_rm(rm: str) -> tuple[str, dict[str, Any]]:
    """A URL's backend kind and the options it sets (``host``, ``port``)."""
    parts = urlsplit(rm)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigError(f"{rm!r} is neither a configured backend nor a URL such as slurm://")
    kind, _, via = scheme.partition("+")
    kind = _KIND_ALIASES.get(kind, kind)
    if via not in ("", "ssh"):
        raise ConfigError(f"{rm!r}: {via!r} is not a way to reach a resource (only ssh)")
    options: dict[str, Any] = {}
    remote = parts.hostname not in (None, "", "localhost")
    if via == "ssh" and not parts.hostname:
        raise ConfigError(f"{rm!r}: +ssh needs a host (user@login)")
    if via == "ssh" or remote:
        if kind == "local":
            raise ConfigError(f"{rm!r}: the local backend runs on this machine only")
        user = f"{parts.username}@" if parts.username else ""
        options["host"] = f"{user}{parts.hostname}"
        if parts.port:
            options["port"] = parts.port
    return kind, options


def resolve_backend(engine: Engine, rm: str, context: dict[str, Any] | None = None) -> Backend:
    if rm in engine.backends:
        return engine.backend(rm)
    kind, options = parse_rm(rm)
    if backend_kind(kind) is None:
        raise UnknownBackendError(rm, engine.backends)
    for backend in engine.backends.values():
        same_host = getattr(backend.options, "host", None) == options.get("host")
        same_port = getattr(backend.options, "port", None) == options.get("port")
        if backend.kind == kind and same_host and same_port and not context:
            return backend
    jobs_dir = next((backend.context.jobs_dir for backend in engine.backends.values()), None)
    if jobs_dir is None:
        raise ConfigError("the engine has no backend to take a jobs directory from")
    config = BackendConfig(kind=kind, **options, **(context or {}))
    backend = create_backend(rm, config, BackendContext(jobs_dir=jobs_dir))
    engine.add_backend(backend)
    return backend
