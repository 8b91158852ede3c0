"""Reading what jobs leave behind: their files, a window of one file, their output streams.

A job served from the cache shows the directory and output of the job that ran for it.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from jobbridge import staging
from jobbridge.backends.base import Backend, Stream
from jobbridge.errors import JobNotFoundError, JobStateError
from jobbridge.job import Job
from jobbridge.store import Store
from jobbridge.transport.base import Transport

__all__ = ["JobOutputs"]


class JobOutputs:
    """The engine's reading of job directories and outputs (a part of ``Engine``)."""

    store: Store

    def backend(self, name: str | None = None) -> Backend:
        """The backend called ``name`` (``Engine.backend``)."""
        raise NotImplementedError

    def get_results(
        self,
        job_id: str,
        download_dir: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        changed_only: bool = True,
    ) -> list[str]:
        """Copy the files of the job's directory into ``download_dir`` (gc3libs' semantics,
        see ``staging.get_results``); returns the relative paths copied."""
        transport, sandbox = self._sandbox(job_id)
        return staging.get_results(
            transport, sandbox, os.fspath(download_dir), overwrite=overwrite,
            changed_only=changed_only,
        )  # fmt: skip

    def peek(
        self,
        job_id: str,
        remote_file: str,
        local_file: str | BinaryIO,
        offset: int = 0,
        size: int | None = None,
    ) -> int:
        """Copy part of a file of the job's directory (a negative offset counts from its end)."""
        transport, sandbox = self._sandbox(job_id)
        return staging.peek(transport, sandbox, remote_file, local_file, offset, size)

    def free(self, job_id: str) -> None:
        """Remove the job's directory from the resource; refused while the job is active."""
        job = self.store.get(job_id)
        if job.phase.is_active:
            raise JobStateError(f"job {job_id} is {job.phase}; its directory is still in use")
        self.backend(job.backend).free(job)

    def _sandbox(self, job_id: str) -> tuple[Transport, str]:
        job = self._ran_as(self.store.get(job_id))
        if not job.is_submitted:
            raise JobStateError(f"job {job_id} has not been handed to its backend yet")
        return self.backend(job.backend).sandbox(job)

    def read_output(
        self, job_id: str, stream: Stream = "stdout", offset: int = 0, size: int | None = None
    ) -> bytes:
        job = self._ran_as(self.store.get(job_id))
        if not job.is_submitted:
            return b""
        return self.backend(job.backend).read_output(job, stream, offset, size)

    def _ran_as(self, job: Job) -> Job:
        """The job that ran for this one: the one whose outputs it reused, if it was served
        from the cache (whose directory and output are shown as its own)."""
        if job.cached_from is None:
            return job
        try:
            return self.store.get(job.cached_from)
        except JobNotFoundError:
            return job
