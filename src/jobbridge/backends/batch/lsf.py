"""IBM Spectrum LSF: ``bsub < job.sh`` (only a script on standard input has its ``#BSUB``
lines read), ``bjobs -a -o ... -json`` for every job it still remembers, ``bkill``, and
``bstop``/``bresume`` to hold and release pending jobs.

Memory is given with explicit units (``8192MB``), which needs LSF 10.1.0.2 or later; the
``rusage[mem=...]`` reservation assumes the default per-host reservation method. LSF numbers
array elements from 1: element ``i + 1`` runs jobbridge's index ``i``, and the script maps it
back. ``bjobs`` prints time stamps to the minute, without a year and in the cluster's local
time, so no times are read from it: a job starts when it is first seen running, and an ended
job's times (and exit code) come from the exit-code file its script writes.

Every submission's job name ends with jobbridge's mark (``name.jb-ID``; a member handed over
alone also with its index, ``name.jb-ID.7``; an array's index list follows). ``locate``
lists the user's jobs that ``bjobs -a`` still shows, then those that ``bhist`` finds in the
event logs since the search's start; both show the job name, not the description (``-Jd``).
What the job script prints outside the program goes to ``lsf-JOB.out``/``.err`` (an array's
elements: ``lsf-JOB_INDEX``) in the job's directory.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from pydantic import Field

from jobbridge.backends.base import NativeDependency, Stream
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.marks import Mark, add_located, marked_name
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.options import BatchOptions
from jobbridge.backends.batch.records import UnreadableRecord, json_objects
from jobbridge.errors import BackendError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.transport.base import CommandResult

__all__ = ["LsfBackend", "LsfOptions", "LsfState"]

STATUS_FIELDS: Final = "jobid jobindex stat exit_code exit_reason pend_reason"
LOCATE_FIELDS: Final = "jobid jobindex job_name"
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
_NATIVE_ID = re.compile(r"^(\d+)(?:\[(\d+)\])?$")
_TERM_WORD = re.compile(r"\bTERM_[A-Z_]+")
_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# A resource requirement string sits in double quotes: no quote, $, backquote or backslash.
_RESOURCE_REQUIREMENT = re.compile(r"^[A-Za-z0-9_.,:;@%+=/\-\[\]()<>!&|~* ]+$")
_OPTIONS_FROM_THE_SPEC = frozenset(
    {"J", "o", "oo", "e", "eo", "i", "n", "M", "W", "q", "P", "U", "w", "env", "gpu", "cwd"}
)
_CONDITIONS = {"afterok": "done", "afterany": "ended", "afternotok": "exit"}
_NEVER_SATISFIED = "never satisfied"
_GONE = ("already finished", "No matching job found", "is not found")
_INDEX_LIST_LIMIT = 255
"""Characters of an array's index list that bsub takes."""


class LsfOptions(BatchOptions):
    max_job_array_size: int = Field(
        1000, ge=1, description="the site's MAX_JOB_ARRAY_SIZE (lsb.params), 1000 unless set"
    )


_ELEMENT = re.compile(r"\[\d+\]$")
_BHIST_STATES = 7
"""Columns of seconds after JOB_NAME in ``bhist``: PEND PSUSP RUN USUSP SSUSP UNKWN TOTAL."""
_JOB_ID_FIELD = re.compile(r'"JOBID"\s*:\s*"([^"]*)"')


@dataclass(frozen=True)
class LsfState(NativeState):
    """One ``bjobs`` record. ``exit_code`` stays empty for an ended job that the job's own
    exit-code file can tell more precisely about (with its times); ``reported_exit_code`` is
    what ``bjobs`` said, used if that file never appears."""

    reported_exit_code: int | None = None


