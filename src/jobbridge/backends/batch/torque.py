"""PBS/Torque: ``-t`` arrays with ``%N``, ``nodes=N:ppn=P``, one ``qstat -f -x -t`` (XML)
for all jobs per refresh; ended jobs stay visible as ``C`` for ``keep_completed``, which
``qstat -B -f`` shows. A member handed over alone goes as a plain job, as on PBS Pro."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from jobbridge.backends.base import Stream
from jobbridge.backends.batch.native import epoch_or_none
from jobbridge.backends.batch.options import BatchOptions
from jobbridge.backends.batch.pbs_family import ArrayLayout, PbsFamily, member_indices
from jobbridge.backends.batch.pbs_records import Record, torque_jobs
from jobbridge.backends.batch.pbs_states import COMMON_EXIT_WORDS, COMMON_STATES
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.spec import ArraySpec, JobSpec

__all__ = ["TorqueBackend", "TorqueOptions"]

_MIB = 2**20
_KEEP_COMPLETED = re.compile(r"^\s*keep_completed\s*=\s*(\d+)\s*$", re.MULTILINE)


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
        **COMMON_EXIT_WORDS,
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
        if layout is not None and layout.request is not None:
            return []
        return super().output_lines(layout)

    def member_output_name(self, job: Job, sequence: str, index: str, stream: Stream) -> str:
        letter = "o" if stream == "stdout" else "e"
        return f"{self.whole_array_name(job)}.{letter}{sequence}-{index}"

    def placement_lines(self, spec: JobSpec) -> list[str]:
        lines = []
        if spec.queue:
            lines.append(f"-q {self._value('queue', spec.queue)}")
        if spec.reservation:
            # Torque has no reservations of its own; Moab's are requested this way
            lines.append(f"-l advres={self._value('reservation', spec.reservation)}")
        account = self.charged_to(spec, "account")
        if account:
            lines.append(f"-A {account}")
        return lines

    def array_layout(self, spec: JobSpec, members: Sequence[Job]) -> ArrayLayout | None:
        if spec.array is None:
            return None
        indices = member_indices(members)
        if len(indices) == 1:  # a plain job, whose script knows its index
            return ArrayLayout(None, {indices[0]: indices[0]})
        request = str(ArraySpec(tuple(indices), spec.array.max_concurrent))
        return ArrayLayout(request, {index: index for index in indices})

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        # all jobs, in one server request: with ids, qstat asks the server once per id
        return ["qstat", "-f", "-x", "-t"]

    def times(self, attributes: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
        started = epoch_or_none(str(attributes.get("start_time", "")))
        return started, epoch_or_none(str(attributes.get("comp_time", "")))

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # every job the server shows, completed ones for keep_completed; arrays as one job
        # each (no -t); parse_located keeps the tags asked for
        return ["qstat", "-f", "-x"]

    def job_records(self, output: str) -> Iterable[Record]:
        return torque_jobs(output)

    def submitted_name(self, attributes: Mapping[str, Any]) -> str:
        # an array's member is named NAME-INDEX after its array
        name = super().submitted_name(attributes)
        index = str(attributes.get("job_array_id", "")).strip()
        return name.removesuffix(f"-{index}") if index else name

    def server_command(self) -> list[str]:
        return ["qstat", "-B", "-f"]

    def history_kept(self, output: str) -> float:
        """``keep_completed`` (none unless set); Torque prints ``-B -f`` as text only."""
        if "Server:" not in output:
            raise ValueError("no server in the answer")
        kept = _KEEP_COMPLETED.findall(output)
        return float(min(int(seconds) for seconds in kept)) if kept else 0.0
