"""Grid Engine (SGE, OGE, Son of Grid Engine 8.1): qsub of a script, one ``qstat -xml`` for
every job in the queue, ``qacct`` for jobs that left it without an exit-code file, qdel.

Dependencies, the error state and what ``afterok`` rests on: see ``sge_status``.

Slots are ``-pe`` (processes x cores), memory is per slot (``memory_resource``), and an
attribute ``sge.NAME`` is a resource request ``-l NAME=VALUE``, except the switches
``sge.hold`` (``-h``) and ``sge.notify`` (``-notify``).

Every submission carries jobbridge's mark at the end of its job name (``name.jb-ID``; a
member handed over alone also its index, ``name.jb-ID.7``), where ``qstat -xml`` and
``qacct -j`` both show it: ``locate`` reads the user's queue, then the accounting of jobs
ended since the search's start. What the job script prints outside the program goes to
``sge-JOB.err`` (``sge-JOB.TASK.err``) in the job's directory.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from jobbridge.backends.base import NativeDependency, Stream
from jobbridge.backends.batch.marks import Mark, add_located, marked_name
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.options import BatchOptions
from jobbridge.backends.batch.script import walltime_parts
from jobbridge.backends.batch.sge_records import (
    accounted_state,
    accounting_records,
    job_list,
    queued_state,
    said,
)
from jobbridge.backends.batch.sge_status import SgeStatus
from jobbridge.backends.batch.sge_tasks import TaskNumbers
from jobbridge.errors import BackendError
from jobbridge.job import Job
from jobbridge.spec import ArraySpec, JobSpec

__all__ = ["SgeBackend", "SgeOptions"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_RESOURCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GONE = "does not exist"

_FLAGS = {"hold": "-h", "notify": "-notify"}
"""``sge.*`` attributes that are qsub switches (true or false); all others are ``-l``."""


class SgeOptions(BatchOptions):
    sge_root: str | None = Field(
        None, description="SGE_ROOT for Grid Engine's commands (default: this process's)"
    )
    sge_cell: str | None = Field(
        None, description="SGE_CELL for Grid Engine's commands (default: this process's)"
    )
    user: str = Field(
        "$user",
        pattern=r"^(\$user|\*|[A-Za-z0-9_.-]+)$",
        description="whose jobs qstat lists: '$user' (whoever runs the commands), a name, '*'",
    )
    parallel_environment: str = Field(
        "smp",
        pattern=_NAME.pattern,
        description="parallel environment for several slots on one node ($pe_slots)",
    )
    multinode_parallel_environment: str | None = Field(
        None,
        pattern=_NAME.pattern,
        description="parallel environment for jobs across nodes; its allocation rule places"
        " the slots. Without one, jobs asking for more than one node are refused",
    )
    memory_resource: str = Field(
        "h_vmem",
        pattern=_RESOURCE.pattern,
        description="per-slot resource that carries a memory request. h_vmem is a limit Grid"
        " Engine enforces; mem_free or virtual_free only guide placement",
    )


class SgeBackend(SgeStatus):
    kind = "sge"
    scheduler = "sge"
    native_dependencies = True
    Options = SgeOptions
    options: SgeOptions
    # -- the script ---------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        if any(dependency.condition == "afternotok" for dependency in spec.depends_on):
            raise self.unsupported("depends_on", _NO_AFTERNOTOK)
        if spec.reservation is not None and not spec.reservation.isdigit():
            raise self.unsupported(
                "reservation", "Grid Engine takes the number of an advance reservation (qrsub)"
            )

    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        spec, resources = job.spec, job.spec.resources
        stem = "sge-$JOB_ID.$TASK_ID" if spec.array is not None else "sge-$JOB_ID"
        name = marked_name(job.name, self.mark(job, members), start=_no_leading_digit)
        lines = [f"-N {name}", f"-o {stem}.out", f"-e {stem}.err"]
        lines += ["-S /bin/bash", "-cwd"]
        if spec.inherit_environment:
            lines.append("-V")
        lines += self._slots(spec)
        taken: set[str] = set()
        if resources.memory is not None:
            per_slot = math.ceil(resources.memory / resources.cores / 2**20)
            lines.append(f"-l {self.options.memory_resource}={per_slot}M")
            taken.add(self.options.memory_resource)
        if resources.walltime is not None:
            days, hours, minutes, seconds = walltime_parts(resources.walltime.total_seconds())
            lines.append(f"-l h_rt={days * 24 + hours}:{minutes:02d}:{seconds:02d}")
            taken.add("h_rt")
        for switch, value in [
            ("-q", spec.queue),
            ("-A", spec.account),
            ("-P", spec.project),
            ("-ar", spec.reservation),
        ]:
            if value:
                lines.append(f"{switch} {self._value(_FIELDS[switch], value)}")
        if spec.array is not None:
            lines.append(f"-t {self._task_range(spec.array, members)}")
            if spec.array.max_concurrent and len(members) > 1:
                lines.append(f"-tc {spec.array.max_concurrent}")
        if dependencies:
            lines.append(f"-hold_jid {self._hold_list(dependencies)}")
        lines += self._attributes(spec, taken)
        return [f"#$ {line}" for line in lines]

    def _slots(self, spec: JobSpec) -> list[str]:
        resources = spec.resources
        if resources.gpus_per_process:
            raise self.unsupported(
                "resources.gpus_per_process",
                "Grid Engine has no standard GPU resource; request your site's with an"
                " attribute such as sge.gpu",
            )
        if resources.nodes > 1:
            environment = self.options.multinode_parallel_environment
            if environment is None:
                raise self.unsupported(
                    "resources.nodes",
                    "jobs across nodes need the multinode_parallel_environment option",
                )
            return [f"-pe {environment} {resources.cores}"]
        if resources.cores > 1:
            return [f"-pe {self.options.parallel_environment} {resources.cores}"]
        return []

    def _task_range(self, array: ArraySpec, members: Sequence[Job]) -> str:
        """The whole array, or the one member that jobbridge hands over alone (it does so to
        keep an array under its ``%N`` itself)."""
        tasks = TaskNumbers.of(array)
        if len(members) == len(array):
            return tasks.switch_value
        if len(members) == 1 and members[0].array_index is not None:
            task = tasks.task_ids()[members[0].array_index]
            return f"{task}-{task}:1"
        raise self.unsupported("array", "Grid Engine takes a whole array or one member")

    def _hold_list(self, dependencies: Sequence[NativeDependency]) -> str:
        if any(dependency.condition == "afternotok" for dependency in dependencies):
            raise self.unsupported("depends_on", _NO_AFTERNOTOK)
        # -hold_jid names whole jobs: a member's dependents wait for its whole array
        jobs = dict.fromkeys(dependency.native_id.split(".")[0] for dependency in dependencies)
        return self._value("depends_on", ",".join(jobs))

    def _attributes(self, spec: JobSpec, taken: set[str]) -> list[str]:
        lines = []
        for key, setting in sorted(spec.attributes_for("sge").items()):
            field = f"attributes.sge.{key}"
            if key in _FLAGS:
                if not isinstance(setting, bool):
                    raise self.unsupported(field, "is a switch: true or false")
                lines += [_FLAGS[key]] if setting else []
            elif not _RESOURCE.match(key):
                raise self.unsupported(field, "not a Grid Engine resource name")
            elif key in taken:
                raise self.unsupported(field, "the job's resources already set it")
            else:
                text = str(setting).upper() if isinstance(setting, bool) else setting
                lines.append(f"-l {key}={self._value(field, text)}")
        return lines

    def portable_variables(self, array: bool) -> dict[str, str]:
        variables = {
            "JOBBRIDGE_JOB_ID": '"$JOB_ID.$SGE_TASK_ID"' if array else '"$JOB_ID"',
            "JOBBRIDGE_SUBMIT_HOST": '"$SGE_O_HOST"',
            # a parallel job's hosts are in its PE_HOSTFILE, one per line with its slots
            "JOBBRIDGE_NODELIST": '"$(if [ -r "${PE_HOSTFILE:-}" ]; then'
            " cut -d ' ' -f 1 \"$PE_HOSTFILE\" | paste -s -d , -;"
            ' else echo "$HOSTNAME"; fi)"',
        }
        if array:
            variables["JOBBRIDGE_ARRAY_INDEX"] = '"$SGE_TASK_ID"'
        return variables

    def template_values(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> dict[str, Any]:
        values = super().template_values(job, members, dependencies)
        # Grid Engine reruns a job whose script exits 99, and keeps one that exits 100 in its
        # error state, where the jobs that wait for it (-hold_jid) stay held. So a failed job
        # exits 100: nothing that needs its success starts before jobbridge has read the exit
        # code its script recorded.
        values["failure_exit"] = 100
        if job.spec.array is not None:
            tasks = TaskNumbers.of(job.spec.array)
            values["index_table"] = tasks.table
            values["portable"]["JOBBRIDGE_ARRAY_INDEX"] = tasks.index_expression
        return values

    # -- commands -----------------------------------------------------------------------------

    def submit_command(self, script: str) -> list[str]:
        return ["qsub", "-terse", script]

    def parse_job_id(self, output: str) -> str:
        last = output.strip().splitlines()[-1].strip()
        job_id = last.split(".")[0]  # an array answers 12.1-10:1
        if not job_id.isdigit():
            raise ValueError(f"not a job id: {last!r}")
        return job_id

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        if not members:
            return []
        array = members[0].spec.array
        assert array is not None
        task_ids = TaskNumbers.of(array).task_ids()
        return [f"{native_id}.{task_ids[job.array_index or 0]}" for job in members]

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        # -r adds each job's predecessors: what tells a dependency hold from a user hold
        return ["qstat", "-xml", "-r", "-u", self.options.user]

    def parse_status(self, output: str) -> dict[str, NativeState]:
        states: dict[str, NativeState] = {}
        for ids, state in self.read_each(job_list(output), queued_state):
            states.update(dict.fromkeys(ids, state))
        return states

    def accounting_query(self, since: datetime) -> list[str]:
        """Every job that ended after ``since``: qacct reads its whole file for any query, so
        one pass bounded by end time costs less than one pass per job."""
        stamp = since.astimezone(UTC).strftime("%Y%m%d%H%M.%S")
        return ["qacct", "-E", "-b", stamp, "-j"]

    def parse_accounting(self, output: str) -> dict[str, NativeState]:
        # a rerun job has several records: the last counts
        return dict(self.read_each(accounting_records(output), accounted_state))

    # -- finding submissions by their mark ------------------------------------------------------

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # qstat has no filter on names: the user's jobs, sorted out by parse_located
        return self.status_command([])

    def parse_located(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for entry in self.readable(job_list(output)):
            name = entry.findtext("full_job_name") or entry.findtext("JB_name") or ""
            number = (entry.findtext("JB_job_number") or "").strip()
            if number.isdigit():
                add_located(found, Mark.ending(name), number)
        return found

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str] | None:
        """Jobs that ended since ``since`` (so all submitted since), only the user's if the
        options name the user (qacct does not know ``$user``)."""
        command = self.accounting_query(since)
        if self.options.user not in ("$user", "*"):
            command[1:1] = ["-o", self.options.user]
        return command

    def parse_located_accounting(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for fields in accounting_records(output):
            number = fields["jobnumber"]
            if number.isdigit():
                add_located(found, Mark.ending(fields.get("jobname", "")), number)
        return found

    def cancel_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qdel", *native_ids]

    def hold_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qhold", *native_ids]

    def release_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qrls", *native_ids]

    def cancel(self, job: Job) -> None:
        assert job.native_id is not None
        result = self._run(self.cancel_command([job.native_id]), check=False, idempotent=True)
        if result.returncode != 0 and _GONE not in result.stdout + result.stderr:
            raise BackendError(f"qdel {job.native_id} failed: {said(result)}")

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        """Where Grid Engine writes what the job script itself printed (``-o``/``-e``)."""
        if job.native_id is None:
            return None
        suffix = "out" if stream == "stdout" else "err"
        return posixpath.join(self.job_dir(job), f"sge-{job.native_id}.{suffix}")

    def status_environment(self) -> dict[str, str]:
        # qstat and qacct print, and qacct -b reads, times in the local time zone; not for
        # qsub, whose -V would hand TZ to the job
        return {"TZ": "UTC"}

    def command_environment(self) -> dict[str, str]:
        found = {
            "SGE_ROOT": self.options.sge_root or os.environ.get("SGE_ROOT"),
            "SGE_CELL": self.options.sge_cell or os.environ.get("SGE_CELL"),
        }
        return {name: value for name, value in found.items() if value}


_NO_AFTERNOTOK = (
    "Grid Engine releases a job's dependents as soon as it succeeds, so it cannot hold one"
    " until another fails"
)
_FIELDS = {"-q": "queue", "-A": "account", "-P": "project", "-ar": "reservation"}


def _no_leading_digit(readable: str) -> str:
    """Grid Engine refuses job names that start with a digit."""
    return f"job_{readable}" if readable[0].isdigit() else readable