class LsfBackend(BatchBackend):
    Options = LsfOptions
    options: LsfOptions
    kind = "lsf"
    scheduler = "lsf"
    native_dependencies = True
    submit_stdin = True  # bsub reads #BSUB lines only from a script on its standard input
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        "PEND": (Phase.QUEUED, None),
        "WAIT": (Phase.QUEUED, None),  # a chunk job member waiting for its turn
        "PROV": (Phase.QUEUED, None),  # dispatched, its host still being provisioned
        "PSUSP": (Phase.HELD, None),  # suspended while pending: bstop, or bsub -H
        "RUN": (Phase.EXECUTING, None),
        "USUSP": (Phase.SUSPENDED, None),
        "SSUSP": (Phase.SUSPENDED, None),
        "DONE": (Phase.COMPLETED, None),
        "POST_DONE": (Phase.COMPLETED, None),
        "EXIT": (Phase.ERROR, None),
        "POST_ERR": (Phase.ERROR, "POST_ERR"),
        "UNKWN": (Phase.UNKNOWN, "UNKWN"),  # mbatchd lost contact with the execution host
        "ZOMBI": (Phase.UNKNOWN, "ZOMBI"),  # killed while its host was unreachable
        # Why an EXIT job ended, when bjobs names a termination reason:
        "TERM_RUNLIMIT": (Phase.ERROR, "TIMEOUT"),
        "TERM_CPULIMIT": (Phase.ERROR, "TERM_CPULIMIT"),
        "TERM_MEMLIMIT": (Phase.ERROR, "OUT_OF_MEMORY"),
        "TERM_SWAP": (Phase.ERROR, "OUT_OF_MEMORY"),
        "TERM_DEADLINE": (Phase.ERROR, "DEADLINE"),
        "TERM_PREEMPT": (Phase.ERROR, "PREEMPTED"),
        "TERM_OWNER": (Phase.ABORTED, "CANCELLED"),
        "TERM_ADMIN": (Phase.ABORTED, "CANCELLED"),
        "TERM_FORCE_OWNER": (Phase.ABORTED, "CANCELLED"),
        "TERM_FORCE_ADMIN": (Phase.ABORTED, "CANCELLED"),
        "TERM_BUCKET_KILL": (Phase.ABORTED, "CANCELLED"),
        "TERM_ORPHAN_SYSTEM": (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED"),
        "TERM_REMOVE_HUNG_JOB": (Phase.ERROR, "NODE_FAIL"),
        "TERM_ZOMBIE": (Phase.ERROR, "NODE_FAIL"),
        "TERM_LOAD": (Phase.ERROR, "TERM_LOAD"),
        "TERM_WINDOW": (Phase.ERROR, "TERM_WINDOW"),
        "TERM_PROCESSLIMIT": (Phase.ERROR, "TERM_PROCESSLIMIT"),
        "TERM_THREADLIMIT": (Phase.ERROR, "TERM_THREADLIMIT"),
        "TERM_CHKPNT": (Phase.ERROR, "TERM_CHKPNT"),
        "TERM_PRE_EXEC_FAIL": (Phase.ERROR, "TERM_PRE_EXEC_FAIL"),
        "TERM_CWD_NOTEXIST": (Phase.ERROR, "TERM_CWD_NOTEXIST"),
        "TERM_EXTERNAL_SIGNAL": (Phase.ERROR, "TERM_EXTERNAL_SIGNAL"),
        "TERM_DATA": (Phase.ERROR, "TERM_DATA"),
        "TERM_MC_RECALL": (Phase.ERROR, "TERM_MC_RECALL"),
        "TERM_UNKNOWN": (Phase.ERROR, "TERM_UNKNOWN"),
    }

    # -- the job script --------------------------------------------------------------------

    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        spec = job.spec
        output = "lsf-%J_%I" if spec.array is not None else "lsf-%J"
        lines = [f"-J {self._job_name(job, members)}", f"-o {output}.out", f"-e {output}.err"]
        lines.extend(self._resource_lines(spec))
        if not spec.inherit_environment:
            lines.append("-env none")
        if spec.queue:
            lines.append(f"-q {self._value('queue', spec.queue)}")
        project = self.charged_to(spec, "project")
        if project:
            lines.append(f"-P {project}")
        if spec.reservation:
            lines.append(f"-U {self._value('reservation', spec.reservation)}")
        if dependencies:
            lines.append(f'-w "{self._dependency_expression(dependencies)}"')
        lines.extend(self._attribute_lines(spec.attributes_for("lsf")))
        return [f"#BSUB {line}" for line in lines]

    def _job_name(self, job: Job, members: Sequence[Job]) -> str:
        """``name.MARK``, or for an array ``"name.MARK[2,4,6-8]%2"`` in LSF's numbering."""
        name = marked_name(job.name, self.mark(job, members))
        array = job.spec.array
        if array is None:
            return name
        indices = [member.array_index for member in members if member.array_index is not None]
        cap = f"%{array.max_concurrent}" if array.max_concurrent and len(indices) > 1 else ""
        listed = lsf_index_list(indices)
        most = self.options.max_job_array_size
        if len(indices) > most or max(indices) + 1 > most:
            raise self.unsupported(
                "array",
                f"LSF arrays take at most {most} elements, numbered up to {most}"
                " (MAX_JOB_ARRAY_SIZE; set max_job_array_size to the site's)",
            )
        if len(listed) > _INDEX_LIST_LIMIT:
            raise self.unsupported(
                "array",
                f"LSF takes an index list of {_INDEX_LIST_LIMIT} characters at the"
                f" most; this one needs {len(listed)} (submit fewer, or more regular, indices)",
            )
        return f'"{name}[{listed}]{cap}"'

    def _resource_lines(self, spec: JobSpec) -> list[str]:
        resources = spec.resources
        # LSF counts slots, one per core: a process with several cores takes several slots.
        per_node = resources.processes_per_node * resources.cores_per_process
        requirement = ["span[hosts=1]" if resources.nodes == 1 else f"span[ptile={per_node}]"]
        lines = [f"-n {resources.nodes * per_node}"]
        if resources.gpus_per_process:
            lines.append(f"-gpu num={resources.gpus_per_process * resources.processes_per_node}")
        if resources.memory is not None:
            per_host = math.ceil(resources.memory / resources.nodes / 2**20)
            lines.append(f"-M {per_host}MB")
            requirement.append(f"rusage[mem={per_host}MB]")
        lines.append(f'-R "{" ".join(requirement)}"')
        if resources.walltime is not None:
            lines.append(f"-W {run_limit(resources.walltime.total_seconds())}")
        return lines

    def _dependency_expression(self, dependencies: Sequence[NativeDependency]) -> str:
        terms = []
        for dependency in dependencies:
            if not _NATIVE_ID.match(dependency.native_id):
                raise self.unsupported("depends_on", f"{dependency.native_id!r} is no LSF job id")
            terms.append(f"{_CONDITIONS[dependency.condition]}({dependency.native_id})")
        return " && ".join(terms)

    def _attribute_lines(self, attributes: Mapping[str, object]) -> list[str]:
        lines = []
        for key, setting in sorted(attributes.items()):
            field = f"attributes.lsf.{key}"
            if not _ATTRIBUTE.match(key):
                raise self.unsupported(field, "not a bsub option name")
            if key in _OPTIONS_FROM_THE_SPEC:
                raise self.unsupported(field, "jobbridge sets this option from the job spec")
            if key == "R":
                lines.append(f'-R "{self._resource_requirement(field, setting)}"')
            elif setting is True:
                lines.append(f"-{key}")
            elif setting is not False:
                lines.append(f"-{key} {self._value(field, setting)}")
        return lines

    def _resource_requirement(self, field: str, value: object) -> str:
        text = str(value)
        if not _RESOURCE_REQUIREMENT.match(text):
            raise self.unsupported(field, f"{text!r} has characters a -R string cannot carry")
        return text

    def portable_variables(self, array: bool) -> dict[str, str]:
        hosts = (
            '"$(set -- $LSB_MCPU_HOSTS; hosts=; while [ $# -ge 2 ]; do'
            ' hosts="${hosts:+$hosts,}$1"; shift 2; done; printf %s "$hosts")"'
        )
        variables = {
            "JOBBRIDGE_JOB_ID": '"$LSB_JOBID"',
            "JOBBRIDGE_SUBMIT_HOST": '"$LSB_SUB_HOST"',
            "JOBBRIDGE_NODELIST": hosts,
        }
        if array:
            variables["JOBBRIDGE_JOB_ID"] = '"${LSB_JOBID}[${LSB_JOBINDEX}]"'
            variables["JOBBRIDGE_ARRAY_INDEX"] = '"$((LSB_JOBINDEX - 1))"'
        return variables

    # -- submitting --------------------------------------------------------------------------

    def submit_command(self, script: str) -> list[str]:
        return ["bsub"]

    def parse_job_id(self, output: str) -> str:
        match = _SUBMITTED.search(output)
        if match is None:
            raise ValueError(f"no 'Job <ID> is submitted' in {output!r}")
        return match[1]

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        return [f"{native_id}[{(job.array_index or 0) + 1}]" for job in members]

    # -- asking about jobs ---------------------------------------------------------------------

    def query_ids(self, native_ids: Sequence[str]) -> list[str]:
        # Naming the array shows all its elements in one record each.
        return list(dict.fromkeys(native.split("[")[0] for native in native_ids))

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["bjobs", "-a", "-o", STATUS_FIELDS, "-json", *native_ids]

    def parse_status(self, output: str) -> dict[str, NativeState]:
        entries = self.read_each(_records(output), _record_entry)
        return dict(entry for entry in entries if entry is not None)

    def empty_answer_is_fine(self, result: CommandResult) -> bool:
        said = result.stdout + result.stderr
        return any(
            words in said
            for words in ("is not found", "No matching job", "No job found", "No unfinished job")
        )

    def status_environment(self) -> dict[str, str]:
        # bhist -S reads times in the local time zone (bjobs's times are not read)
        return {"TZ": "UTC"}

    # -- finding submissions by their mark ---------------------------------------------------

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # the user's jobs, finished ones while mbatchd keeps them (-a); bjobs filters on one
        # name only, so parse_located keeps the tags asked for
        return ["bjobs", "-a", "-o", LOCATE_FIELDS, "-json"]

    def parse_located(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for record in self.readable(_records(output)):
            if "ERROR" in record:
                continue  # a job bjobs does not know (any more)
            job_id = str(record.get("JOBID", "")).split("[")[0].strip()
            if job_id.isdigit():
                add_located(found, _mark_of(str(record.get("JOB_NAME", ""))), job_id)
        return found

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str]:
        """The user's jobs submitted since ``since`` in all event logs (``-n 0``), finished
        or not, with whole job names (``-w``)."""
        start = since.astimezone(UTC).strftime("%Y/%m/%d/%H:%M")
        return ["bhist", "-a", "-w", "-n", "0", "-S", f"{start},"]

    def parse_located_accounting(self, output: str) -> dict[str, list[str]]:
        """``bhist``'s summary table: JOBID USER JOB_NAME and seven columns of seconds."""
        found: dict[str, list[str]] = {}
        for line in output.splitlines():
            words = line.split()
            if len(words) < 3 + _BHIST_STATES:
                continue
            if not all(word.isdigit() for word in words[-_BHIST_STATES:]):
                continue  # a heading
            job_id = words[0].split("[")[0]
            if job_id.isdigit():
                add_located(found, _mark_of(" ".join(words[2:-_BHIST_STATES])), job_id)
        return found

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        """Where LSF puts what the job script printed outside the program (``-o``/``-e``)."""
        if job.native_id is None:
            return None
        match = _NATIVE_ID.match(job.native_id)
        if match is None:
            return None
        stem = f"lsf-{match[1]}_{match[2]}" if match[2] else f"lsf-{match[1]}"
        return posixpath.join(self.job_dir(job), f"{stem}.{'out' if stream == 'stdout' else 'err'}")

    def to_status(self, state: NativeState) -> JobStatus:
        if state.word == "PEND" and _NEVER_SATISFIED in (state.reason or "").lower():
            return JobStatus(
                phase=Phase.ABORTED,
                detail="DEPENDENCY_NEVER_SATISFIED",
                message=f"lsf: {state.reason}",
            )
        status = super().to_status(state)
        if status.exit_code is None and isinstance(state, LsfState):
            status = status.model_copy(update={"exit_code": state.reported_exit_code})
        return status

    # -- acting on jobs ------------------------------------------------------------------------

    def cancel_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["bkill", *native_ids]

    def cancel(self, job: Job) -> None:
        assert job.native_id is not None
        result = self._run(self.cancel_command([job.native_id]), check=False)
        said = result.stdout + result.stderr
        if result.returncode != 0 and not any(gone in said for gone in _GONE):
            raise BackendError(
                f"bkill failed ({result.returncode}): {said.strip()}", retryable=True
            )

    def hold_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["bstop", *native_ids]

    def release_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["bresume", *native_ids]


