"""Job rows as the store writes them: the columns of a job, its events, guarded updates."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.job import Handover, Job
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.store.schema import jobs

__all__ = [
    "CHUNK",
    "changing",
    "check_fields",
    "chunks",
    "claim_values",
    "event_row",
    "job_row",
    "spec_document",
]

CHUNK = 500
"""Ids in one ``IN`` list, well below every database's limit on bound parameters."""
_JOB_FIELDS = frozenset(jobs.c.keys()) - {"id", "spec", "name", "version"}


def check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - _JOB_FIELDS
    if unknown:
        raise ValueError(f"not job fields: {sorted(unknown)}")
    for key in ("phase", "handover"):
        if key in fields and isinstance(fields[key], Phase | Handover):
            fields[key] = fields[key].value


def claim_values(token: str | None, now: datetime) -> dict[str, Any]:
    return {
        "handover": Handover.CLAIMED.value,
        "claim_token": token,
        "heartbeat": now,
        "submitting_since": now,
    }


def job_row(job: Job) -> dict[str, Any]:
    row = job.model_dump(exclude={"spec"})
    row["phase"] = job.phase.value
    row["handover"] = job.handover.value
    row["name"] = job.name
    row["workflow"] = job.spec.workflow
    row["spec"] = spec_document(job.spec)
    return row


def spec_document(spec: JobSpec) -> dict[str, Any]:
    """What the store keeps of a spec: the fields that differ from their defaults (a quarter
    of the whole, to read and to hold in memory; the same spec when validated again). Specs
    are immutable, and jobs submitted together often share one: its document is made once
    (the cache holds the spec itself, so that its id names it while it is there). The
    document is shared: never change it."""
    known = _documents.get(id(spec))
    if known is not None and known[0] is spec:
        return known[1]
    document = spec.model_dump(mode="json", exclude_defaults=True)
    with _documents_lock:
        if len(_documents) >= _DOCUMENTS:
            _documents.pop(next(iter(_documents)), None)
        _documents[id(spec)] = (spec, document)
    return document


_DOCUMENTS = 64
_documents: dict[int, tuple[JobSpec, dict[str, Any]]] = {}
_documents_lock = threading.Lock()


def changing() -> sa.Update:
    """An update of job rows that raises their version, so that readers parse them anew."""
    return jobs.update().values(version=jobs.c.version + 1)


def event_row(
    job_id: str,
    time: datetime,
    old: Phase | None,
    new: Phase,
    detail: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "time": time,
        "old_phase": None if old is None else old.value,
        "new_phase": new.value,
        "detail": detail,
        "message": message,
    }


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
