"""The UWS service on top of the engine: jobs made from definitions, their parameters,
durations, destruction, phases and results. HTTP lives in ``routes``; this module knows
nothing of requests and answers with ``UwsError``s that say which status fits."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from sqlalchemy import Connection

from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobNotFoundError, JobStateError
from jobbridge.job import Job, new_job_id, utcnow
from jobbridge.phase import Phase
from jobbridge.staging import URL_SCHEMES
from jobbridge.store.uws import ParameterValue, User, UwsJobRecord, UwsStore
from jobbridge.uws.auth import may_access, owner_of
from jobbridge.uws.definitions import (
    Definitions,
    JobDefinition,
    ParameterType,
)
from jobbridge.uws.results import ResultFile, ResultLister

__all__ = [
    "WAITABLE_PHASES",
    "Forbidden",
    "NotFound",
    "Upload",
    "UwsError",
    "UwsService",
    "parse_timestamp",
]

WAITABLE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
"""UWS 1.1: WAIT blocks only while a job is in one of these."""

_RESERVED = {"phase", "runid", "executionduration", "destruction", "action"}


class UwsError(Exception):
    status = 400


class NotFound(UwsError):
    status = 404


class Forbidden(UwsError):
    status = 403


@dataclass(frozen=True)
class Upload:
    """A file sent in a multipart request, as a parameter value."""

    name: str
    filename: str
    stream: BinaryIO


@dataclass(frozen=True)
class JobState:
    """A job as the service shows it: the engine's job and the service's own record."""

    job: Job
    record: UwsJobRecord
    definition: JobDefinition


class UwsService:
    def __init__(
        self,
        engine: Engine,
        uws: UwsStore,
        definitions: Definitions,
        uploads_dir: Path,
        *,
        default_destruction: timedelta,
    ) -> None:
        self.engine = engine
        self.uws = uws
        self.definitions = definitions
        self.uploads_dir = uploads_dir
        self.default_destruction = default_destruction
        self.results = ResultLister(engine)
        engine.hooks.on_delete(self._forget)

    def close(self) -> None:
        if self._forget in self.engine.hooks.deleted:
            self.engine.hooks.deleted.remove(self._forget)

    def _forget(self, job: Job) -> None:
        """The engine deleted (or destroyed) a job: drop what the service kept for it."""
        self.uws.delete_job(job.id)
        self.results.forget(job.id)
        shutil.rmtree(self.uploads_dir / job.id, ignore_errors=True)

    def sweep_orphans(self) -> int:
        """Drop records of jobs destroyed while the service was not running."""
        orphans = self.uws.orphans()
        for job_id in orphans:
            self.uws.delete_job(job_id)
            shutil.rmtree(self.uploads_dir / job_id, ignore_errors=True)
        return len(orphans)

    # -- looking jobs up -------------------------------------------------------------------

    def definition(self, name: str) -> JobDefinition:
        if name not in self.definitions:
            raise NotFound(f"no job definition {name!r}")
        return self.definitions[name]

    def state(self, definition: str, job_id: str, user: User) -> JobState:
        """The job, if it belongs to ``definition`` and ``user`` may see it."""
        chosen = self.definition(definition)
        record = self.uws.get_job(job_id)
        if record is None or record.definition != definition:
            raise NotFound(f"no job {job_id!r} in {definition}")
        if not may_access(user, record.owner):
            raise Forbidden(f"job {job_id} belongs to someone else")
        try:
            job = self.engine.get(job_id)
        except JobNotFoundError:
            raise NotFound(f"no job {job_id!r} in {definition}") from None
        return JobState(job, record, chosen)

    def quote(self, state: JobState) -> datetime | None:
        if state.record.quote is not None:
            return state.record.quote
        duration = state.record.execution_duration
        if state.job.ended is not None:
            return state.job.ended
        if state.job.started is not None and duration:
            return state.job.started + timedelta(seconds=duration)
        return None

    def result_files(self, state: JobState) -> list[ResultFile]:
        return self.results.list(state.job, state.definition)

    # -- creating and changing jobs -------------------------------------------------------

    def create(
        self,
        definition_name: str,
        user: User,
        fields: Sequence[tuple[str, str]],
        uploads: Sequence[Upload] = (),
    ) -> Job:
        """A new PENDING job (QUEUED with PHASE=RUN) and its record, written together. Every
        control field is checked before anything is written; uploads land in the job's own
        directory first, so the job is created with its final spec."""
        definition = self.definition(definition_name)
        control, given = _split_fields(fields)
        run = _run_at_creation(control.get("phase"))
        duration = definition.execution_duration.clamp(
            _duration(control["executionduration"])
            if "executionduration" in control
            else definition.execution_duration.default
        )
        destruction = (
            parse_timestamp(control["destruction"])
            if "destruction" in control
            else utcnow() + self.default_destruction
        )
        job_id = new_job_id()
        owner = owner_of(user)
        try:
            parameters = self._parameters(definition, given, uploads, job_id=job_id)
            values = {p.id: p.value for p in parameters}
            definition.check_complete(values)
            spec = definition.job_spec(values, _files(parameters), duration)

            def write_record(conn: Connection) -> None:
                record = UwsJobRecord(
                    job_id=job_id, definition=definition.name, owner=owner,
                    run_id=control.get("runid"), parameters=tuple(parameters),
                    execution_duration=duration, quote=None,
                    created=self.uws.job_created(conn, job_id),
                )  # fmt: skip
                self.uws.add_job_within(conn, record)

            job = self.engine.create(
                spec, backend=definition.backend, owner=owner, destruction=destruction,
                job_id=job_id, also=write_record,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.uploads_dir / job_id, ignore_errors=True)
            raise
        if run:
            job = self.engine.start(job.id)
        return job

    def update_parameters(
        self,
        state: JobState,
        fields: Sequence[tuple[str, str]],
        uploads: Sequence[Upload] = (),
    ) -> None:
        control, given = _split_fields(fields)
        if control:
            names = ", ".join(sorted(k.upper() for k in control))
            raise UwsError(f"{names} cannot be set through the parameters")
        if not given and not uploads:
            return
        _require_pending(state.job, "its parameters")
        changed = self._parameters(state.definition, given, uploads, job_id=state.job.id)
        merged = {p.id: p for p in state.record.parameters}
        merged.update((p.id, p) for p in changed)
        parameters = tuple(merged.values())
        values = {p.id: p.value for p in parameters}
        spec = state.definition.job_spec(
            values, _files(parameters), state.record.execution_duration
        )
        self._update_pending(state.job.id, spec)
        self.uws.update_job(state.job.id, parameters=parameters)

    def set_run_id(self, state: JobState, run_id: str) -> None:
        self.uws.update_job(state.job.id, run_id=run_id)

    def set_execution_duration(self, state: JobState, text: str) -> None:
        _require_pending(state.job, "its execution duration")
        duration = state.definition.execution_duration.clamp(_duration(text))
        values = {p.id: p.value for p in state.record.parameters}
        spec = state.definition.job_spec(values, _files(state.record.parameters), duration)
        self._update_pending(state.job.id, spec)
        self.uws.update_job(state.job.id, execution_duration=duration)

    def set_destruction(self, state: JobState, text: str) -> None:
        self.engine.set_destruction(state.job.id, parse_timestamp(text))

    def set_phase(self, state: JobState, phase: str) -> None:
        wanted = phase.strip().upper()
        try:
            if wanted == "RUN":
                self.engine.start(state.job.id)
            elif wanted == "ABORT":
                self._abort(state.job)
            else:
                raise UwsError(f"PHASE={phase!r}: only RUN or ABORT")
        except JobStateError as error:
            raise Forbidden(str(error)) from None

    def _abort(self, job: Job) -> None:
        """A job that has already ended cannot be aborted, whether the engine refuses to
        cancel it or answers with the job as it ended."""
        if job.phase.is_final:
            raise JobStateError(f"job {job.id} has already ended ({job.phase})")
        cancelled = self.engine.cancel(job.id)
        if cancelled.phase is not Phase.ABORTED:
            raise JobStateError(f"job {job.id} has already ended ({cancelled.phase})")

    def delete(self, state: JobState) -> None:
        with contextlib.suppress(JobNotFoundError):  # destroyed meanwhile
            self.engine.delete(state.job.id, force=True)
        self._forget(state.job)

    def _update_pending(self, job_id: str, spec: object) -> None:
        try:
            self.engine.update_pending(job_id, spec)  # type: ignore[arg-type]
        except JobStateError as error:
            raise Forbidden(str(error)) from None
        except JobbridgeError as error:
            raise UwsError(str(error)) from None

    # -- parameters -----------------------------------------------------------------------

    def _parameters(
        self,
        definition: JobDefinition,
        given: Mapping[str, str],
        uploads: Sequence[Upload],
        *,
        job_id: str,
    ) -> list[ParameterValue]:
        found: dict[str, ParameterValue] = {}
        for name, text in given.items():
            known = _known(definition, name)
            parameter = definition.parameters[known]
            if parameter.type is ParameterType.FILE:
                found[known] = ParameterValue(id=known, value=_url(known, text), by_reference=True)
            else:
                found[known] = ParameterValue(id=known, value=parameter.parse(known, text))
        for upload in uploads:
            known = _known(definition, upload.name)
            if definition.parameters[known].type is not ParameterType.FILE:
                raise UwsError(f"parameter {known} is not a file; it cannot be uploaded")
            path = self._store_upload(job_id, known, upload.stream)
            found[known] = ParameterValue(
                id=known, value=upload.filename or known, by_reference=True, local_path=path
            )
        return list(found.values())

    def _store_upload(self, job_id: str, name: str, stream: BinaryIO) -> str:
        directory = self.uploads_dir / job_id
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        with target.open("wb") as handle:
            shutil.copyfileobj(stream, handle)
        return str(target)


def _split_fields(fields: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """UWS control fields (case-insensitive) apart from job parameters; the last value wins."""
    control: dict[str, str] = {}
    given: dict[str, str] = {}
    for key, value in fields:
        if key.lower() in _RESERVED:
            control[key.lower()] = value
        else:
            given[key] = value
    if control.get("action") is not None:
        raise UwsError("ACTION is not accepted here")
    return control, given


def _run_at_creation(phase: str | None) -> bool:
    """Whether PHASE, as given with a new job's parameters, asks for it to run at once."""
    if phase is None:
        return False
    if phase.strip().upper() != "RUN":
        raise UwsError(f"PHASE={phase} cannot be given when creating a job; only PHASE=RUN")
    return True