def lsf_index_list(indices: Sequence[int]) -> str:
    """jobbridge's indices as an LSF index list (``1-10``, ``2,4,6-8``, ``1-21:5``), each
    moved up by one because LSF numbers elements from 1."""
    runs: list[list[int]] = []  # runs of consecutive numbers
    for index in sorted(index + 1 for index in indices):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    parts: list[str] = []
    singles: list[int] = []
    for run in runs:
        if len(run) == 1:
            singles.append(run[0])
            continue
        parts.extend(_stepped(singles))
        singles = []
        parts.append(f"{run[0]}-{run[-1]}")
    parts.extend(_stepped(singles))
    return ",".join(parts)


def _stepped(numbers: Sequence[int]) -> list[str]:
    """Isolated numbers, as ``start-end:step`` where three or more are evenly spaced."""
    parts = []
    start = 0
    while start < len(numbers):
        end = start
        if start + 1 < len(numbers):
            step = numbers[start + 1] - numbers[start]
            while end + 1 < len(numbers) and numbers[end + 1] - numbers[end] == step:
                end += 1
        if end - start >= 2:
            parts.append(f"{numbers[start]}-{numbers[end]}:{numbers[start + 1] - numbers[start]}")
            start = end + 1
        else:
            parts.append(str(numbers[start]))
            start += 1
    return parts


