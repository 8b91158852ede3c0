"""What the pages show of a job, gathered from the service (blocking: call in a thread)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from jobbridge.backends.base import Stream
from jobbridge.errors import JobbridgeError
from jobbridge.phase import Phase
from jobbridge.uws.definitions import JobDefinition, ParameterDefinition, ParameterType
from jobbridge.uws.service import JobState, UwsService
from jobbridge.uws.views import error_text, shown_owner

__all__ = ["FieldView", "JobPage", "ResultLink", "field_views", "job_page", "shown_time"]

TAIL_BYTES = 4096


@dataclass(frozen=True)
class ResultLink:
    id: str
    href: str
    size: int
    media_type: str


@dataclass(frozen=True)
class JobPage:
    definition: str
    job_id: str
    phase: Phase
    final: bool
    detail: str | None
    run_id: str | None
    owner: str | None
    times: list[tuple[str, str]]
    parameters: list[tuple[str, str]]
    error: str | None
    results: list[ResultLink]
    stdout: str
    stderr: str
    can_run: bool
    can_abort: bool
    base: str
    """The job page's own path."""


def shown_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def job_page(service: UwsService, state: JobState, base: str) -> JobPage:
    job, record = state.job, state.record
    failure = service.fetch_failure(state) if job.phase is Phase.ABORTED else None
    duration = record.execution_duration
    times = [
        ("Created", shown_time(job.created)),
        ("Queued", shown_time(job.queued)),
        ("Started", shown_time(job.started)),
        ("Ended", shown_time(job.ended)),
        ("Execution duration", f"{duration} s" if duration else "unlimited"),
        ("Destruction", shown_time(job.destruction)),
    ]
    results = [
        ResultLink(f.id, f"{base}/results/{quote(f.id)}", f.size, f.media_type)
        for f in service.result_files(state)
    ]
    return JobPage(
        definition=record.definition,
        job_id=job.id,
        phase=job.phase,
        final=job.phase.is_final,
        detail=job.detail,
        run_id=record.run_id,
        owner=shown_owner(record.owner),
        times=[(label, value) for label, value in times if value],
        parameters=[(p.id, p.value) for p in record.parameters],
        error=error_text(job, failure),
        results=results,
        stdout=_tail(service, job.id, "stdout"),
        stderr=_tail(service, job.id, "stderr"),
        can_run=job.phase is Phase.PENDING,
        can_abort=not job.phase.is_final,
        base=base,
    )


def _tail(service: UwsService, job_id: str, stream: Stream) -> str:
    data = b""
    with contextlib.suppress(JobbridgeError, OSError):
        data = service.engine.read_output(job_id, stream, -TAIL_BYTES)
    return data.decode(errors="replace")


@dataclass(frozen=True)
class FieldView:
    """One parameter of a definition as a form field."""

    name: str
    kind: str
    """``text``, ``number``, ``choice``, ``bool`` or ``file``."""
    description: str
    required: bool
    default: str
    step: str
    choices: list[str]
    value: str
    """What the form shows: what was sent, else the default."""


def field_views(definition: JobDefinition, sent: dict[str, str] | None = None) -> list[FieldView]:
    sent = sent or {}
    return [_field(name, p, sent.get(name)) for name, p in definition.parameters.items()]


def _field(name: str, parameter: ParameterDefinition, sent: str | None) -> FieldView:
    default = parameter.default_text or ""
    kind, step = "text", ""
    choices: list[str] = []
    if parameter.type is ParameterType.FILE:
        kind = "file"
    elif parameter.allowed is not None:
        kind = "choice"
        choices = [parameter.parse(name, str(value)) for value in parameter.allowed]
    elif parameter.type is ParameterType.BOOL:
        kind = "bool"
    elif parameter.type is ParameterType.INT:
        kind, step = "number", "1"
    elif parameter.type is ParameterType.FLOAT:
        kind, step = "number", "any"
    return FieldView(
        name=name, kind=kind, description=parameter.description,
        required=parameter.required and parameter.default is None, default=default, step=step,
        choices=choices, value=default if sent is None else sent,
    )  # fmt: skip
