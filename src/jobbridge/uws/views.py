"""From the service's jobs to the views that XML and JSON render, with absolute links."""

from __future__ import annotations

from urllib.parse import quote

from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.store.uws import JobRef, ParameterValue, is_anonymous_owner
from jobbridge.uws.models import ErrorSummaryView, JobRefView, JobView, ParameterView, ResultView
from jobbridge.uws.results import ResultFile
from jobbridge.uws.service import JobState, UwsService

__all__ = ["Links", "error_text", "job_view", "parameter_views", "ref_views", "result_views"]

_TRANSIENT = frozenset({"LOST", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})


class Links:
    """Absolute URLs of the service's resources."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def job_list(self, definition: str) -> str:
        return f"{self.base}/jobs/{quote(definition, safe='')}"

    def job(self, definition: str, job_id: str) -> str:
        return f"{self.job_list(definition)}/{quote(job_id, safe='')}"

    def result(self, definition: str, job_id: str, result_id: str) -> str:
        return f"{self.job(definition, job_id)}/results/{quote(result_id)}"

    def parameter(self, definition: str, job_id: str, name: str) -> str:
        return f"{self.job(definition, job_id)}/parameters/{quote(name, safe='')}"


def ref_views(definition: str, refs: list[JobRef], links: Links) -> list[JobRefView]:
    return [
        JobRefView(
            id=ref.job_id, href=links.job(definition, ref.job_id), phase=ref.phase,
            run_id=ref.run_id, owner_id=shown_owner(ref.owner), creation_time=ref.created,
        )
        for ref in refs
    ]  # fmt: skip


def shown_owner(owner: str | None) -> str | None:
    """Anonymous clients are shown as no owner (their ids are theirs to keep)."""
    return None if is_anonymous_owner(owner) else owner


def parameter_views(state: JobState, links: Links) -> list[ParameterView]:
    return [_parameter_view(state, p, links) for p in state.record.parameters]


def _parameter_view(state: JobState, parameter: ParameterValue, links: Links) -> ParameterView:
    value = parameter.value
    if parameter.local_path is not None and parameter.fetch_job is None:
        value = links.parameter(state.record.definition, state.job.id, parameter.id)
    return ParameterView(id=parameter.id, value=value, by_reference=parameter.by_reference)


def result_views(state: JobState, files: list[ResultFile], links: Links) -> list[ResultView]:
    return [
        ResultView(
            id=f.id, href=links.result(state.record.definition, state.job.id, f.id),
            size=f.size, mime_type=f.media_type,
        )
        for f in files
    ]  # fmt: skip


def error_text(job: Job, fetch_failure: str | None = None) -> str | None:
    """What went wrong, for an ERROR job, or one that never ran because a file URL could
    not be fetched (``fetch_failure``); None for any other."""
    if fetch_failure is not None and job.phase in (Phase.ERROR, Phase.ABORTED):
        return f"a file URL could not be fetched: {fetch_failure}"
    if job.phase is not Phase.ERROR:
        return None
    parts = [job.message or job.detail or "the job failed"]
    if job.detail and job.detail not in parts[0]:
        parts.append(f"({job.detail})")
    if job.exit_code is not None:
        parts.append(f"exit code {job.exit_code}")
    return " ".join(parts)


def job_view(service: UwsService, state: JobState, links: Links) -> JobView:
    job = state.job
    failure = service.fetch_failure(state) if job.phase is Phase.ABORTED else None
    message = error_text(job, failure)
    summary = None
    if message is not None:
        kind = "transient" if job.detail in _TRANSIENT and not failure else "fatal"
        summary = ErrorSummaryView(type=kind, has_detail=True, message=message)
    return JobView(
        job_id=job.id,
        run_id=state.record.run_id,
        owner_id=shown_owner(state.record.owner),
        phase=job.phase,
        quote=service.quote(state),
        creation_time=job.created,
        start_time=job.started,
        end_time=job.ended,
        execution_duration=state.record.execution_duration,
        destruction=job.destruction,
        parameters=parameter_views(state, links),
        results=result_views(state, service.result_files(state), links),
        error_summary=summary,
    )
