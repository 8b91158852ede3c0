"""What happens to a job on its way in (``admit``: its workflow and secrets checked before
it is recorded; ``check_stage_out``, ``check_parents_exist``) and just before its backend
sees it (``Preparer``: the workflow's workspace made, the job cache consulted, secrets handed
over)."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobbridge.backends.base import Backend
from jobbridge.cache import NotCacheable, cache_key, reuse_outputs
from jobbridge.errors import (
    BackendError,
    JobbridgeError,
    JobNotFoundError,
    SpecError,
    SubmissionError,
    SubmitOutcome,
)
from jobbridge.job import Handover, Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.secrets import (
    SecretError,
    Secrets,
    SecretValues,
    remove_delivered,
    wrap_with_secrets,
    write_secrets,
)
from jobbridge.spec import JobSpec
from jobbridge.store import Store
from jobbridge.store.workflows import Workflow, WorkflowStore
from jobbridge.transport.base import Transport

if TYPE_CHECKING:
    from jobbridge.dispatch import Mover

__all__ = [
    "Prepared",
    "Preparer",
    "admit",
    "check_parents_exist",
    "check_stage_out",
    "define_workflow",
    "preparation_failure",
]

log = logging.getLogger(__name__)

_RELEASED: dict[str, Any] = {
    "handover": Handover.WAITING.value,
    "claim_token": None,
    "submitting_since": None,
}


def admit(
    spec: JobSpec,
    owner: str | None,
    backend: Backend,
    workflows: WorkflowStore,
    secrets: Secrets,
) -> JobSpec:
    """The spec to record: with its workflow's workspace and cache setting; refused if it
    names a secret its owner lacks, or secrets on a backend that keeps no job directory."""
    if spec.secrets:
        secrets.check(owner, spec.secrets)
        if not backend.delivers_secrets and _sandbox(backend, _probe(spec, backend)) is None:
            raise SecretError(f"backend {backend.name!r} keeps no job directory for secrets")
    if spec.workflow is None:
        return spec
    known = define_workflow(workflows, backend, spec.workflow, owner, spec.workspace)
    changes: dict[str, Any] = {"workspace": known.workspace}
    if known.cache and spec.array is None:
        changes["cache"] = True
    return spec.model_copy(update=changes)


def check_stage_out(spec: JobSpec, results_dir: Path | None) -> None:
    """Refuse relative stage-out targets when there is no results directory to hold them."""
    relative = [t.target for t in spec.stage_out if not os.path.isabs(t.target)]
    if relative and results_dir is None:
        raise SpecError(f"stage_out target {relative[0]!r} is relative and no results_dir is set")


def check_parents_exist(store: Store, parent_ids: Iterable[str]) -> None:
    """Refuse dependencies on jobs that do not exist."""
    wanted = list(parent_ids)
    if not wanted:
        return
    try:
        store.get_many(wanted)
    except JobNotFoundError as error:
        raise SpecError(f"depends_on names job {error.job_id!r}, which does not exist") from None


def define_workflow(
    workflows: WorkflowStore,
    backend: Backend,
    name: str,
    owner: str | None,
    workspace: str | None = None,
    cache: bool | None = None,
) -> Workflow:
    """The workflow, recorded now if it is new (with ``workspace``, or one beside the
    backend's job directories); ``cache``, if given, turns the cache on or off for its jobs."""
    known = workflows.get(name, owner)
    if known is None:
        probe = JobSpec(executable="true", workflow=name, workspace=workspace)
        known = workflows.add(
            Workflow(
                name=name,
                owner=owner,
                workspace=workspace or _default_workspace(backend, probe, owner),
                cache=bool(cache),
                created=utcnow(),
            )
        )
    if workspace is not None and workspace != known.workspace:
        raise SpecError(
            f"workflow {name!r} has the workspace {known.workspace!r}, not {workspace!r}"
        )
    if cache is not None and cache != known.cache:
        workflows.set_cache(name, owner, cache)
        known = known.model_copy(update={"cache": cache})
    return known


def _probe(spec: JobSpec, backend: Backend) -> Job:
    return Job(id="workspace", spec=spec, backend=backend.name, created=utcnow())


def _sandbox(backend: Backend, job: Job) -> tuple[Transport, str] | None:
    try:
        return backend.sandbox(job)
    except BackendError:
        return None


def _default_workspace(backend: Backend, spec: JobSpec, owner: str | None) -> str | None:
    """``workspaces/[OWNER/]NAME`` beside the backend's job directories."""
    place = _sandbox(backend, _probe(spec, backend))
    if place is None:
        return None
    root = posixpath.dirname(posixpath.dirname(place[1]))
    parts = [root, "workspaces"]
    if owner:
        parts.append(re.sub(r"[^A-Za-z0-9_.-]", "_", owner))
    assert spec.workflow is not None
    return posixpath.join(*parts, spec.workflow)


def preparation_failure(error: Exception) -> SubmissionError:
    """A failure before the backend saw the job: nothing was made; a passing one may be
    tried again."""
    if isinstance(error, SubmissionError):
        return error
    passing = isinstance(error, OSError) or (
        isinstance(error, JobbridgeError) and getattr(error, "retryable", False)
    )
    outcome = SubmitOutcome.NOT_MADE if passing else SubmitOutcome.REFUSED
    return SubmissionError(f"preparing the job failed: {error}", outcome)


@dataclass(frozen=True)
class Prepared:
    job: Job
    """What the backend is handed: the recorded job with its workspace and secrets wired in."""
    done: Job | None = None
    """The job as it is now, if it needs no backend (it was served from the cache)."""
    secrets: SecretValues | None = field(default=None, repr=False)
    """Its decrypted secrets, for a backend that hands them over itself."""


class Preparer:
    def __init__(
        self,
        store: Store,
        workflows: WorkflowStore,
        secrets: Secrets,
        move: Mover,
        results_dir: Path | None,
    ) -> None:
        self.store = store
        self.workflows = workflows
        self.secrets = secrets
        self.move = move
        self.results_dir = results_dir

    def __call__(self, backend: Backend, job: Job, token: str) -> Prepared:
        spec = job.spec
        place = _sandbox(backend, job)
        if spec.workspace and place is not None:
            place[0].make_dirs(spec.workspace)
        if spec.cache:
            done = self._from_cache(job, token, place[0] if place else None)
            if done is not None:
                return Prepared(job, done)
        environment = dict(spec.environment)
        if spec.workflow:
            environment["JOBBRIDGE_WORKFLOW"] = spec.workflow
        if spec.workspace:
            environment["JOBBRIDGE_WORKSPACE"] = spec.workspace
        spec = spec.model_copy(update={"environment": environment})
        if spec.secrets and backend.delivers_secrets:
            values = self.secrets.values(job.owner, spec.secrets)
            return Prepared(job.model_copy(update={"spec": spec}), secrets=values)
        if spec.secrets:
            if place is None:
                raise SecretError(f"backend {backend.name!r} keeps no job directory for secrets")
            values = self.secrets.values(job.owner, spec.secrets)
            spec = wrap_with_secrets(spec, write_secrets(*place, values), values)
        return Prepared(job.model_copy(update={"spec": spec}))

    def ended(self, backend: Backend, job: Job) -> None:
        """Take an ended job's secrets away."""
        if job.spec.secrets and job.is_submitted and backend.delivers_secrets:
            try:
                backend.remove_secrets(job)
            except Exception:
                log.warning("could not remove the secrets of job %s", job.id, exc_info=True)
        elif job.spec.secrets and job.is_submitted:
            place = _sandbox(backend, job)
            if place is not None:
                remove_delivered(*place)

    def _from_cache(self, job: Job, token: str, transport: Transport | None) -> Job | None:
        try:
            key = cache_key(job.spec, transport)
        except NotCacheable as why:
            self._note(job, "NOT_CACHED", f"not looked up in the cache: {why}")
            return None
        source = self.workflows.cached(key, job.owner, job.id)
        if source is not None:
            try:
                reuse_outputs(source, job, self.results_dir)
            except NotCacheable as why:
                self._note(job, "NOT_CACHED", f"job {source.id} cannot be reused: {why}")
            else:
                return self._served(job, source, token)
        self.workflows.set_cache_key(job.id, key)
        return None

    def _served(self, job: Job, source: Job, token: str) -> Job:
        now = utcnow()
        status = JobStatus(
            phase=Phase.COMPLETED,
            detail="CACHED",
            message=f"not run: the outputs of job {source.id} were reused",
            exit_code=source.exit_code,
            started=now,
            ended=now,
        )
        moved = self.move(
            job, Phase.COMPLETED, status, token=token, cached_from=source.id, **_RELEASED
        )
        if moved is None:  # cancelled meanwhile: give the claim back, nothing was made
            self.store.retry_later(job.id, now, "served from the cache", token=token)
            return self.store.get(job.id)
        log.info("job %s: outputs of job %s reused", job.id, source.id)
        return moved

    def _note(self, job: Job, detail: str, message: str) -> None:
        with contextlib.suppress(JobNotFoundError):
            self.store.note(job.id, job.phase, detail, message)
