"""HTCondor jobs that depend on other HTCondor jobs: DAGMan holds them.

HTCondor has dependencies only through DAGMan. The engine hands a job over once every job it
depends on has been handed over; on HTCondor a job with parents still in HTCondor's hands
is submitted with ``condor_submit_dag`` as a DAG input file, ``job.dag`` in its directory::

    JOB job job.sub
    SCRIPT DEFER 75 10 PRE job /bin/sh after.sh 101.0=afterok dag:102.0=afterany

submitted as ``condor_submit_dag -force -append '+JobbridgeId = "jb-..."' ... job.dag``.

The node ``job`` is the job's own submit description; its PRE script, which DAGMan runs on
the access point before it submits the node, asks ``condor_q`` and ``condor_history`` about
the parents: it exits 75 while one has not ended (DAGMan runs it again 10 seconds later, the
DEFER rule), 1 if one ended in a way the dependency excludes (DAGMan then never submits the
node, and the DAG fails), 0 once all have ended as required. The DAGMan job itself, a
scheduler universe job, carries jobbridge's mark from its submission on (``-append`` writes
it into the DAGMan job's submit description), as the node job does in its own, so
``locate`` finds the submission by either.

Such a job's native id is ``dag:C.P``: proc P of the node job of the DAGMan job C. Status
comes from the same single ``condor_q -json`` (and ``condor_history -json``) as other jobs,
asking for cluster C and for the jobs whose ``DAGManJobId`` is C: the node job's ad tells its
state once DAGMan has submitted it; before that the DAGMan job's ad does (waiting: QUEUED);
a DAGMan job that ended without ever submitting the node means its PRE script refused:
ABORTED, DEPENDENCY_NEVER_SATISFIED.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.native import NativeState

__all__ = [
    "DAG_FILE",
    "NEVER",
    "PRE_SCRIPT",
    "WAITING",
    "constraint",
    "dag_file",
    "dag_id",
    "dag_states",
    "is_dag",
    "pre_script",
    "split_dag_id",
]

DAG_FILE = "job.dag"
PRE_SCRIPT = "after.sh"
NODE = "job"
PREFIX = "dag:"
DEFER_STATUS = 75
DEFER_SECONDS = 10
SCHEDULER_UNIVERSE = 7
_PARENT = re.compile(r"^(dag:)?\d+\.\d+$")
WAITING = "WaitingForParents"
"""The state word of a job whose node DAGMan has not submitted yet."""
NEVER = "ParentsFailed"
"""The state word of a job whose DAGMan ended without submitting its node."""


def is_dag(native_id: str) -> bool:
    return native_id.startswith(PREFIX)


def dag_id(cluster: object, proc: object | None = None) -> str:
    """``dag:C.P``; ``dag:C`` (the whole array in the node) without a proc."""
    return f"{PREFIX}{cluster}" if proc is None else f"{PREFIX}{cluster}.{proc}"


def split_dag_id(native_id: str) -> tuple[str, str]:
    """``dag:C.P`` as (C, P); P is empty for ``dag:C``."""
    cluster, _, proc = native_id.removeprefix(PREFIX).partition(".")
    return cluster, proc


def dag_file(job_id: str, dependencies: Sequence[NativeDependency], submit_description: str) -> str:
    """The DAG input file: one node, the job, held by its PRE script until its parents
    ended as required."""
    for dependency in dependencies:  # a DAG file line has no quoting
        if not _PARENT.match(dependency.native_id):
            raise ValueError(f"{dependency.native_id!r} is no HTCondor job id")
    parents = " ".join(f"{d.native_id}={d.condition}" for d in dependencies)
    lines = [
        f"# jobbridge job {job_id}: DAGMan submits it once the jobs it depends on have ended",
        f"JOB {NODE} {submit_description}",
        f"SCRIPT DEFER {DEFER_STATUS} {DEFER_SECONDS} PRE {NODE} /bin/sh {PRE_SCRIPT} {parents}",
    ]
    return "\n".join(lines) + "\n"


def pre_script() -> str:
    """The node's PRE script; its arguments are ``ID=CONDITION`` words."""
    return f"""#!/bin/sh
# jobbridge: may the node run? 0 yes, 1 never, {DEFER_STATUS} not yet (DAGMan asks again later)
for parent in "$@"; do
    id=${{parent%%=*}}
    condition=${{parent#*=}}
    case $id in
    {PREFIX}*)  # the parent waits in DAGMan itself: its node job, once DAGMan is done
        cluster=${{id#{PREFIX}}}
        proc=${{cluster#*.}}
        cluster=${{cluster%%.*}}
        queued=$(condor_q "$cluster" -af JobStatus) || exit {DEFER_STATUS}
        [ -z "$queued" ] || exit {DEFER_STATUS}
        ended=$(condor_history -limit 1 \\
            -constraint "DAGManJobId == $cluster && ProcId == $proc" \\
            -af JobStatus ExitCode) || exit {DEFER_STATUS}
        [ -n "$ended" ] || ended="3 undefined"  # its own parents failed: it never ran
        ;;
    *)
        queued=$(condor_q "$id" -af JobStatus) || exit {DEFER_STATUS}
        [ -z "$queued" ] || exit {DEFER_STATUS}
        ended=$(condor_history "$id" -limit 1 -af JobStatus ExitCode) || exit {DEFER_STATUS}
        ;;
    esac
    [ -n "$ended" ] || continue  # gone from the history too: taken as met
    case $ended in
    "4 0") ok=yes ;;
    *) ok=no ;;
    esac
    case $condition in
    afterok) [ "$ok" = yes ] || exit 1 ;;
    afternotok) [ "$ok" = no ] || exit 1 ;;
    esac
done
exit 0
"""