def _known(definition: JobDefinition, name: str) -> str:
    found = definition.parameter(name)
    if found is None:
        known = ", ".join(definition.parameters) or "none"
        raise UwsError(f"{definition.name} has no parameter {name!r} (parameters: {known})")
    return found[0]


def _url(name: str, text: str) -> str:
    scheme = urlsplit(text).scheme
    if scheme not in URL_SCHEMES:
        schemes = ", ".join(URL_SCHEMES)
        raise UwsError(f"parameter {name}: a file is uploaded or given as a URL ({schemes})")
    return text


def _files(parameters: Iterable[ParameterValue]) -> dict[str, str]:
    return {p.id: p.local_path or p.value for p in parameters if p.by_reference}


def _duration(text: str) -> int:
    try:
        seconds = int(text.strip())
    except ValueError:
        raise UwsError(f"EXECUTIONDURATION {text!r} is not a whole number of seconds") from None
    if seconds < 0:
        raise UwsError("EXECUTIONDURATION must not be negative")
    return seconds


def parse_timestamp(text: str, what: str = "DESTRUCTION") -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UwsError(f"{what} {text!r} is not an ISO 8601 time") from None
    # IVOA times are UTC; clients such as pyvo send them without a zone
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _require_pending(job: Job, what: str) -> None:
    if job.phase is not Phase.PENDING:
        raise Forbidden(f"job {job.id} is {job.phase}; {what} can change only while PENDING")
