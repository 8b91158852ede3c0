"""HTCondor through its command-line tools: condor_submit takes a submit description whose
executable is the job script, condor_q -json answers for jobs in the queue, condor_history
-json for jobs that left it, condor_rm / condor_hold / condor_release act on them.

The submit description carries the requests (HTCondor reads none from the script) and
almost no user text: the job's environment, directory and redirections live in the script,
where they are quoted for bash. HTCondor has job dependencies only through DAGMan: a job
whose parents are HTCondor jobs still in the pool is submitted as a DAG that holds it until
they have ended (see ``htcondor_dag``).

Every submission carries jobbridge's mark as job attributes, which the queue and the history
both keep: ``JobbridgeId`` (the tag), and ``JobbridgeArray`` on an array submitted whole or
``JobbridgeMember`` (its index) on a member handed over alone. ``locate`` asks ``condor_q``
and then ``condor_history`` for the jobs whose ``JobbridgeId`` is one of the tags, the
history only back to the search's start. What the job script prints outside the program goes
to the job's ``output``/``error`` files, ``htcondor-CLUSTER.PROC.out``/``.err`` in the job's
directory (the job event log is ``htcondor.log`` there)."""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from jobbridge.backends.base import NativeDependency, Stream
from jobbridge.backends.batch import htcondor_dag as dag
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.htcondor_ads import (
    HOLD_CODES,
    SYSTEM_HOLDS,
    HTCondorState,
    ad_and_state,
    is_int,
    json_ads,
    unmaterialized,
)
from jobbridge.backends.batch.marks import Mark, add_located
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.options import BatchOptions
from jobbridge.backends.batch.script import render, scheduler_name
from jobbridge.errors import BackendError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec, Resources

__all__ = ["HTCondorBackend"]

_ATTRIBUTES = (
    "ClusterId",
    "ProcId",
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReason",
    "HoldReasonCode",
    "RemoveReason",
    "JobStartDate",
    "JobCurrentStartDate",
    "CompletionDate",
    "EnteredCurrentStatus",
    "TotalSubmitProcs",
    "JobMaterializeLimit",
    "JobMaterializeNextProcId",
)
_INDEX_VARIABLE = "jobbridge_index"
_SUBMIT_COMMAND = re.compile(r"^(MY\.)?[A-Za-z_][A-Za-z0-9_]*$")
# Commands jobbridge writes from the spec (or that would take the job out of its hands).
_RESERVED = frozenset(
    {
        "universe",
        "executable",
        "arguments",
        "args",
        "input",
        "output",
        "error",
        "log",
        "initialdir",
        "iwd",
        "batch_name",
        "getenv",
        "environment",
        "env",
        "request_cpus",
        "request_memory",
        "request_gpus",
        "periodic_remove",
        "accounting_group",
        "max_materialize",
        "queue",
    }
)
_WALLTIME_REMOVAL = "The job attribute PeriodicRemove expression"
_POLICY_REMOVAL = "SYSTEM_PERIODIC_REMOVE"
_MARKS = ("JobbridgeId", "JobbridgeArray", "JobbridgeMember")
"""Job attributes that carry jobbridge's mark (see ``submit_commands``)."""
_LOCATE_ATTRIBUTES = ("ClusterId", "ProcId", "JobUniverse", "DAGManJobId", *_MARKS)


class HTCondorOptions(BatchOptions):
    getenv: bool = Field(
        False,
        description="write getenv = True for jobs that inherit the submitter's environment;"
        " pools with SUBMIT_ALLOW_GETENV = false refuse it",
    )


