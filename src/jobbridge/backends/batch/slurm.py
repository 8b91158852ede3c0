"""SLURM: sbatch, squeue for active jobs, sacct for ended ones (scontrol where accounting is
off), scancel.

Every submission's job name ends with jobbridge's mark (``name.jb-ID``; a member handed over
alone, as a one-task array keeping its index, also with that index: ``name.jb-ID.7``), which
squeue and sacct both show: ``locate`` lists the user's jobs in the queue, then those in the
accounting submitted since the search's start.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar

from jobbridge.backends.base import BackendContext, BackendOptions, NativeDependency, Stream
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.marks import Mark, add_located, marked_name, split_located
from jobbridge.backends.batch.native import NativeState, epoch_or_none
from jobbridge.backends.batch.script import walltime_parts
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import ArraySpec
from jobbridge.transport.base import CommandResult

__all__ = ["SlurmBackend"]

_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9-]*$")
_HELD_REASONS = {"JobHeldUser", "JobHeldAdmin", "held"}
_STATUS_FORMAT = "--format=%i|%T|%r|%S|%e"


class SlurmBackend(BatchBackend):
    kind = "slurm"
    scheduler = "slurm"
    native_dependencies = True
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        "PENDING": (Phase.QUEUED, None),
        "CONFIGURING": (Phase.QUEUED, None),
        "REQUEUED": (Phase.QUEUED, None),
        "REQUEUE_FED": (Phase.QUEUED, None),
        "RESV_DEL_HOLD": (Phase.HELD, None),
        "REQUEUE_HOLD": (Phase.HELD, None),
        "RUNNING": (Phase.EXECUTING, None),
        "COMPLETING": (Phase.EXECUTING, None),
        "SIGNALING": (Phase.EXECUTING, None),
        "STAGE_OUT": (Phase.EXECUTING, None),
        "RESIZING": (Phase.EXECUTING, None),
        "SUSPENDED": (Phase.SUSPENDED, None),
        "STOPPED": (Phase.SUSPENDED, None),
        "COMPLETED": (Phase.COMPLETED, None),
        "FAILED": (Phase.ERROR, None),
        "CANCELLED": (Phase.ABORTED, "CANCELLED"),
        "TIMEOUT": (Phase.ERROR, "TIMEOUT"),
        "OUT_OF_MEMORY": (Phase.ERROR, "OUT_OF_MEMORY"),
        "NODE_FAIL": (Phase.ERROR, "NODE_FAIL"),
        "PREEMPTED": (Phase.ERROR, "PREEMPTED"),
        "DEADLINE": (Phase.ERROR, "DEADLINE"),
        "BOOT_FAIL": (Phase.ERROR, "BOOT_FAIL"),
        "REVOKED": (Phase.ABORTED, "REVOKED"),
        "SPECIAL_EXIT": (Phase.HELD, "SPECIAL_EXIT"),
    }
    REQUEUEABLE = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REQUEUED"})
    TRANSIENT_SUBMIT = (
        "Unable to contact slurm controller",
        "temporarily unable to accept job",
        "Transport endpoint is not connected",
        "Connection refused",
    )
    AMBIGUOUS_SUBMIT = (
        "Socket timed out on send/recv operation",
        "Zero Bytes were transmitted or received",
    )

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self._described: dict[str, NativeState] = {}

    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        spec, resources = job.spec, job.spec.resources
        array = spec.array is not None
        lines = [
            f"--job-name={marked_name(job.name, self.mark(job, members))}",
            f"--output=slurm-{'%A_%a' if array else '%j'}.out",
            f"--error=slurm-{'%A_%a' if array else '%j'}.err",
            f"--nodes={resources.nodes}",
            f"--ntasks-per-node={resources.processes_per_node}",
            f"--cpus-per-task={resources.cores_per_process}",
            f"--export={'ALL' if spec.inherit_environment else 'NONE'}",
        ]
        if resources.gpus_per_process:
            lines.append(f"--gpus-per-task={resources.gpus_per_process}")
        if resources.memory is not None:
            per_node = math.ceil(resources.memory / resources.nodes / 2**20)
            lines.append(f"--mem={per_node}M")
        if resources.walltime is not None:
            days, hours, minutes, seconds = walltime_parts(resources.walltime.total_seconds())
            lines.append(f"--time={days}-{hours:02d}:{minutes:02d}:{seconds:02d}")
        if spec.queue:
            lines.append(f"--partition={self._value('queue', spec.queue)}")
        account = self.charged_to(spec, "account")
        if account:
            lines.append(f"--account={account}")
        if spec.reservation:
            lines.append(f"--reservation={self._value('reservation', spec.reservation)}")
        if spec.array is not None:
            lines.append(f"--array={_array_line(spec.array, members)}")
        if dependencies:
            terms = ",".join(f"{d.condition}:{d.native_id}" for d in dependencies)
            lines.append(f"--dependency={terms}")
        for key, setting in sorted(spec.attributes_for("slurm").items()):
            if not _ATTRIBUTE.match(key):
                raise self.unsupported(f"attributes.slurm.{key}", "not an sbatch option name")
            if setting is True:
                lines.append(f"--{key}")
            elif setting is not False:
                lines.append(f"--{key}={self._value(f'attributes.slurm.{key}', setting)}")
        return [f"#SBATCH {line}" for line in lines]

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # The mark ends the name: list this user's jobs; locate() keeps the tags it asked for.
        return ["squeue", "--me", "--noheader", "--states=all", "--format=%F|%j"]

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str]:
        if not self.options.accounting:
            return ["scontrol", "--oneliner", "show", "job"]
        # JobID, not JobIDRaw: an array's task shows its array's id (12_3), not its own
        return [
            "sacct", "--noheader", "--parsable2", "--allocations", "--duplicates",
            "--format=JobID,JobName",
            f"--starttime={since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S')}",
        ]  # fmt: skip

    def parse_located(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in output.splitlines():
            job_id, _, name = line.strip().partition("|")
            native_id = job_id.partition("_")[0]  # an array's id, for its tasks
            if native_id.isdigit():
                add_located(found, Mark.ending(name), native_id)
        return {tag: sorted(ids, key=_submission_order) for tag, ids in found.items()}

    def parse_located_accounting(self, output: str) -> dict[str, list[str]]:
        if "JobId=" not in output:
            return self.parse_located(output)
        lines = []
        for line in output.splitlines():  # scontrol, where accounting is off
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            native_id = fields.get("ArrayJobId") or fields.get("JobId", "")
            lines.append(f"{native_id}|{fields.get('JobName', '')}")
        return self.parse_located("\n".join(lines))

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        if job.native_id is None:
            return None
        word = "out" if stream == "stdout" else "err"
        array, _, index = job.native_id.partition("_")
        name = f"slurm-{array}_{index}.{word}" if index else f"slurm-{array}.{word}"
        return posixpath.join(self.job_dir(job), name)

    def portable_variables(self, array: bool) -> dict[str, str]:
        variables = {
            "JOBBRIDGE_JOB_ID": '"$SLURM_JOB_ID"',
            "JOBBRIDGE_SUBMIT_HOST": '"$SLURM_SUBMIT_HOST"',
            "JOBBRIDGE_NODELIST": '"$SLURM_JOB_NODELIST"',
        }
        if array:
            variables["JOBBRIDGE_ARRAY_INDEX"] = '"$SLURM_ARRAY_TASK_ID"'
        return variables

    def submit_command(self, script: str) -> list[str]:
        return ["sbatch", "--parsable", script]

    def parse_job_id(self, output: str) -> str:
        first = output.strip().splitlines()[-1]
        job_id = first.split(";")[0].strip()
        if not job_id.isdigit():
            raise ValueError(f"not a job id: {first!r}")
        return job_id

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        return [f"{native_id}_{job.array_index}" for job in members]

    def query_ids(self, native_ids: Sequence[str]) -> list[str]:
        # Pending members of an array are not found by their own ids; their array is.
        return list(dict.fromkeys(native.partition("_")[0] for native in native_ids))

    def status_environment(self) -> dict[str, str]:
        return {"SLURM_TIME_FORMAT": "%s"}

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        return [
            "squeue", "--noheader", "--array", "--states=all", _STATUS_FORMAT,
            f"--jobs={','.join(native_ids)}",
        ]  # fmt: skip

    def status_listing_command(self) -> list[str]:
        return ["squeue", "--me", "--noheader", "--array", "--states=all", _STATUS_FORMAT]

    def parse_status(self, output: str) -> dict[str, NativeState]:
        states = {}
        lines = output.splitlines()
        if len(self._described) > 2 * len(lines) + 1000:
            self._described.clear()  # descriptions of jobs gone from the queue
        described = self._described
        for line in lines:
            text = line.strip()
            if not text:
                continue
            job_id, _, description = text.partition("|")
            try:
                state = described.get(description) or self._describe(description)
                if "[" in job_id:
                    states.update(dict.fromkeys(_expand(job_id), state))
                else:
                    states[job_id] = state
            except ValueError:
                self.warn_once(line[:40], f"squeue line unreadable, its job has no news: {line!r}")
        return states

    def _describe(self, description: str) -> NativeState:
        """One squeue line after its job id, read once while the queue shows it: many jobs
        share their state, and a job's state rarely changes between two queries."""
        word, reason, start, end = description.split("|")
        state = NativeState(
            word=word,
            reason=None if reason in ("None", "") else reason,
            started=epoch_or_none(start),
            ended=epoch_or_none(end),
        )
        self._described[description] = state
        return state

    def empty_answer_is_fine(self, result: CommandResult) -> bool:
        return "Invalid job id" in result.stderr

    def accounting_command(self, native_ids: Sequence[str]) -> list[str]:
        if not self.options.accounting:
            return ["scontrol", "--oneliner", "show", "job"]
        return [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--format=JobID,State,ExitCode,Start,End",
            f"--jobs={','.join(native_ids)}",
        ]

    def parse_accounting(self, output: str) -> dict[str, NativeState]:
        if "JobId=" in output:
            return _parse_scontrol(output)
        states = {}
        for line in output.splitlines():
            if not line.strip():
                continue
            try:
                job_id, state, exit_code, start, end = line.strip().split("|")
                native = NativeState(
                    word=state.split()[0],
                    exit_code=_exit_code(exit_code),
                    started=epoch_or_none(start),
                    ended=epoch_or_none(end),
                )
                states.update(dict.fromkeys(_expand(job_id), native))
            except (ValueError, IndexError):
                self.warn_once(line[:40], f"sacct line unreadable, its job has no news: {line!r}")
        return states

    def cancel_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["scancel", *native_ids]

    def hold_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["scontrol", "hold", ",".join(native_ids)]

    def release_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["scontrol", "release", ",".join(native_ids)]

    def to_status(self, state: NativeState) -> JobStatus:
        if state.word == "PENDING" and state.reason in _HELD_REASONS:
            return JobStatus(phase=Phase.HELD, detail=state.reason)
        if state.word == "PENDING" and state.reason == "DependencyNeverSatisfied":
            return JobStatus(
                phase=Phase.ABORTED,
                detail="DEPENDENCY_NEVER_SATISFIED",
                message="a job it depends on ended in a way the dependency excludes",
                stop_native=True,
            )
        return super().to_status(state)


