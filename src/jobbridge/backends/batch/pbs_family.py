"""The PBS family: PBS Professional (OpenPBS) and PBS/Torque: qsub, qstat, qdel, qhold, qrls.

Both descend from the same PBS and share ``#PBS`` directives, job ids (``123.server``; arrays
``123[].server`` with members ``123[7].server``), ``-W depend=afterok:ID:ID`` dependencies
(a job waiting for its parents sits in ``H`` with a system hold), and ``qhold``/``qrls``.

Where they differ:

- resources: PBS Pro asks for chunks, ``-l select=N:ncpus=C:mpiprocs=P:ngpus=G:mem=M``
  (``place=scatter`` puts the chunks on distinct hosts); Torque for nodes,
  ``-l nodes=N:ppn=C[:gpus=G]``, with ``-l mem=`` for the whole job.
- arrays: PBS Pro's ``-J X-Y[:Z][%N]`` takes one stepped range of at least two indices. Any
  other index set runs as PBS indices ``0..n-1`` that the script maps back to jobbridge's
  (a bash array lookup); a single index is submitted as a plain job. Torque's ``-t`` takes any
  list, with ``%N`` for the concurrency cap.
- reservations: on PBS Pro a reservation is a queue (``-q R123``), so it cannot be combined
  with another queue; Torque passes Moab's ``-l advres=NAME``.
- status: one command per refresh. PBS Pro: ``qstat -f -F json -x -t ID...``, where ``-x``
  adds finished jobs from the server's job history (when the site keeps one), so the same
  command tells about queued, running and ended jobs. Torque: ``qstat -f -x -t`` (``-x`` is
  XML there) for all jobs, in one server request; ended jobs show as ``C`` for the server's
  ``keep_completed`` seconds. Neither has an accounting command a client can run (tracejob
  reads the server's own logs): a job gone from ``qstat`` is resolved from the exit-code file
  its script wrote, or declared LOST after ``accounting_delay``.


``attributes`` with the ``pbs.`` prefix (both flavours): ``pbs.l.NAME`` adds ``-l NAME=VALUE``,
``pbs.W.NAME`` adds ``-W NAME=VALUE``, and ``pbs.a``, ``pbs.c``, ``pbs.h`` (true or false),
``pbs.j``, ``pbs.k``, ``pbs.m``, ``pbs.M``, ``pbs.p``, ``pbs.r`` add those qsub options.

Finding submissions: every job's name ends with jobbridge's mark (``name.jb-ID``; a member
handed over alone as a plain job also with its index, ``name.jb-ID.7``). ``locate`` lists
every job the server shows, finished ones included (``qstat -f -x``), and keeps those that
carry the tags asked for. Ended jobs are in that list only while the server keeps them (PBS
Pro's job history, Torque's ``keep_completed``): a second query of the server's settings
(``qstat -B -f``) tells whether they reach back far enough, and the search is incomplete if
not. What a job script prints outside the program goes to ``pbs.out``/``pbs.err`` in the
job's directory (an array's members: PBS Pro ``pbs.INDEX.out``, Torque its own
``NAME.oSEQ-INDEX``).
"""

from __future__ import annotations

import posixpath
import re
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from jobbridge.backends.base import Located, NativeDependency, Stream
from jobbridge.backends.batch.locating import LOCATE_SLACK
from jobbridge.backends.batch.marks import Mark, add_located, marked_name
from jobbridge.backends.batch.pbs_states import PbsStates
from jobbridge.backends.batch.script import walltime_parts
from jobbridge.errors import JobbridgeError, SubmissionError, SubmitOutcome
from jobbridge.job import Job
from jobbridge.spec import ArraySpec, JobSpec
from jobbridge.transport.base import CommandResult

__all__ = ["JOB_ID", "ArrayLayout", "PbsFamily", "member_indices"]

ATTRIBUTE_PREFIX = "pbs"
_RESOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VALUE_OPTIONS = frozenset("acjkmMpr")
JOB_ID = re.compile(r"^(?P<sequence>\d+)(?P<array>\[\d*\])?(?P<server>\.\S+)?$")
_SUFFIX = {"stdout": "out", "stderr": "err"}
_TRACES = re.compile(r"^(exitcode|stdout|stderr|pbs\.)|\.[oe]\d+(-\d+)?$")
"""Files that only a job script that ran leaves in its job directory."""