def dag_states(
    read: Mapping[str, tuple[Mapping[str, Any], NativeState]],
) -> tuple[dict[str, NativeState], set[str]]:
    """The states of DAG-held jobs among the ads read (by ``C.P``), and the ``C.P`` of the
    ads that belong to DAGs (the DAGMan jobs and their nodes), which are no jobs of their
    own. A node's ad wins over its DAGMan job's."""
    states: dict[str, NativeState] = {}
    dagmen: list[tuple[Mapping[str, Any], NativeState]] = []
    taken: set[str] = set()
    for job_id, (ad, state) in read.items():
        dagman = ad.get("DAGManJobId")
        if _is_int(dagman):
            states[dag_id(dagman, ad.get("ProcId"))] = state
            taken.add(job_id)
        elif ad.get("JobUniverse") == SCHEDULER_UNIVERSE:
            dagmen.append((ad, state))
            taken.add(job_id)
    for ad, state in dagmen:
        procs = ad.get("JobbridgeProcs")
        for proc in range(
            procs if isinstance(procs, int) and not isinstance(procs, bool) and procs > 0 else 1
        ):
            states.setdefault(dag_id(ad.get("ClusterId"), proc), _before_node(state))
    return states, taken


def _before_node(dagman: NativeState) -> NativeState:
    """A job whose node DAGMan has not submitted, as its DAGMan job stands."""
    if dagman.word == "Completed":
        if dagman.exit_code == 0:  # the node ran and has left even the history
            return NativeState(word="Completed", started=dagman.started, ended=dagman.ended)
        return NativeState(word=NEVER, ended=dagman.ended)
    if dagman.word == "Removed":
        return NativeState(word="Removed", reason=dagman.reason, ended=dagman.ended)
    if dagman.word == "Held":
        return dagman
    return NativeState(word=WAITING, reason="DAGMan holds it until its parents have ended")


def constraint(query_ids: Sequence[str]) -> str:
    """One ClassAd constraint for plain clusters and DAGs: a DAG's ``dag:C`` asks for the
    DAGMan job C and every job it submitted."""
    terms = []
    for entry in query_ids:
        cluster = split_dag_id(entry)[0]
        if not cluster.isdigit():
            raise ValueError(f"{entry!r} is no HTCondor job id")
        terms.append(f"ClusterId == {cluster}")
        if is_dag(entry):
            terms.append(f"DAGManJobId == {cluster}")
    return " || ".join(terms)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
