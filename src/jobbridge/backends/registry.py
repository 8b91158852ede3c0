"""Backends are found through the ``jobbridge.backends`` entry points, built-ins included."""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points

from pydantic import ValidationError

from jobbridge.backends.base import Backend, BackendContext
from jobbridge.config import BackendConfig
from jobbridge.errors import ConfigError
from jobbridge.spec import format_validation_error

__all__ = [
    "ENTRY_POINT_GROUP",
    "backend_kind",
    "backend_kinds",
    "create_backend",
    "kind_defaults",
]

ENTRY_POINT_GROUP = "jobbridge.backends"
log = logging.getLogger(__name__)


@functools.cache
def backend_kinds() -> dict[str, type[Backend]]:
    """Every backend class that loads; a broken plugin is logged and left out."""
    kinds: dict[str, type[Backend]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        cls = _load(point)
        if cls is not None:
            kinds.setdefault(point.name, cls)
    return kinds


@functools.cache
def backend_kind(kind: str) -> type[Backend] | None:
    """The class of one kind, loading no other plugin."""
    for point in entry_points(group=ENTRY_POINT_GROUP, name=kind):
        cls = _load(point)
        if cls is not None:
            return cls
    return None


def _load(point: EntryPoint) -> type[Backend] | None:
    try:
        cls = point.load()
    except Exception:
        log.warning("backend plugin %r (%s) failed to load", point.name, point.value, exc_info=True)
        return None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        log.warning("backend plugin %r (%s) is not a Backend class", point.name, point.value)
        return None
    return cls


def create_backend(name: str, config: BackendConfig, context: BackendContext) -> Backend:
    cls = backend_kind(config.kind)
    if cls is None:
        known = ", ".join(sorted(backend_kinds())) or "none"
        raise ConfigError(
            f"backend {name!r} has kind {config.kind!r}, which no installed plugin provides;"
            f" kinds: {known}"
        )
    try:
        options = cls.Options.model_validate(config.options)
    except ValidationError as error:
        raise ConfigError(
            f"backend {name!r} ({config.kind}):\n{format_validation_error(error)}"
        ) from None
    return cls(name, options, context)


def kind_defaults(name: str) -> BackendConfig | None:
    """The configuration of a backend that is named after a kind but not configured: that
    kind with its default options. None if no installed plugin provides a kind ``name``."""
    if backend_kind(name) is None:
        return None
    return BackendConfig(kind=name)