@dataclass(frozen=True)
class ArrayLayout:
    """How an array's members are numbered for the scheduler."""

    request: str | None
    """The ``-J``/``-t`` value; None when the members go as a plain job (one index)."""
    native: Mapping[int, int]
    """The scheduler's index for each of jobbridge's indices."""
    lookup: tuple[int, ...] | None = None
    """jobbridge's index at each scheduler index, when the script must map it."""


class PbsFamily(PbsStates):
    """What PBS Pro and Torque share; the flavours fill in resources, arrays and status."""

    native_dependencies = True
    index_variable: ClassVar[str]
    """The variable holding a member's index in the scheduler's numbering."""
    array_option: ClassVar[str]
    _history_needed: float = 0.0
    """Seconds back to the start of the latest search (see ``locate_accounting_command``)."""
    _history_short: bool = False
    """The latest search found that the server no longer shows jobs ended since its start."""

    # -- directives ------------------------------------------------------------------------

    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        spec = job.spec
        layout = self.array_layout(spec, members)
        lines = [
            f"-N {self.native_name(job, members)}",
            "-S /bin/bash",
            *self.output_lines(layout),
            *self.resource_lines(spec),
        ]
        if spec.resources.walltime is not None:
            days, hours, minutes, seconds = walltime_parts(spec.resources.walltime.total_seconds())
            lines.append(f"-l walltime={days * 24 + hours:02d}:{minutes:02d}:{seconds:02d}")
        lines += self.placement_lines(spec)
        if layout is not None and layout.request is not None:
            lines.append(f"{self.array_option} {layout.request}")
        if dependencies:
            lines.append(f"-W depend={self.dependency_list(dependencies)}")
        if spec.inherit_environment:
            lines.append("-V")
        lines += self._attribute_lines(spec)
        return [f"#PBS {line}" for line in lines]

    def native_name(self, job: Job, members: Sequence[Job]) -> str:
        """The readable name, shortened, then the submission's mark."""
        return marked_name(job.name, self.mark(job, members), start=_letter_first)

    def output_lines(self, layout: ArrayLayout | None) -> list[str]:
        return ["-o pbs.out", "-e pbs.err"]

    @abstractmethod
    def resource_lines(self, spec: JobSpec) -> list[str]: ...

    @abstractmethod
    def placement_lines(self, spec: JobSpec) -> list[str]:
        """Queue, reservation, account and project."""

    @abstractmethod
    def array_layout(self, spec: JobSpec, members: Sequence[Job]) -> ArrayLayout | None:
        """None for a job that is no array."""

    def dependency_list(self, dependencies: Sequence[NativeDependency]) -> str:
        by_condition: dict[str, list[str]] = {}
        for dependency in dependencies:
            if not JOB_ID.match(dependency.native_id):
                raise self.unsupported("depends_on", f"{dependency.native_id!r} is no PBS job id")
            by_condition.setdefault(dependency.condition, []).append(dependency.native_id)
        return ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in by_condition.items())

    def _attribute_lines(self, spec: JobSpec) -> list[str]:
        lines = []
        for key, setting in sorted(spec.attributes_for(ATTRIBUTE_PREFIX).items()):
            field = f"attributes.{ATTRIBUTE_PREFIX}.{key}"
            kind, _, name = key.partition(".")
            if kind in ("l", "W") and _RESOURCE_NAME.match(name):
                if name.lower() in self.owned_names(kind):
                    raise self.unsupported(field, "jobbridge sets this from the job spec")
                lines.append(f"-{kind} {name}={self._value(field, _text(setting))}")
            elif key == "h" and isinstance(setting, bool):
                lines += ["-h"] if setting else []
            elif key in _VALUE_OPTIONS and not isinstance(setting, bool):
                lines.append(f"-{key} {self._value(field, setting)}")
            else:
                raise self.unsupported(field, "not pbs.l.RESOURCE, pbs.W.ATTRIBUTE or a qsub flag")
        return lines

    def owned_names(self, kind: str) -> frozenset[str]:
        """``-l``/``-W`` names jobbridge itself writes, which attributes may not repeat."""
        if kind == "W":
            return frozenset({"depend"})
        return frozenset({"walltime", "mem", "select", "nodes", "place", "advres"})

    # -- the script ------------------------------------------------------------------------

    def portable_variables(self, array: bool) -> dict[str, str]:
        variables = {
            "JOBBRIDGE_JOB_ID": '"$PBS_JOBID"',
            "JOBBRIDGE_SUBMIT_HOST": '"$PBS_O_HOST"',
            # the node file has one line per slot; keep each host once, in order
            "JOBBRIDGE_NODELIST": (
                '"$(awk \'!seen[$0]++\' "${PBS_NODEFILE:-/dev/null}" | paste -sd, -)"'
            ),
        }
        if array:
            variables["JOBBRIDGE_ARRAY_INDEX"] = f'"${self.index_variable}"'
        return variables

    def template_values(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> dict[str, Any]:
        values = super().template_values(job, members, dependencies)
        layout = self.array_layout(job.spec, members)
        if layout is None:
            return values
        portable = values["portable"]
        if layout.request is None:  # one index, submitted as a plain job
            portable["JOBBRIDGE_ARRAY_INDEX"] = str(member_indices(members)[0])
        elif layout.lookup is not None:
            values["index_table"] = layout.lookup
            portable["JOBBRIDGE_ARRAY_INDEX"] = f'"${{jobbridge_indices[${self.index_variable}]}}"'
        return values

    # -- submitting ------------------------------------------------------------------------

    def submit_command(self, script: str) -> list[str]:
        return ["qsub", script]

    def parse_job_id(self, output: str) -> str:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines or not JOB_ID.match(lines[-1]):
            raise ValueError(f"not a job id: {output!r}")
        return lines[-1]

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        self._parents_known(dependencies)
        return super().submit(job, dependencies)

    def submit_array(
        self, jobs: Sequence[Job], dependencies: Sequence[NativeDependency] = ()
    ) -> list[str]:
        self._parents_known(dependencies)
        return super().submit_array(jobs, dependencies)

    def _parents_known(self, dependencies: Sequence[NativeDependency]) -> None:
        """The server aborts a job whose parent it does not know, and it forgets an ended
        job at once where it keeps no history: a parent that ended just now would abort its
        child whatever its outcome. Such a child is not submitted yet (nothing was made);
        the next attempt finds its parent's end and decides without the scheduler."""
        if not dependencies:
            return
        parents = list(dict.fromkeys(_array_of(d.native_id) for d in dependencies))
        try:
            result = self._run(self.status_command(parents), check=False, idempotent=True)
            if result.returncode != 0 and not self.empty_answer_is_fine(result):
                raise ValueError(result.stderr.strip() or f"exit status {result.returncode}")
            known = {_array_of(native) for native in self.parse_status(result.stdout)}
        except (JobbridgeError, ValueError) as error:
            raise SubmissionError(
                f"{self.scheduler}: cannot ask about the parents: {error}", SubmitOutcome.NOT_MADE
            ) from error
        gone = [parent for parent in parents if parent not in known]
        if gone:
            raise SubmissionError(
                f"{self.scheduler} no longer shows parent job(s) {', '.join(gone)}; the job"
                " waits for jobbridge to learn how they ended",
                SubmitOutcome.NOT_MADE,
            )

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        match = JOB_ID.match(native_id)
        if not members or match is None or match["array"] != "[]":
            return [native_id for _ in members]  # a plain job: a member handed over alone
        spec = members[0].spec
        assert spec.array is not None
        # an array is submitted whole; ``locate`` asks about some of its members
        whole = members if len(members) == len(spec.array) else _whole(members[0], spec.array)
        layout = self.array_layout(spec, whole)
        if layout is None or layout.request is None:
            return [native_id for _ in members]
        server = match["server"] or ""
        native = [layout.native[index] for index in _indices_in_order(members)]
        return [f"{match['sequence']}[{index}]{server}" for index in native]

    def query_ids(self, native_ids: Sequence[str]) -> list[str]:
        # an array's members are listed (with -t) when the array is named
        return list(dict.fromkeys(_array_of(native) for native in native_ids))

    # -- acting on jobs --------------------------------------------------------------------

    def cancel_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qdel", *native_ids]

    def hold_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qhold", *native_ids]

    def release_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["qrls", *native_ids]

    def empty_answer_is_fine(self, result: CommandResult) -> bool:
        return "Unknown Job Id" in result.stderr or "has finished" in result.stderr

    # -- finding submissions by their mark ---------------------------------------------------

    def parse_located(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for job_id, attributes in self.readable(self.job_records(output)):
            add_located(found, Mark.ending(self.submitted_name(attributes)), job_id)
        return found

    def submitted_name(self, attributes: Mapping[str, Any]) -> str:
        return str(attributes.get("Job_Name", "")).strip()

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str] | None:
        """The server's settings, which tell how long it shows finished jobs: long enough
        back to the jobs' submission, or the search cannot be complete. (``since`` is that
        time less what the clocks of two hosts may differ by, which the server's own clock
        does not need.)"""
        submitted = since + LOCATE_SLACK
        self._history_needed = max(0.0, time.time() - submitted.timestamp())
        return self.server_command()

    @abstractmethod
    def server_command(self) -> list[str]: ...

    def parse_located_accounting(self, output: str) -> dict[str, list[str]]:
        kept = self.history_kept(output)
        needed = self._history_needed
        self._history_short = kept < needed
        if kept < needed:
            raise ValueError(
                f"the server shows finished jobs for {kept:.0f} s only: jobs ended since the"
                f" search's start ({needed:.0f} s ago) may be gone"
            )
        return {}

    @abstractmethod
    def history_kept(self, output: str) -> float:
        """Seconds for which the server shows finished jobs, from its settings."""

    def locate(self, jobs: Sequence[Job]) -> Located:
        """As every scheduler, except where the server forgets ended jobs before the search's
        start: a submission that was made is either in the queue or has run. A job the
        server does not show is certainly absent if its directory holds nothing that only a
        job script that ran leaves (an exit-code file, outputs); one that ran is found by
        the native id its script noted."""
        self._history_short = False
        located = super().locate(jobs)
        if located.complete or not self._history_short:
            return located
        found = dict(located.found)
        for job in jobs:
            if job.id in found or not self._left_traces(job):
                continue
            recorded = self._recorded_ids(job)
            if not recorded:
                return located
            found[job.id] = recorded
        return Located(found, complete=True)

    def _recorded_ids(self, job: Job) -> list[str]:
        """The native ids that the job's scripts noted when they started (see job.sh.j2)."""
        path = self.exit_code_path(job) + ".id"
        try:
            content = self.transport.read_many([path], limit=4096).get(path, b"")
        except (JobbridgeError, OSError):
            return []
        ids = content.decode(errors="replace").split()
        return list(dict.fromkeys(native for native in ids if JOB_ID.match(native)))

    def _left_traces(self, job: Job) -> bool:
        try:
            files = self.transport.list_files(self.job_dir(job))
        except FileNotFoundError:
            return False
        except (JobbridgeError, OSError):
            return True  # no evidence either way
        return any(_TRACES.search(posixpath.basename(found.path)) for found in files)

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        """Where PBS puts what the job script printed outside the program (``-o``/``-e``)."""
        if job.native_id is None:
            return None
        match = JOB_ID.match(job.native_id)
        index = (match["array"] or "")[1:-1] if match else ""
        if match is None or not index:
            return posixpath.join(self.job_dir(job), f"pbs.{_SUFFIX[stream]}")
        name = self.member_output_name(job, match["sequence"], index, stream)
        return posixpath.join(self.job_dir(job), name)

    def member_output_name(self, job: Job, sequence: str, index: str, stream: Stream) -> str:
        """The file of one member of an array submitted whole (see ``output_lines``)."""
        return f"pbs.{index}.{_SUFFIX[stream]}"

    def whole_array_name(self, job: Job) -> str:
        """The name an array submitted whole carries."""
        return marked_name(job.name, Mark(self.tag(job)), start=_letter_first)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def member_indices(members: Sequence[Job]) -> list[int]:
    return sorted(job.array_index for job in members if job.array_index is not None)


def _indices_in_order(members: Sequence[Job]) -> list[int]:
    return [job.array_index for job in members if job.array_index is not None]


def _letter_first(readable: str) -> str:
    """PBS Pro takes job names that start with a letter or digit, Torque a letter only."""
    return readable if readable[0].isalpha() else f"j{readable}"


def _whole(member: Job, array: ArraySpec) -> list[Job]:
    """Stand-ins for all members of ``member``'s array."""
    return [member.model_copy(update={"array_index": index}) for index in array.indices]


def _array_of(native_id: str) -> str:
    match = JOB_ID.match(native_id)
    if match is None or match["array"] is None:
        return native_id
    return f"{match['sequence']}[]{match['server'] or ''}"
