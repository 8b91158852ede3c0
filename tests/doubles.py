"""A backend test double for the engine's own logic: it runs nothing and answers with
whatever phase a test sets, while counting the calls it gets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.errors import BackendError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase


@dataclass
class FakeCluster:
    """State that outlives one backend object, as a real scheduler outlives jobbridge."""

    phases: dict[str, JobStatus] = field(default_factory=dict)
    by_job: dict[str, str] = field(default_factory=dict)
    submit_calls: int = 0
    array_calls: int = 0
    status_calls: int = 0
    cancelled: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)
    dependencies: dict[str, list[NativeDependency]] = field(default_factory=dict)
    fail_status: int = 0
    fail_submit: Exception | None = None
    fail_after_submit: Exception | None = None
    """Raised after the job was created: a submission whose answer got lost."""
    vanished: set[str] = field(default_factory=set)
    """Native ids that every source of the backend has forgotten."""
    extra: dict[str, list[str]] = field(default_factory=dict)
    """More native jobs carrying a jobbridge id's mark (duplicates)."""
    fail_locate: bool = False
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def set(self, job: Job, phase: Phase, **fields: object) -> None:
        assert job.native_id is not None, f"job {job.id} was not submitted"
        self.phases[job.native_id] = JobStatus(phase=phase, **fields)  # type: ignore[arg-type]


class FakeBackend(Backend):
    kind = "fake"
    native_arrays: ClassVar[bool] = False

    def __init__(
        self,
        cluster: FakeCluster,
        name: str = "fake",
        options: BackendOptions | None = None,
        *,
        native_arrays: bool = False,
        native_dependencies: bool = False,
    ) -> None:
        super().__init__(
            name,
            options or BackendOptions(min_refresh_interval=0),
            BackendContext(Path("/nonexistent")),
        )
        self.cluster = cluster
        self.native_arrays = native_arrays  # type: ignore[misc]
        self.native_dependencies = native_dependencies  # type: ignore[misc]
        self.on_submit: list[object] = []

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        self.cluster.submit_calls += 1
        self.cluster.dependencies[job.id] = list(dependencies)
        for callback in self.on_submit:
            callback(job)  # type: ignore[operator]
        if self.cluster.fail_submit is not None:
            raise self.cluster.fail_submit
        native = str(next(self.cluster.counter))
        self.cluster.phases[native] = JobStatus(phase=Phase.QUEUED)
        self.cluster.by_job[job.id] = native
        if self.cluster.fail_after_submit is not None:
            raise self.cluster.fail_after_submit
        return native

    def submit_array(
        self, jobs: Sequence[Job], dependencies: Sequence[NativeDependency] = ()
    ) -> list[str]:
        self.cluster.array_calls += 1
        base = next(self.cluster.counter)
        natives = [f"{base}_{job.array_index}" for job in jobs]
        for job, native in zip(jobs, natives, strict=True):
            self.cluster.phases[native] = JobStatus(phase=Phase.QUEUED)
            self.cluster.by_job[job.id] = native
        return natives

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        self.cluster.status_calls += 1
        if self.cluster.fail_status > 0:
            self.cluster.fail_status -= 1
            raise BackendError("squeue: slurm_load_jobs error: Socket timed out", retryable=True)
        answers: dict[str, JobStatus | Missing] = {}
        for job in jobs:
            if job.native_id in self.cluster.vanished:
                answers[job.id] = Missing("nobody knows it")
            elif job.native_id in self.cluster.phases:
                answers[job.id] = self.cluster.phases[job.native_id]
        return answers

    def cancel(self, job: Job) -> None:
        assert job.native_id is not None
        self.cluster.cancelled.append(job.native_id)
        self.cluster.phases[job.native_id] = JobStatus(phase=Phase.ABORTED, detail="CANCELLED")

    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        return f"{stream} of {job.native_id}".encode()[offset:][:size]

    def locate(self, jobs: Sequence[Job]) -> Located:
        if self.cluster.fail_locate:
            raise BackendError("squeue: cannot reach the controller", retryable=True)
        found = {}
        for job in jobs:
            natives = [self.cluster.by_job[job.id]] if job.id in self.cluster.by_job else []
            natives += self.cluster.extra.get(job.id, [])
            if natives:
                found[job.id] = natives
        return Located(found, complete=True)

    def free(self, job: Job) -> None:
        self.cluster.freed.append(job.id)
