"""The UWS service on top of the engine: jobs made from definitions, their parameters,
durations, destruction, phases and results. HTTP lives in ``routes``; this module knows
nothing of requests and answers with ``UwsError``s that say which status fits."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection

from jobbridge.config import ServiceSettings
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobNotFoundError, JobStateError
from jobbridge.fetch import FetchError, FetchPolicy, check_url
from jobbridge.job import Job, new_job_id, utcnow
from jobbridge.phase import Phase
from jobbridge.spec import Dependency, JobSpec
from jobbridge.store.uws import (
    ANONYMOUS_PREFIX,
    ParameterValue,
    User,
    UwsJobRecord,
    UwsStore,
)
from jobbridge.uws.auth import may_access, owner_of
from jobbridge.uws.control import (
    duration_of,
    parse_timestamp,
    run_at_creation,
    run_id_of,
    split_fields,
)
from jobbridge.uws.definitions import (
    Definitions,
    JobDefinition,
    ParameterType,
)
from jobbridge.uws.errors import Forbidden, LimitReached, NotFound, TooLarge, UwsError
from jobbridge.uws.results import ResultFile, ResultLister

__all__ = ["WAITABLE_PHASES", "JobState", "Upload", "UwsService"]

WAITABLE_PHASES = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
"""UWS 1.1: WAIT blocks only while a job is in one of these."""

log = logging.getLogger(__name__)

_FETCH_GRACE = 60
_COPY_CHUNK = 1 << 20


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
        settings: ServiceSettings | None = None,
    ) -> None:
        self.engine = engine
        self.uws = uws
        self.definitions = definitions
        self.uploads_dir = uploads_dir
        self.settings = settings = settings or ServiceSettings()
        self.default_destruction = timedelta(days=settings.default_destruction_days)
        self.results = ResultLister(engine)
        self.fetch_policy = FetchPolicy.from_texts(
            settings.fetch_allowed_networks, max_bytes=settings.max_upload_bytes,
            timeout=settings.fetch_timeout, max_redirects=settings.fetch_max_redirects,
        )  # fmt: skip
        engine.hooks.on_delete(self._forget)

    def close(self) -> None:
        if self._forget in self.engine.hooks.deleted:
            self.engine.hooks.deleted.remove(self._forget)

    def _forget(self, job: Job) -> None:
        """The engine deleted (or destroyed) a job: drop what the service kept for it."""
        record = self.uws.get_job(job.id)
        for parameter in record.parameters if record is not None else ():
            if parameter.fetch_job is not None:
                self._drop_fetch(parameter.fetch_job)
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
        if not may_access(user, record.owner, anonymous_job_urls=self.settings.anonymous_job_urls):
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

    def fetch_failure(self, state: JobState) -> str | None:
        """Why a file URL of the job could not be fetched, once its fetch has ended badly."""
        for parameter in state.record.parameters:
            if parameter.fetch_job is None:
                continue
            try:
                fetch = self.engine.get(parameter.fetch_job)
            except JobNotFoundError:
                continue
            if fetch.phase.is_final and fetch.phase is not Phase.COMPLETED:
                said = b""
                with contextlib.suppress(JobbridgeError, OSError):
                    said = self.engine.read_output(fetch.id, "stderr", -2048)
                reason = said.decode(errors="replace").strip() or fetch.message or fetch.phase
                return f"parameter {parameter.id}: {reason}"
        return None

    # -- creating and changing jobs -------------------------------------------------------

    def create(
        self,
        definition_name: str,
        user: User,
        fields: Sequence[tuple[str, str]],
        uploads: Sequence[Upload] = (),
    ) -> Job:
        """A new PENDING job (QUEUED with PHASE=RUN) and its record, written together. Every
        control field and limit is checked before anything is written; uploads land in the
        job's own directory first, so the job is created with its final spec. A file given
        as a URL is fetched by a job of its own that this one waits for."""
        definition = self.definition(definition_name)
        control, given = split_fields(fields)
        run = run_at_creation(control.get("phase"))
        duration = definition.execution_duration.clamp(
            duration_of(control["executionduration"])
            if "executionduration" in control
            else definition.execution_duration.default
        )
        destruction = (
            parse_timestamp(control["destruction"])
            if "destruction" in control
            else utcnow() + self.default_destruction
        )
        run_id = run_id_of(control["runid"]) if "runid" in control else None
        owner = owner_of(user)
        job_id = new_job_id()
        fetches: list[str] = []
        try:
            parameters = self._parameters(
                definition, given, uploads, job_id=job_id, owner=owner, destruction=destruction
            )
            fetches = [p.fetch_job for p in parameters if p.fetch_job is not None]
            values = {p.id: p.value for p in parameters}
            definition.check_complete(values)
            spec = self._spec(definition, parameters, duration)

            def write_record(conn: Connection, added: Sequence[Job]) -> None:
                # counted in the transaction that adds the job: requests racing each other
                # cannot all squeeze under the limit
                self._check_active_jobs(owner, conn)
                record = UwsJobRecord(
                    job_id=job_id, definition=definition.name, owner=owner,
                    run_id=run_id, parameters=tuple(parameters),
                    execution_duration=duration, quote=None, created=added[0].created,
                )  # fmt: skip
                self.uws.add_job_within(conn, record)

            job = self.engine.create(
                spec, backend=definition.backend, owner=owner, destruction=destruction,
                job_id=job_id, also=write_record,
            )  # fmt: skip
        except BaseException:
            for fetch_id in fetches:
                self._drop_fetch(fetch_id)
            shutil.rmtree(self.uploads_dir / job_id, ignore_errors=True)
            raise
        self._start_fetches(fetches)
        if run:
            job = self.engine.start(job.id)
        return job

    def only_writes(
        self, definition_name: str, fields: Sequence[tuple[str, str]], uploads: Sequence[Upload]
    ) -> bool:
        """Whether creating this job only writes to the store: no file to take in or fetch,
        no run to start (which may wait for a backend), and a store that writes one
        transaction at a time anyway."""
        if uploads or definition_name not in self.definitions:
            return False
        if not self.engine.store.writes_in_turns:
            return False
        definition = self.definitions[definition_name]
        for name, _ in fields:
            if name.lower() == "phase":
                return False
            found = definition.parameter(name)
            if found is not None and found[1].type is ParameterType.FILE:
                return False
        return True

    def update_parameters(
        self,
        state: JobState,
        fields: Sequence[tuple[str, str]],
        uploads: Sequence[Upload] = (),
    ) -> None:
        """Change parameters (and RUNID, which UWS lets travel with them)."""
        control, given = split_fields(fields)
        run_id = control.pop("runid", None)
        if control:
            names = ", ".join(sorted(k.upper() for k in control))
            raise UwsError(f"{names} cannot be set through the parameters")
        if run_id is not None:
            self.set_run_id(state, run_id)
        if not given and not uploads:
            return
        _require_pending(state.job, "its parameters")
        self._require_fetched(state, [*given, *(upload.name for upload in uploads)])
        changed = self._parameters(
            state.definition, given, uploads, job_id=state.job.id,
            owner=state.record.owner or ANONYMOUS_PREFIX, destruction=state.job.destruction,
        )  # fmt: skip
        fetches = [p.fetch_job for p in changed if p.fetch_job is not None]
        try:
            merged = {p.id: p for p in state.record.parameters}
            replaced = [merged[p.id] for p in changed if p.id in merged]
            merged.update((p.id, p) for p in changed)
            parameters = tuple(merged.values())
            spec = self._spec(state.definition, parameters, state.record.execution_duration)
            self._update_pending(state.job.id, spec)
            self.uws.update_job(state.job.id, parameters=parameters)
        except BaseException:
            for fetch_id in fetches:
                self._drop_fetch(fetch_id)
            raise
        self._start_fetches(fetches)
        for old in replaced:
            if old.fetch_job is not None:
                self._drop_fetch(old.fetch_job)
            if old.local_path is not None and old.local_path not in _paths(changed):
                Path(old.local_path).unlink(missing_ok=True)

    def _require_fetched(self, state: JobState, names: Iterable[str]) -> None:
        """A file URL still being fetched keeps its value until the fetch ends: the job
        waits for that fetch, and would be ended if the fetch failed after all."""
        wanted = {name.lower() for name in names}
        for parameter in state.record.parameters:
            if parameter.fetch_job is None or parameter.id.lower() not in wanted:
                continue
            with contextlib.suppress(JobNotFoundError):
                if not self.engine.get(parameter.fetch_job).phase.is_final:
                    raise Forbidden(
                        f"parameter {parameter.id}: its URL is still being fetched; it can"
                        " change once the fetch has ended"
                    )

    def set_run_id(self, state: JobState, run_id: str) -> None:
        self.uws.update_job(state.job.id, run_id=run_id_of(run_id))

    def set_execution_duration(self, state: JobState, text: str) -> None:
        _require_pending(state.job, "its execution duration")
        duration = state.definition.execution_duration.clamp(duration_of(text))
        spec = self._spec(state.definition, state.record.parameters, duration)
        self._update_pending(state.job.id, spec)
        self.uws.update_job(state.job.id, execution_duration=duration)

    def set_destruction(self, state: JobState, text: str) -> None:
        self.engine.set_destruction(state.job.id, parse_timestamp(text))

    def set_phase(self, state: JobState, phase: str) -> None:
        wanted = phase.strip().upper()
        if wanted == "ABORT":
            self._abort(state.job)
            return
        if wanted != "RUN":
            raise UwsError(f"PHASE={phase!r}: only RUN or ABORT")
        try:
            self.engine.start(state.job.id)
        except JobStateError as error:
            raise Forbidden(str(error)) from None

    def _abort(self, job: Job) -> None:
        """Abort a job that has not ended; one that has is left as it is (UWS clients expect
        ABORT to be harmless, whatever the job did meanwhile)."""
        if job.phase.is_final:
            return
        with contextlib.suppress(JobStateError):  # it ended meanwhile
            self.engine.cancel(job.id)

    def delete(self, state: JobState) -> None:
        with contextlib.suppress(JobNotFoundError):  # destroyed meanwhile
            self.engine.delete(state.job.id, force=True)
        self._forget(state.job)

    def _update_pending(self, job_id: str, spec: JobSpec) -> None:
        try:
            self.engine.update_pending(job_id, spec)
        except JobStateError as error:
            raise Forbidden(str(error)) from None
        except JobbridgeError as error:
            raise UwsError(str(error)) from None

    def _spec(
        self,
        definition: JobDefinition,
        parameters: Iterable[ParameterValue],
        duration: int,
    ) -> JobSpec:
        """The job's spec: waiting for the fetches of its file URLs, if it has any."""
        parameters = list(parameters)
        values = {p.id: p.value for p in parameters}
        spec = definition.job_spec(values, _files(parameters), duration)
        fetches = [Dependency(job_id=p.fetch_job) for p in parameters if p.fetch_job]
        return spec.model_copy(update={"depends_on": fetches}) if fetches else spec

    # -- limits ---------------------------------------------------------------------------

    def _check_active_jobs(self, owner: str, conn: Connection) -> None:
        limit = self.settings.max_active_jobs
        if self.uws.count_active(owner, conn) >= limit:
            raise LimitReached(
                f"limit max_active_jobs reached: {limit} jobs that have not ended (PENDING"
                " included) is the most one user may have; delete some or let them end"
            )

    def _room(self, owner: str) -> int:
        """Bytes ``owner`` may still keep in uploaded and fetched files."""
        kept = 0
        for path in self.uws.kept_files(owner):
            with contextlib.suppress(OSError):
                kept += os.path.getsize(path)
        return self.settings.max_stored_bytes - kept

    # -- parameters -----------------------------------------------------------------------

    def _parameters(
        self,
        definition: JobDefinition,
        given: Mapping[str, str],
        uploads: Sequence[Upload],
        *,
        job_id: str,
        owner: str,
        destruction: datetime | None,
    ) -> list[ParameterValue]:
        found: dict[str, ParameterValue] = {}
        urls: dict[str, str] = {}
        for name, text in given.items():
            known = _known(definition, name)
            parameter = definition.parameters[known]
            if parameter.type is ParameterType.FILE:
                urls[known] = self._url(known, text)
            else:
                found[known] = ParameterValue(id=known, value=parameter.parse(known, text))
        room = self._room(owner) if uploads or urls else 0
        for upload in uploads:
            known = _known(definition, upload.name)
            if definition.parameters[known].type is not ParameterType.FILE:
                raise UwsError(f"parameter {known} is not a file; it cannot be uploaded")
            path, size = self._store_upload(job_id, known, upload.stream, room)
            room -= size
            urls.pop(known, None)
            found[known] = ParameterValue(
                id=known, value=upload.filename or known, by_reference=True, local_path=path
            )
        if urls and room <= 0:
            raise _stored_bytes_reached(self.settings.max_stored_bytes)
        for known, url in urls.items():
            found[known] = self._fetch_job(
                job_id, known, url, owner=owner, destruction=destruction,
                max_bytes=min(room, self.settings.max_upload_bytes),
            )  # fmt: skip
        return list(found.values())

    def _url(self, name: str, text: str) -> str:
        try:
            return check_url(text.strip(), self.fetch_policy)
        except FetchError as error:
            message = f"parameter {name}: a file is uploaded or given as a URL: {error}"
            raise UwsError(message) from None

    def _fetch_job(
        self, job_id: str, name: str, url: str, *, owner: str, destruction: datetime | None,
        max_bytes: int,
    ) -> ParameterValue:  # fmt: skip
        """A PENDING job that fetches ``url`` into a file of the job's upload directory (the
        empty file stands in for it until then). It is started once the job exists."""
        fetch_id = new_job_id()
        directory = self.uploads_dir / job_id
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{name}.{fetch_id}"
        target.touch()
        policy = self.fetch_policy
        arguments = [
            "-m", "jobbridge.fetch", "--max-bytes", str(max_bytes),
            "--timeout", repr(policy.timeout), "--max-redirects", str(policy.max_redirects),
        ]  # fmt: skip
        for network in policy.allowed:
            arguments += ["--allow", str(network)]
        arguments += ["--", url, str(target)]
        spec = JobSpec(
            name=f"fetch-{name}",
            executable=sys.executable,
            arguments=arguments,
            resources={"walltime": int(policy.timeout) + _FETCH_GRACE},
        )
        try:
            self.engine.create(
                spec, backend=self.settings.fetch_backend, owner=owner, destruction=destruction,
                job_id=fetch_id,
            )  # fmt: skip
        except JobbridgeError as error:
            raise UwsError(f"parameter {name}: the URL cannot be fetched here: {error}") from None
        return ParameterValue(
            id=name, value=url, by_reference=True, local_path=str(target), fetch_job=fetch_id
        )

    def _start_fetches(self, fetch_ids: Iterable[str]) -> None:
        for fetch_id in fetch_ids:
            try:
                self.engine.start(fetch_id)
            except JobbridgeError:
                log.warning("could not start fetch job %s", fetch_id, exc_info=True)

    def _drop_fetch(self, fetch_id: str) -> None:
        with contextlib.suppress(JobNotFoundError):
            try:
                self.engine.delete(fetch_id, force=True)
            except JobbridgeError:
                log.warning("could not delete fetch job %s", fetch_id, exc_info=True)

    def _store_upload(self, job_id: str, name: str, stream: BinaryIO, room: int) -> tuple[str, int]:
        directory = self.uploads_dir / job_id
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        size = 0
        with target.open("wb") as handle:
            while chunk := stream.read(_COPY_CHUNK):
                size += len(chunk)
                if size > room:
                    raise _stored_bytes_reached(self.settings.max_stored_bytes)
                handle.write(chunk)
        return str(target), size


def _stored_bytes_reached(limit: int) -> TooLarge:
    return TooLarge(
        f"limit max_stored_bytes reached: one user may keep {limit} bytes of uploaded and"
        " fetched files; delete some jobs first"
    )


def _known(definition: JobDefinition, name: str) -> str:
    found = definition.parameter(name)
    if found is None:
        known = ", ".join(definition.parameters) or "none"
        raise UwsError(f"{definition.name} has no parameter {name!r} (parameters: {known})")
    return found[0]


def _files(parameters: Iterable[ParameterValue]) -> dict[str, str]:
    return {p.id: p.local_path or p.value for p in parameters if p.by_reference}


def _paths(parameters: Iterable[ParameterValue]) -> set[str]:
    return {p.local_path for p in parameters if p.local_path is not None}


def _require_pending(job: Job, what: str) -> None:
    if job.phase is not Phase.PENDING:
        raise Forbidden(f"job {job.id} is {job.phase}; {what} can change only while PENDING")