def _array_line(array: ArraySpec, members: Sequence[Job]) -> str:
    """The whole array with its cap, or the members handed over without the rest."""
    if len(members) == len(array):
        return str(array)
    return str(ArraySpec(tuple(sorted(m.array_index or 0 for m in members))))


def _submission_order(located: str) -> tuple[int, int]:
    native, index = split_located(located)
    return int(native), -1 if index is None else index


def _expand(job_id: str) -> list[str]:
    """``12_[3-5,8]`` (pending array members, shown together) as ``12_3 12_4 12_5 12_8``."""
    if "[" not in job_id:
        return [job_id]
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    indices = ArraySpec.parse(match[2]).indices
    return [f"{match[1]}_{index}" for index in indices]


def _exit_code(text: str) -> int | None:
    code, _, signal = text.partition(":")
    if not code.isdigit():
        return None
    if signal.isdigit() and int(signal) > 0:
        return 128 + int(signal)
    return int(code)


def _parse_scontrol(output: str) -> dict[str, NativeState]:
    states = {}
    for line in output.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "JobId" not in fields:
            continue
        job_id = fields["JobId"]
        if fields.get("ArrayJobId") and fields.get("ArrayTaskId", "").isdigit():
            job_id = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        states[job_id] = NativeState(
            word=fields.get("JobState", "UNKNOWN"),
            reason=None if fields.get("Reason") in (None, "None") else fields["Reason"],
            exit_code=_exit_code(fields.get("ExitCode", "")),
            started=epoch_or_none(fields.get("StartTime", "")),
            ended=epoch_or_none(fields.get("EndTime", "")),
        )
    return states