def run_limit(seconds: float) -> str:
    """``bsub -W``'s ``[hour:]minute``, rounded up to the next whole minute (at least one)."""
    minutes = max(1, math.ceil(seconds / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}" if hours else str(minutes)


def _records(output: str) -> Iterator[Mapping[str, Any] | UnreadableRecord]:
    """Each entry of ``RECORDS`` in a ``bjobs -json`` answer; one whose JSON is broken comes
    as an ``UnreadableRecord`` and the entries after it are still read. ``ValueError`` if the
    answer as a whole is none."""
    start = output.find("{")  # some sites print notices before the JSON
    if start < 0:
        if not output.strip():
            return
        raise ValueError(f"no JSON object in {output[:200]!r}")
    try:
        answer = json.loads(output[start:])
    except json.JSONDecodeError:
        yield from _record_by_record(output, start)
        return
    if not isinstance(answer, dict) or not isinstance(answer.get("RECORDS", []), list):
        raise ValueError("not a bjobs -json answer")
    for record in answer.get("RECORDS", []):
        if isinstance(record, dict):
            yield record
        else:
            yield UnreadableRecord(str(record)[:40], "a record that is no JSON object")


def _record_by_record(output: str, start: int) -> Iterator[Mapping[str, Any] | UnreadableRecord]:
    """The records of an answer that is no valid JSON as a whole. bjobs prints each record's
    ``{`` on a line of its own, at the same indentation."""
    opening = re.compile(r'"RECORDS"\s*:\s*\[').search(output, start)
    if opening is None or not output.rstrip().endswith("}"):
        raise ValueError("no bjobs -json answer (or one cut short)")
    yield from json_objects(output, opening.end(), _job_at)


def _job_at(output: str, position: int) -> str:
    job = _JOB_ID_FIELD.search(output, position)
    return job[1] if job else output[position : position + 40]


def _record_entry(record: Mapping[str, Any]) -> tuple[str, NativeState] | None:
    if "ERROR" in record:
        return None  # a job bjobs does not know (any more)
    return _record_id(record), _record_state(record)


def _record_id(record: Mapping[str, Any]) -> str:
    job_id = str(record.get("JOBID", "")).strip()
    if not _NATIVE_ID.match(job_id):
        raise UnreadableRecord(job_id or "?", "no job id")
    index = str(record.get("JOBINDEX", "") or "0")
    if "[" in job_id or index == "0":
        return job_id
    if not index.isdigit():
        raise UnreadableRecord(job_id, f"JOBINDEX {index!r} is no number")
    return f"{job_id}[{index}]"


def _record_state(record: Mapping[str, Any]) -> LsfState:
    stat = str(record.get("STAT") or "")
    if not stat:
        raise UnreadableRecord(str(record.get("JOBID", "?")), "no STAT")
    code = str(record.get("EXIT_CODE", "") or "").strip()
    if code and not code.lstrip("-").isdigit():
        raise UnreadableRecord(str(record.get("JOBID", "?")), f"EXIT_CODE {code!r} is no number")
    reported = _integer(code)
    if stat == "DONE" and reported is None:
        reported = 0  # DONE means exit value zero; bjobs leaves the field empty
    if stat == "PEND" or stat == "PSUSP":
        return LsfState(word=stat, reason=_reason(record.get("PEND_REASON", "")))
    if stat == "EXIT":
        exit_reason = str(record.get("EXIT_REASON", "") or "")
        term = _TERM_WORD.search(exit_reason)
        if term is not None and term[0] in LsfBackend.STATES:
            return LsfState(
                word=term[0],
                reason=_reason(exit_reason),
                exit_code=reported,
                reported_exit_code=reported,
            )
    # An ended job's own exit-code file tells its code and times; bjobs is the fallback.
    return LsfState(
        word=stat, reason=_reason(record.get("EXIT_REASON", "")), reported_exit_code=reported
    )


def _reason(text: object) -> str | None:
    cleaned = str(text or "").strip().rstrip(";").strip()
    return cleaned or None


def _integer(text: object) -> int | None:
    cleaned = str(text or "").strip()
    return int(cleaned) if cleaned.lstrip("-").isdigit() else None


def _mark_of(name: str) -> Mark | None:
    """The mark a job name ends with, an array element's (``name[3]``) included."""
    return Mark.ending(_ELEMENT.sub("", name.strip()))
