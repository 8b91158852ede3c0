"""A job's results: the files of its directory that match its definition's globs, found
through the backend's sandbox (this machine or a cluster over SSH), and read in ranges."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.staging import inside
from jobbridge.uws.definitions import JobDefinition

__all__ = ["ByteRange", "ResultFile", "ResultLister", "parse_range"]

_ENDED_WITH_FILES = frozenset({Phase.COMPLETED, Phase.ERROR, Phase.ABORTED})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ResultFile:
    id: str
    path: str
    """Relative to the job's directory."""
    size: int
    media_type: str


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    """Inclusive, as HTTP counts."""

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiable(ValueError):
    pass


class ResultLister:
    """Lists results of ended jobs once (their files no longer change) and reads them."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ended: dict[str, list[ResultFile]] = {}
        self._lock = threading.Lock()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._ended.pop(job_id, None)

    def list(self, job: Job, definition: JobDefinition) -> list[ResultFile]:
        if job.phase not in _ENDED_WITH_FILES or not job.is_submitted:
            return []
        with self._lock:
            known = self._ended.get(job.id)
        if known is not None:
            return known
        try:
            transport, sandbox = self._engine.backend(job.backend).sandbox(job)
            files = transport.list_files(sandbox)
        except (JobbridgeError, OSError):
            return []
        found = _match(definition, {f.path: f.size for f in files})
        with self._lock:
            if len(self._ended) > 10_000:
                self._ended.clear()
            self._ended[job.id] = found
        return found

    def checked_path(self, job: Job, result: ResultFile) -> str:
        """The result's path, checked to stay inside the job's directory once symbolic
        links are resolved."""
        transport, sandbox = self._engine.backend(job.backend).sandbox(job)
        path = inside(sandbox, result.path, "result")
        real, root = transport.real_path(path), transport.real_path(sandbox)
        if not real.startswith(root.rstrip("/") + "/"):
            raise PermissionError(f"result {result.id} leads out of the job's directory")
        return real

    def chunks(self, job: Job, path: str, start: int, length: int) -> Iterator[bytes]:
        transport, _ = self._engine.backend(job.backend).sandbox(job)
        while length > 0:
            data = transport.read_bytes(path, start, min(_CHUNK, length))
            if not data:
                return
            yield data
            start += len(data)
            length -= len(data)


def _match(definition: JobDefinition, sizes: dict[str, int]) -> list[ResultFile]:
    found: list[ResultFile] = []
    seen: set[str] = set()
    for wanted in definition.results:
        paths = sorted(p for p in sizes if fnmatch.fnmatchcase(p, wanted.glob) and p not in seen)
        seen.update(paths)
        for path in paths:
            result_id = wanted.name if wanted.name and len(paths) == 1 else path
            found.append(ResultFile(result_id, path, sizes[path], wanted.media_type))
    return found


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range of a file of ``size`` bytes; None for the whole file."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: send the whole file
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            length = int(last)
            if length <= 0:
                raise RangeNotSatisfiable(header)
            return ByteRange(max(0, size - length), size - 1)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(end, size - 1))
