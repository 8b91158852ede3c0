"""PBS Professional and OpenPBS: ``-J`` arrays, ``select`` chunks, one ``qstat -f -F json -x``
for queued, running and finished jobs, and a server whose job history may be off (see
``pbs_family`` for what the PBS flavours share)."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.pbs_family import JOB_ID, ArrayLayout, PbsFamily, member_indices
from jobbridge.backends.batch.pbs_records import (
    Record,
    int_or_none,
    pbs_time,
    pbspro_document,
    pbspro_jobs,
)
from jobbridge.backends.batch.pbs_states import COMMON_EXIT_WORDS, COMMON_STATES
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.transport.base import CommandResult

__all__ = ["PbsProBackend"]

_PROJECT_FORBIDDEN = re.compile(r'[/\[\]";:|<>+,?*]')
_MIB = 2**20
_SUBSTATE_TERMINATED = 91  # PBS Pro's substate of a deleted job (job.h)
_TRUE = ("true", "1", "y", "yes")
_DEFAULT_HISTORY = 14 * 86400.0
"""PBS Pro keeps finished jobs this long when job_history_duration is not set."""
_NO_HISTORY = "not configured to maintain job history"
"""What qstat says when the server rejects a -x request (PBSE_JOBHISTNOTSET)."""


class PbsProBackend(PbsFamily):
    """PBS Professional and OpenPBS (``-J`` arrays, ``select`` chunks, ``qstat -F json``)."""

    kind = "pbspro"
    scheduler = "pbspro"
    index_variable = "PBS_ARRAY_INDEX"
    array_option = "-J"
    exit_attribute = "Exit_status"
    ended_letters = frozenset({"F", "X"})
    exit_words: ClassVar[Mapping[int, str]] = {
        **COMMON_EXIT_WORDS,
        -10: "JOB_EXEC_FAILUID",
        -11: "JOB_EXEC_RERUN",
        -12: "JOB_EXEC_CHKP",
        -13: "JOB_EXEC_FAIL_PASSWORD",
        -14: "JOB_EXEC_RERUN_SIS_FAIL",
        -15: "JOB_EXEC_QUERST",
        -16: "JOB_EXEC_FAILHOOK_RERUN",
        -17: "JOB_EXEC_FAILHOOK_DELETE",
        -18: "JOB_EXEC_HOOK_RERUN",
        -19: "JOB_EXEC_HOOK_DELETE",
        -20: "JOB_EXEC_RERUN_MS_FAIL",
        -21: "JOB_EXEC_FAIL_SECURITY",
        -22: "JOB_EXEC_HOOKERROR",
        -23: "JOB_EXEC_FAIL_KRB5",
        -24: "JOB_EXEC_KILL_NCPUS_BURST",
        -25: "JOB_EXEC_KILL_NCPUS_SUM",
        -26: "JOB_EXEC_KILL_VMEM",
        -27: "JOB_EXEC_KILL_MEM",
        -28: "JOB_EXEC_KILL_CPUT",
        -29: "JOB_EXEC_KILL_WALLTIME",
        -30: "JOB_EXEC_JOINJOB",
    }
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        **COMMON_STATES,
        "B": (Phase.EXECUTING, None),  # an array some of whose members have started
        "U": (Phase.SUSPENDED, None),  # cycle harvesting: the workstation's owner is back
        "M": (Phase.UNKNOWN, "MOVED"),  # moved to another server, which this one cannot see
        "F": (Phase.COMPLETED, None),  # finished: the exit status tells how
        "X": (Phase.COMPLETED, None),  # a finished member of an array
        **{word: (Phase.ERROR, word) for word in exit_words.values()},
        "JOB_EXEC_KILL_WALLTIME": (Phase.ERROR, "TIMEOUT"),
        "JOB_EXEC_KILL_MEM": (Phase.ERROR, "OUT_OF_MEMORY"),
        "JOB_EXEC_KILL_VMEM": (Phase.ERROR, "OUT_OF_MEMORY"),
        "JOB_EXEC_KILL_CPUT": (Phase.ERROR, "CPU_TIME_LIMIT"),
        "JOB_EXEC_KILL_NCPUS_SUM": (Phase.ERROR, "CPU_LIMIT"),
        "JOB_EXEC_KILL_NCPUS_BURST": (Phase.ERROR, "CPU_LIMIT"),
        "JOB_EXEC_RERUN_MS_FAIL": (Phase.ERROR, "NODE_FAIL"),
        "JOB_EXEC_RERUN_SIS_FAIL": (Phase.ERROR, "NODE_FAIL"),
    }

    def resource_lines(self, spec: JobSpec) -> list[str]:
        resources = spec.resources
        chunk = [
            f"{resources.nodes}",
            f"ncpus={resources.processes_per_node * resources.cores_per_process}",
            f"mpiprocs={resources.processes_per_node}",
        ]
        if resources.gpus_per_process:
            chunk.append(f"ngpus={resources.gpus_per_process * resources.processes_per_node}")
        if resources.memory is not None:
            chunk.append(f"mem={math.ceil(resources.memory / resources.nodes / _MIB)}mb")
        lines = [f"-l select={':'.join(chunk)}"]
        if resources.nodes > 1:
            lines.append("-l place=scatter")
        return lines

    def output_lines(self, layout: ArrayLayout | None) -> list[str]:
        if layout is None or layout.request is None:
            return super().output_lines(layout)
        # PBS puts each member's index where this tag stands
        return ["-o pbs.^array_index^.out", "-e pbs.^array_index^.err"]

    def placement_lines(self, spec: JobSpec) -> list[str]:
        if spec.queue and spec.reservation:
            raise self.unsupported(
                "reservation", "on PBS Pro a reservation is a queue; give a queue or a reservation"
            )
        lines = []
        destination = spec.reservation or spec.queue
        if destination:
            lines.append(f"-q {self._value('queue', destination)}")
        if spec.account:
            lines.append(f"-A {self._value('account', spec.account)}")
        if spec.project:
            if _PROJECT_FORBIDDEN.search(spec.project):
                raise self.unsupported("project", f"{spec.project!r} has characters PBS refuses")
            lines.append(f"-P {self._value('project', spec.project)}")
        return lines

    def array_layout(self, spec: JobSpec, members: Sequence[Job]) -> ArrayLayout | None:
        if spec.array is None:
            return None
        indices = member_indices(members)
        if len(indices) == 1:
            return ArrayLayout(None, {indices[0]: indices[0]})
        cap = f"%{spec.array.max_concurrent}" if spec.array.max_concurrent else ""
        step = indices[1] - indices[0]
        if all(later - earlier == step for earlier, later in itertools.pairwise(indices)):
            stride = f":{step}" if step > 1 else ""
            request = f"{indices[0]}-{indices[-1]}{stride}{cap}"
            return ArrayLayout(request, {index: index for index in indices})
        request = f"0-{len(indices) - 1}{cap}"
        positions = {index: position for position, index in enumerate(indices)}
        return ArrayLayout(request, positions, tuple(indices))

    def dependency_list(self, dependencies: Sequence[NativeDependency]) -> str:
        for dependency in dependencies:
            match = JOB_ID.match(dependency.native_id)
            if match and match["array"] not in (None, "[]"):
                raise self.unsupported(
                    "depends_on", "PBS Pro cannot make a job wait for one member of an array"
                )
        return super().dependency_list(dependencies)

    _history: bool = True
    """Whether the server keeps job history, until it says it does not."""

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        # -E: one server request for all ids, not one each
        return ["qstat", "-f", "-F", "json", *self._history_flag(), "-t", "-E", *native_ids]

    def _history_flag(self) -> list[str]:
        """``-x`` where the server keeps job history; without it, it rejects the request."""
        return ["-x"] if self._history else []

    def status_environment(self) -> dict[str, str]:
        # qstat prints times in its own time zone, which over SSH is the login node's
        return {"TZ": "UTC"}

    def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        idempotent: bool = False,
    ) -> CommandResult:
        """A server without job history rejects a whole ``qstat -x`` (saying so on stderr,
        with exit status 0): the query is asked again without ``-x``, as are later ones."""
        result = super()._run(argv, cwd=cwd, env=env, check=check, idempotent=idempotent)
        if argv[0] == "qstat" and "-x" in argv and _NO_HISTORY in result.stderr:
            self._history = False
            again = [word for word in argv if word != "-x"]
            return super()._run(again, cwd=cwd, env=env, check=check, idempotent=idempotent)
        return result

    def times(self, attributes: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
        ended = attributes.get("obittime") or attributes.get("mtime")
        return pbs_time(attributes.get("stime")), pbs_time(ended)

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # -f takes no -u: every job the server shows, finished ones included (-x), arrays
        # as one job each (no -t); parse_located keeps the tags asked for
        return ["qstat", "-f", "-F", "json", *self._history_flag()]

    def job_records(self, output: str) -> Iterable[Record]:
        return pbspro_jobs(output)

    def server_command(self) -> list[str]:
        return ["qstat", "-B", "-f", "-F", "json"]

    def history_kept(self, output: str) -> float:
        """``job_history_enable`` (off unless set) and ``job_history_duration`` (two weeks
        unless set) of the server."""
        servers = pbspro_document(output).get("Server")
        if not isinstance(servers, dict) or not servers:
            raise ValueError("no server in the answer")
        kept = []
        for attributes in servers.values():
            if not isinstance(attributes, dict):
                raise ValueError("server attributes are no JSON object")
            enabled = str(attributes.get("job_history_enable", "")).lower() in _TRUE
            duration = attributes.get("job_history_duration")
            if not enabled:
                kept.append(0.0)
            else:
                kept.append(_seconds(str(duration)) if duration else _DEFAULT_HISTORY)
        return min(kept)

    def deleted_for_dependency(self, attributes: Mapping[str, Any]) -> bool:
        # PBS deletes a queued job whose dependency can never be met; one that never ran and
        # still names its dependencies went that way (a qdel'ed one is already ABORTED)
        return bool(attributes.get("depend")) or super().deleted_for_dependency(attributes)

    def was_deleted(self, attributes: Mapping[str, Any]) -> bool:
        return int_or_none(attributes.get("substate")) == _SUBSTATE_TERMINATED


def _seconds(text: str) -> float:
    """A PBS duration, ``[[HH:]MM:]SS``."""
    total = 0.0
    for part in text.strip().split(":"):
        total = total * 60 + float(part)
    return total