class HTCondorBackend(BatchBackend):
    kind = "htcondor"
    scheduler = "htcondor"
    Options = HTCondorOptions
    options: HTCondorOptions
    native_dependencies = True
    submit_name: ClassVar[str] = "job.sub"
    submission_entry = "job.sub"
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        "Idle": (Phase.QUEUED, None),
        "Unmaterialized": (Phase.QUEUED, None),
        "Running": (Phase.EXECUTING, None),
        "TransferringOutput": (Phase.EXECUTING, None),
        "Suspended": (Phase.SUSPENDED, None),
        "Held": (Phase.HELD, None),
        "Completed": (Phase.COMPLETED, None),
        "Removed": (Phase.ABORTED, "CANCELLED"),
        dag.WAITING: (Phase.QUEUED, None),
        dag.NEVER: (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED"),
    }

    # -- the submit description ------------------------------------------------------------

    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        # The requests live in the submit description; building it here refuses early what
        # it cannot carry, and the script itself gets no header lines.
        self.submit_commands(job, members)
        return []

    def submit_commands(self, job: Job, members: Sequence[Job]) -> list[tuple[str, str]]:
        """The submit description's commands, in order, before its ``queue`` statement."""
        spec = job.spec
        self._refuse_what_htcondor_lacks(spec)
        commands = [
            ("universe", "vanilla"),
            ("executable", self.script_name),
            ("output", "htcondor-$(ClusterId).$(ProcId).out"),
            ("error", "htcondor-$(ClusterId).$(ProcId).err"),
            ("log", "htcondor.log"),
            ("batch_name", scheduler_name(job.name)),
            *self._mark(job, members),
            # the job's own environment is in its script; the submitter's only where the
            # pool lets a job take it
            ("getenv", "True" if spec.inherit_environment and self.options.getenv else "False"),
            ("environment", _environment_command(spec.array is not None)),
            *_requests(spec.resources),
        ]
        group = self.charged_to(spec, "account")
        if group:
            commands.append(("accounting_group", group))
        cap = spec.array.max_concurrent if spec.array is not None else None
        if cap is not None and cap < len(members):
            commands.append(("max_materialize", str(cap)))
        commands.extend(self._attribute_commands(spec.attributes_for("htcondor")))
        return commands

    def _mark(self, job: Job, members: Sequence[Job]) -> list[tuple[str, str]]:
        """``+JobbridgeId``, and what part of an array the submission is."""
        mark = self.mark(job, members)
        commands = [("+JobbridgeId", f'"{mark.tag}"')]
        if mark.index is not None:
            commands.append(("+JobbridgeMember", str(mark.index)))
        elif job.spec.array is not None:
            commands.append(("+JobbridgeArray", "True"))
        return commands

    def _refuse_what_htcondor_lacks(self, spec: JobSpec) -> None:
        if spec.resources.nodes > 1:
            raise self.unsupported("resources.nodes", "a vanilla universe job runs on one machine")
        if spec.queue:
            raise self.unsupported(
                "queue",
                "HTCondor matches jobs to machines and has no queues"
                " (use attributes such as htcondor.requirements)",
            )
        if spec.reservation:
            raise self.unsupported("reservation", "HTCondor has no reservations")

    def render_submit_description(self, job: Job, members: Sequence[Job]) -> str:
        array = job.spec.array is not None
        return render(
            "htcondor.sub.j2",
            job_id=job.array_id or job.id,
            commands=self.submit_commands(job, members),
            index_variable=_INDEX_VARIABLE,
            indices=sorted(member.array_index or 0 for member in members) if array else None,
        )

    def submission_files(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> dict[str, tuple[str, int]]:
        files = super().submission_files(job, members, dependencies)
        files[self.submit_name] = (self.render_submit_description(job, members), 0o600)
        if dependencies:
            text = dag.dag_file(job.array_id or job.id, dependencies, self.submit_name)
            files[dag.DAG_FILE] = (text, 0o600)
            files[dag.PRE_SCRIPT] = (dag.pre_script(), 0o700)
        return files

    def submission_entry_for(self, dependencies: Sequence[NativeDependency]) -> str:
        return dag.DAG_FILE if dependencies else self.submission_entry

    def submission_command(
        self,
        entry: str,
        job: Job,
        members: Sequence[Job],
        dependencies: Sequence[NativeDependency],
    ) -> list[str]:
        """A DAG's DAGMan job carries the mark from its submission on (``-append`` writes
        it into the DAGMan job's own submit description), as ``locate`` needs."""
        command = self.submit_command(entry)
        if not dependencies:
            return command
        marks = [*self._mark(job, members), ("+JobbridgeProcs", str(len(members)))]
        appended = [word for name, value in marks for word in ("-append", f"{name} = {value}")]
        return [*command[:-1], *appended, command[-1]]

    def _attribute_commands(
        self, attributes: Mapping[str, str | int | float | bool]
    ) -> list[tuple[str, str]]:
        commands = []
        for key, setting in sorted(attributes.items()):
            field = f"attributes.htcondor.{key}"
            if not _SUBMIT_COMMAND.match(key):
                raise self.unsupported(field, "not a submit command or MY.<attribute> name")
            if key.lower() in _RESERVED:
                raise self.unsupported(field, "jobbridge writes this command from the spec")
            if key.lower().removeprefix("my.") in {mark.lower() for mark in _MARKS}:
                raise self.unsupported(field, "jobbridge marks its submissions with it")
            if isinstance(setting, bool):
                commands.append((key, "True" if setting else "False"))
            else:
                commands.append((key, self._submit_value(field, setting)))
        return commands

    def _submit_value(self, field: str, value: object) -> str:
        """A value for one ``key = value`` line. It may be a ClassAd expression with quotes and
        spaces, but the line has no quoting: no line breaks, no ``$`` (macro expansion), no
        edge whitespace (trimmed), no trailing backslash (line continuation)."""
        text = str(value)
        if (
            not text
            or text != text.strip()
            or any(bad in text for bad in ("\n", "\r", "\0", "$"))
            or text.endswith("\\")
            or text.startswith("@=")
        ):
            raise self.unsupported(field, f"{text!r} cannot be written on a submit command line")
        return text

    # -- the job script ---------------------------------------------------------------------

    def portable_variables(self, array: bool) -> dict[str, str]:
        variables = {
            "JOBBRIDGE_JOB_ID": '"$JOBBRIDGE_HTCONDOR_ID"',
            # GlobalJobId is "<schedd name>#<cluster>.<proc>#<submit time>"; the schedd is
            # named after its host (or "name@host").
            "JOBBRIDGE_SUBMIT_HOST": (
                "\"$(sed -n 's/^GlobalJobId = \"\\([^#@]*@\\)\\{0,1\\}\\([^#]*\\)#.*/\\2/p'"
                ' "$_CONDOR_JOB_AD" 2>/dev/null)"'
            ),
            "JOBBRIDGE_NODELIST": '"$(uname -n)"',
        }
        if array:
            variables["JOBBRIDGE_ARRAY_INDEX"] = '"$JOBBRIDGE_HTCONDOR_INDEX"'
        return variables

    # -- submitting ---------------------------------------------------------------------------

    def submit_command(self, script: str) -> list[str]:
        if posixpath.basename(script) == dag.DAG_FILE:
            # -force: files of an earlier submission that left no DAGMan job are overwritten
            return ["condor_submit_dag", "-force", script]
        return ["condor_submit", "-terse", script]

    def parse_job_id(self, output: str) -> str:
        """``-terse`` prints the range of job ids it queued: ``123.0 - 123.9``;
        condor_submit_dag the DAGMan job's cluster: ``1 job(s) submitted to cluster 123.``"""
        match = re.search(r"^\s*(\d+)\.(\d+)\s*-\s*(\d+)\.(\d+)\s*$", output, re.MULTILINE)
        if match is not None:
            return f"{match[1]}.{match[2]}"
        dagman = re.search(r"^\s*1 job\(s\) submitted to cluster (\d+)\.\s*$", output, re.MULTILINE)
        if dagman is None or "File for submitting this DAG" not in output:
            raise ValueError(f"no job id range in {output!r}")
        return dag.dag_id(dagman[1], 0)

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        """Procs follow the submitted members' indices in order, from the first job's id;
        a cluster's id alone (``parse_located``'s for an array submitted whole) numbers the
        whole array from proc 0."""
        if dag.is_dag(native_id):
            plain = self.member_ids(".".join(dag.split_dag_id(native_id)).rstrip("."), members)
            return [dag.PREFIX + native for native in plain]
        cluster, _, first = native_id.partition(".")
        array = members[0].spec.array if members else None
        if not first and array is not None:
            submitted = list(array.indices)
        else:
            submitted = sorted(job.array_index or 0 for job in members)
        procs = {index: int(first or 0) + position for position, index in enumerate(submitted)}
        return [f"{cluster}.{procs[job.array_index or 0]}" for job in members]

    # -- asking about jobs --------------------------------------------------------------------

    def query_ids(self, native_ids: Sequence[str]) -> list[str]:
        # A cluster id names all of its jobs; one per array is enough.
        return list(dict.fromkeys(native.split(".")[0] for native in native_ids))

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        if any(dag.is_dag(native) for native in native_ids):
            return ["condor_q", *_dag_query(native_ids)]
        return ["condor_q", "-json", "-attributes", ",".join(_ATTRIBUTES), *native_ids]

    def parse_status(self, output: str) -> dict[str, NativeState]:
        read = self._read_ads(output)
        in_dags, taken = dag.dag_states(read)
        clusters: dict[int, list[Mapping[str, Any]]] = {}
        for job_id, (ad, _) in read.items():
            if job_id not in taken:
                clusters.setdefault(int(job_id.split(".")[0]), []).append(ad)
        states: dict[str, NativeState] = {}
        for cluster, cluster_ads in clusters.items():
            states.update(unmaterialized(cluster, cluster_ads))
        states.update((job_id, state) for job_id, (_, state) in read.items() if job_id not in taken)
        states.update(in_dags)
        return states

    def _read_ads(self, output: str) -> dict[str, tuple[Mapping[str, Any], HTCondorState]]:
        """Each job's ad and state; one that cannot be read is no news for that job alone."""
        return dict(self.read_each(json_ads(output), ad_and_state))

    def accounting_command(self, native_ids: Sequence[str]) -> list[str] | None:
        if not self.options.accounting:
            return None
        if any(dag.is_dag(native) for native in native_ids):
            return ["condor_history", *_dag_query(native_ids)]
        return ["condor_history", "-json", "-attributes", ",".join(_ATTRIBUTES), *native_ids]

    def parse_accounting(self, output: str) -> dict[str, NativeState]:
        read = self._read_ads(output)
        in_dags, taken = dag.dag_states(read)
        plain = {job_id: state for job_id, (_, state) in read.items() if job_id not in taken}
        return {**plain, **in_dags}

    # -- finding submissions by their mark ---------------------------------------------------

    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        # the current user's jobs (condor_q's default) that carry one of the tags
        return [
            "condor_q", "-json", "-attributes", ",".join(_LOCATE_ATTRIBUTES),
            "-constraint", _carrying(tags),
        ]  # fmt: skip

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str]:
        """The history, read from the newest job back to the first that left the queue
        before ``since`` (none submitted since can have)."""
        return [
            "condor_history", "-json", "-attributes", ",".join(_LOCATE_ATTRIBUTES),
            "-constraint", _carrying(tags),
            "-since", f"EnteredCurrentStatus < {int(since.timestamp())}",
        ]  # fmt: skip

    def parse_located(self, output: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for ad in self.readable(json_ads(output)):
            tag, cluster, proc = ad.get("JobbridgeId"), ad.get("ClusterId"), ad.get("ProcId")
            if not isinstance(tag, str) or not is_int(cluster) or not is_int(proc):
                continue
            if "DAGManJobId" in ad:  # a DAG's node: its DAGMan job carries the mark too
                continue
            member = ad.get("JobbridgeMember")
            mark = Mark(tag, member if is_int(member) else None)
            whole = ad.get("JobbridgeArray") is True
            located = str(cluster) if whole else f"{cluster}.{proc}"
            if ad.get("JobUniverse") == dag.SCHEDULER_UNIVERSE:
                located = dag.dag_id(cluster, None if whole else 0)
            add_located(found, mark, located)
        return found

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        """The job's ``output``/``error`` files: what its script printed outside the program."""
        if job.native_id is None or dag.is_dag(job.native_id):
            return None  # a DAG's node job has a cluster of its own
        suffix = "out" if stream == "stdout" else "err"
        return posixpath.join(self.job_dir(job), f"htcondor-{job.native_id}.{suffix}")

    def to_status(self, state: NativeState) -> JobStatus:
        status = super().to_status(state)
        reason = state.reason or ""
        if state.word == "Completed" and state.exit_code not in (None, 0):
            return status.model_copy(update={"phase": Phase.ERROR})
        if state.word == "Removed" and reason.startswith(_WALLTIME_REMOVAL):
            return status.model_copy(update={"phase": Phase.ERROR, "detail": "TIMEOUT"})
        if state.word == "Removed" and _POLICY_REMOVAL in reason:
            return status.model_copy(update={"phase": Phase.ERROR, "detail": _POLICY_REMOVAL})
        if state.word == "Held" and isinstance(state, HTCondorState) and state.hold_code:
            failure = SYSTEM_HOLDS.get(state.hold_code)
            if failure is not None:
                return status.model_copy(
                    update={"phase": Phase.ERROR, "detail": failure, "stop_native": True}
                )
            label = HOLD_CODES.get(state.hold_code, f"HoldReasonCode {state.hold_code}")
            return status.model_copy(update={"detail": label})
        return status

    # -- acting on jobs -----------------------------------------------------------------------

    def cancel(self, job: Job) -> None:
        assert job.native_id is not None
        result = self._run(self.cancel_command([job.native_id]), check=False)
        if result.returncode == 0:
            return
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        message = f"condor_rm {job.native_id} failed: {said[-1] if said else result.returncode}"
        if said and said[-1].endswith("not found"):
            # Also the answer for a job its max_materialize cluster has not created yet:
            # HTCondor cannot remove it before then, so the caller has to try again later.
            message += " (it has left the queue, or has not been materialized yet)"
        raise BackendError(message, retryable=True)

    def cancel_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["condor_rm", *_acted_on(native_ids)]

    def hold_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["condor_hold", *_acted_on(native_ids)]

    def release_command(self, native_ids: Sequence[str]) -> list[str]:
        return ["condor_release", *_acted_on(native_ids)]


def _acted_on(native_ids: Sequence[str]) -> list[str]:
    """The jobs condor_rm / condor_hold / condor_release are given: a DAG-held job's DAGMan
    job (removing it removes the node job it submitted; holding it pauses the DAG)."""
    return list(dict.fromkeys(dag.split_dag_id(n)[0] if dag.is_dag(n) else n for n in native_ids))


def _dag_query(query_ids: Sequence[str]) -> list[str]:
    """condor_q / condor_history options for jobs among which some wait in DAGs: one
    constraint naming the plain clusters, the DAGMan jobs and the jobs they submitted."""
    attributes = ",".join((*_ATTRIBUTES, "JobUniverse", "DAGManJobId", "JobbridgeProcs"))
    return ["-json", "-attributes", attributes, "-constraint", dag.constraint(query_ids)]


def _requests(resources: Resources) -> list[tuple[str, str]]:
    """What the job asks of the one machine it runs on, and for how long."""
    requests = [("request_cpus", str(resources.processes_per_node * resources.cores_per_process))]
    if resources.gpus_per_process:
        gpus = resources.processes_per_node * resources.gpus_per_process
        requests.append(("request_gpus", str(gpus)))
    if resources.memory is not None:
        requests.append(("request_memory", str(math.ceil(resources.memory / 2**20))))
    if resources.walltime is not None:
        seconds = math.ceil(resources.walltime.total_seconds())
        # The manual's way to end a job that runs too long. HTCondor checks it every
        # PERIODIC_EXPR_INTERVAL (60 s by default), so the end can come that much later.
        limit = f"(JobStatus == 2) && (time() - EnteredCurrentStatus) > {seconds}"
        requests.append(("periodic_remove", limit))
    return requests


def _environment_command(array: bool) -> str:
    """HTCondor's own ids for the script's portable variables, in the ``environment``
    command's quoted syntax; the macros are expanded by condor_submit for every job."""
    entries = ["JOBBRIDGE_HTCONDOR_ID=$(ClusterId).$(ProcId)"]
    if array:
        entries.append(f"JOBBRIDGE_HTCONDOR_INDEX=$({_INDEX_VARIABLE})")
    return '"' + " ".join(entries) + '"'


def _carrying(tags: Sequence[str]) -> str:
    """A ClassAd constraint: the job's ``JobbridgeId`` is one of ``tags`` (case matters)."""
    quoted = (tag.replace("\\", "\\\\").replace('"', '\\"') for tag in tags)
    return " || ".join(f'JobbridgeId =?= "{tag}"' for tag in quoted)
