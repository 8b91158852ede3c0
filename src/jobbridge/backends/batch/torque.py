"""PBS/Torque: ``-t`` arrays with ``%N``, ``nodes=N:ppn=P``, one ``qstat -f -x -t`` (XML)
for all jobs per refresh; ended jobs stay visible as ``C`` for ``keep_completed``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import Field

from jobbridge.backends.batch.base import (
    BatchOptions,
    NativeState,
    epoch_or_none,
)
from jobbridge.backends.batch.pbs import COMMON_STATES, ArrayLayout, PbsFamily, member_indices
from jobbridge.backends.batch.pbs_records import (
    torque_jobs,
)
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.spec import ArraySpec, JobSpec

__all__ = ["TorqueBackend", "TorqueOptions"]

_MIB = 2**20


class TorqueOptions(BatchOptions):
    # qstat asks for all jobs at once, so the ids never need splitting into chunks
    max_ids_per_query: int = Field(1_000_000_000, ge=1)


class TorqueBackend(PbsFamily):
    """PBS/Torque (``-t`` arrays, ``nodes=N:ppn=P``, ``qstat -x`` XML)."""

    kind = "torque"
    scheduler = "torque"
    Options = TorqueOptions
    index_variable = "PBS_ARRAYID"
    array_option = "-t"
    exit_attribute = "exit_status"
    ended_letters = frozenset({"C"})
    exit_words: ClassVar[Mapping[int, str]] = {
        -1: "JOB_EXEC_FAIL1",
        -2: "JOB_EXEC_FAIL2",
        -3: "JOB_EXEC_RETRY",
        -4: "JOB_EXEC_INITABT",
        -5: "JOB_EXEC_INITRST",
        -6: "JOB_EXEC_INITRMG",
        -7: "JOB_EXEC_BADRESRT",
        -8: "JOB_EXEC_CMDFAIL",
        -9: "JOB_EXEC_STDOUTFAIL",
        -10: "JOB_EXEC_OVERLIMIT_MEM",
        -11: "JOB_EXEC_OVERLIMIT_WT",
        -12: "JOB_EXEC_OVERLIMIT_CPUT",
        -13: "JOB_EXEC_RETRY_CGROUP",
        -14: "JOB_EXEC_RETRY_PROLOGUE",
    }
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        **COMMON_STATES,
        "C": (Phase.COMPLETED, None),  # completed: the exit status tells how
        **{word: (Phase.ERROR, word) for word in exit_words.values()},
        "JOB_EXEC_OVERLIMIT_WT": (Phase.ERROR, "TIMEOUT"),
        "JOB_EXEC_OVERLIMIT_MEM": (Phase.ERROR, "OUT_OF_MEMORY"),
        "JOB_EXEC_OVERLIMIT_CPUT": (Phase.ERROR, "CPU_TIME_LIMIT"),
    }

    def resource_lines(self, spec: JobSpec) -> list[str]:
        resources = spec.resources
        nodes = (
            f"nodes={resources.nodes}"
            f":ppn={resources.processes_per_node * resources.cores_per_process}"
        )
        if resources.gpus_per_process:
            nodes += f":gpus={resources.gpus_per_process * resources.processes_per_node}"
        lines = [f"-l {nodes}"]
        if resources.memory is not None:
            lines.append(f"-l mem={math.ceil(resources.memory / _MIB)}mb")
        return lines

    def output_lines(self, layout: ArrayLayout | None) -> list[str]:
        # Torque names each array member's files itself (NAME.oSEQ-INDEX in the job
        # directory, where qsub runs); one given path would be shared by all members
        return [] if layout is not None else super().output_lines(layout)

    def placement_lines(self, spec: JobSpec) -> list[str]:
        lines = []
        if spec.queue:
            lines.append(f"-q {self._value('queue', spec.queue)}")
        if spec.reservation:
            # Torque has no reservations of its own; Moab's are requested this way
            lines.append(f"-l advres={self._value('reservation', spec.reservation)}")
        if spec.project and spec.account and spec.project != spec.account:
            raise self.unsupported("project", "Torque has accounts only; give one of the two")
        account = spec.account or spec.project
        if account:
            lines.append(f"-A {self._value('account', account)}")
        return lines

    def array_layout(self, spec: JobSpec, members: Sequence[Job]) -> ArrayLayout | None:
        if spec.array is None:
            return None
        indices = member_indices(members)
        cap = spec.array.max_concurrent if len(indices) > 1 else None
        request = str(ArraySpec(tuple(indices), cap))
        return ArrayLayout(request, {index: index for index in indices})

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        # all jobs, in one server request: with ids, qstat asks the server once per id
        return ["qstat", "-f", "-x", "-t"]

    def parse_status(self, output: str) -> dict[str, NativeState]:
        states = {}
        for job in torque_jobs(output):
            states[job["Job_Id"]] = self.native_state(
                str(job.get("job_state", "")),
                job,
                epoch_or_none(str(job.get("start_time", ""))),
                epoch_or_none(str(job.get("comp_time", ""))),
            )
        return states
