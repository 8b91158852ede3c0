"""HTCondor dependencies through DAGMan, against the fake tools (tests/fakes/bin/htcondor):
the DAG files jobbridge writes (golden files), the fake DAGMan itself on a DAG of three
nodes, and dependent jobs through the engine: completed, a failed parent whose children
never run, one status query per refresh, and submissions found again by their mark."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from jobbridge import JobSpec, Phase
from jobbridge.backends.base import NativeDependency
from jobbridge.job import Job, new_job_id, utcnow
from tests.batch_support import (
    CountingTransport,
    case_jobs,
    check_golden,
    commands_of_one_refresh,
    make_engine,
    running_engine,
)
from tests.test_batch_htcondor import STATUS_TOOLS, condor, condor_backend

__all__ = ["condor"]  # the fake pool's fixture, used by name

DEPENDENCIES = [NativeDependency("101.0", "afterok"), NativeDependency("dag:102.0", "afterany")]


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def history(*constraint: str) -> list[dict[str, object]]:
    out = run("condor_history", "-json", *constraint).stdout
    return json.loads(out) if out.strip() else []


# -- what jobbridge writes -------------------------------------------------------------------


def test_dag_files_match_the_golden_files(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path, work_dir="/scratch/jobbridge jobs")
    for case in ("plain", "array"):
        jobs = case_jobs(case)
        files = backend.submission_files(jobs[0], jobs, DEPENDENCIES)
        check_golden("htcondor", f"{case}.dag", files["job.dag"][0])
        assert files["job.sub"][0] == backend.render_submit_description(jobs[0], jobs)
    check_golden("htcondor", "after.sh", files["after.sh"][0])
    assert backend.submission_entry_for(DEPENDENCIES) == "job.dag"
    assert backend.submission_entry_for([]) == "job.sub"
    jobs = case_jobs("array")
    assert backend.submission_command("/j/job.dag", jobs[0], jobs, DEPENDENCIES) == [
        "condor_submit_dag", "-force",
        "-append", '+JobbridgeId = "jb-jb0array0000"',
        "-append", "+JobbridgeArray = True",
        "-append", "+JobbridgeProcs = 10",
        "/j/job.dag",
    ]  # fmt: skip
    assert backend.submission_command("/j/job.sub", jobs[0], jobs, []) == [
        "condor_submit", "-terse", "/j/job.sub"
    ]  # fmt: skip


def test_dag_ids_are_read_and_queried_as_dagman_jobs(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path)
    said = (
        "File for submitting this DAG to HTCondor           : job.dag.condor.sub\n"
        "\nSubmitting job(s).\n1 job(s) submitted to cluster 8.\n"
    )
    assert backend.parse_job_id(said) == "dag:8.0"
    members = case_jobs("array")[:3]
    assert backend.member_ids("dag:8", members) == ["dag:8.0", "dag:8.1", "dag:8.2"]
    assert backend.query_ids(["5.0", "dag:8.0", "dag:8.1"]) == ["5", "dag:8"]
    command = backend.status_command(["5", "dag:8"])
    assert command[0] == "condor_q"
    assert command[-2:] == ["-constraint", "ClusterId == 5 || ClusterId == 8 || DAGManJobId == 8"]
    assert backend.status_command(["5"])[-1] == "5", "without DAGs the command stays as it was"
    assert backend.cancel_command(["dag:8.1", "dag:8.2"]) == ["condor_rm", "8"]


def test_a_dagman_job_that_ended_without_its_node_means_the_parents_failed(
    tmp_path: Path,
) -> None:
    backend = condor_backend(tmp_path)
    ads = [
        {"ClusterId": 8, "ProcId": 0, "JobUniverse": 7, "JobStatus": 4, "ExitCode": 1},
        {"ClusterId": 9, "ProcId": 0, "JobUniverse": 7, "JobStatus": 2, "JobbridgeProcs": 2},
        {"ClusterId": 12, "ProcId": 1, "DAGManJobId": 9, "JobStatus": 2},
    ]
    states = backend.parse_accounting(json.dumps(ads))
    assert states["dag:8.0"].word == "ParentsFailed"
    assert backend.to_status(states["dag:8.0"]).detail == "DEPENDENCY_NEVER_SATISFIED"
    assert states["dag:9.0"].word == "WaitingForParents"  # its node not submitted yet
    assert states["dag:9.1"].word == "Running"  # the node job's own ad
    assert not {"8.0", "9.0", "12.1"} & set(states)


# -- the fake DAGMan -------------------------------------------------------------------------


@pytest.mark.parametrize("a_fails", [False, True])
def test_the_fake_dagman_runs_a_dag_of_three_in_order(
    condor: Path, tmp_path: Path, a_fails: bool
) -> None:
    stamps = tmp_path / "stamps"
    for name in "ABC":
        code = 3 if name == "A" and a_fails else 0
        (tmp_path / f"{name}.sh").write_text(f"#!/bin/sh\necho {name} >> {stamps}\nexit {code}\n")
        (tmp_path / f"{name}.sub").write_text(f"executable = {name}.sh\nlog = nodes.log\nqueue\n")
    (tmp_path / "abc.dag").write_text(
        "# A, then B and C\nJOB A A.sub\nJOB B B.sub\nJOB C C.sub\nPARENT A CHILD B C\n"
        'SET_JOB_ATTR JobbridgeId = "jb-dag"\n'
    )
    submitted = run("condor_submit_dag", "abc.dag", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    dagman = submitted.stdout.split("submitted to cluster ")[1].split(".")[0]
    queue = json.loads(run("condor_q", "-json", dagman).stdout)
    assert [(ad["JobUniverse"], ad["JobbridgeId"]) for ad in queue] == [(7, "jb-dag")]
    deadline = time.monotonic() + 30
    while run("condor_q", dagman, "-af", "JobStatus").stdout.strip():
        assert time.monotonic() < deadline, "DAGMan never ended"
        time.sleep(0.2)
    [ended] = history(dagman)
    nodes = history("-constraint", f"DAGManJobId == {dagman}")
    if a_fails:
        assert stamps.read_text() == "A\n", "B and C must never run"
        assert ended["ExitCode"] == 1
        assert [node["DAGNodeName"] for node in nodes] == ["A"]
        assert (tmp_path / "abc.dag.rescue001").exists()
    else:
        assert stamps.read_text().split()[0] == "A"
        assert sorted(stamps.read_text().split()[1:]) == ["B", "C"]
        assert ended["ExitCode"] == 0
        assert sorted(str(node["DAGNodeName"]) for node in nodes) == ["A", "B", "C"]
    again = run("condor_submit_dag", "abc.dag", cwd=tmp_path)
    assert again.returncode != 0 and "already exists" in again.stderr


# -- through the engine ---------------------------------------------------------------------


def test_a_dag_of_three_jobs_completes_through_the_engine(
    condor: Path, isolated_data_dir: Path, tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps"
    with next(running_engine(condor_backend(isolated_data_dir), isolated_data_dir)) as engine:
        first = engine.submit(shell(f"sleep 1; echo A >> {stamps}"))
        left = engine.submit(shell(f"echo B >> {stamps}", first.id))
        right = engine.submit(shell(f"echo C >> {stamps}; exit 4", first.id, "afterany"))
        last = engine.submit(shell(f"echo D >> {stamps}", left.id))
        assert [job.native_id and job.native_id[:4] for job in (left, right, last)] == ["dag:"] * 3
        done = engine.wait([j.id for j in (first, left, right, last)], timeout=60)
    assert [(j.phase, j.exit_code) for j in done] == [
        (Phase.COMPLETED, 0),
        (Phase.COMPLETED, 0),
        (Phase.ERROR, 4),
        (Phase.COMPLETED, 0),
    ]
    order = stamps.read_text().split()
    assert order[0] == "A" and order.index("B") < order.index("D") and sorted(order) == list("ABCD")
    for job in done[1:]:
        dagman = (job.native_id or "").removeprefix("dag:").split(".")[0]
        [node] = history("-constraint", f"DAGManJobId == {dagman}")
        assert node["JobbridgeId"] == f"jb-{job.id}", "the node job carries the mark too"
        assert engine.get(job.id).started is not None


def test_children_of_a_failed_parent_never_run_and_end_aborted(
    condor: Path, isolated_data_dir: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    with next(running_engine(condor_backend(isolated_data_dir), isolated_data_dir)) as engine:
        parent = engine.submit(shell("sleep 1; exit 2"))
        children = [engine.submit(shell(f"touch {ran}", parent.id)) for _ in range(2)]
        grandchild = engine.submit(shell(f"touch {ran}", children[0].id))
        done = engine.wait([j.id for j in (parent, *children, grandchild)], timeout=60)
    assert (done[0].phase, done[0].exit_code) == (Phase.ERROR, 2)
    for job in done[1:]:
        assert (job.phase, job.detail) == (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED")
        assert job.started is None
    assert not ran.exists()
    for job in children:
        dagman = (engine.get(job.id).native_id or "").removeprefix("dag:").split(".")[0]
        assert history("-constraint", f"DAGManJobId == {dagman}") == [], "no node ever ran"


def test_dagman_itself_refuses_the_node_of_a_failed_parent(
    condor: Path, isolated_data_dir: Path
) -> None:
    """Without the engine settling the child: DAGMan's PRE script refuses it, and the
    DAGMan job's end without a node is read as the dependency's failure."""
    backend = condor_backend(isolated_data_dir)
    parent = job_of(shell("exit 3"))
    parent_id = backend.submit(parent)
    child = job_of(shell("true"))
    child_id = backend.submit(child, [NativeDependency(parent_id, "afterok")])
    child = child.model_copy(update={"native_id": child_id})
    deadline = time.monotonic() + 30
    while not (status := backend.status([child])[child.id]).phase.is_final:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert (status.phase, status.detail) == (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED")  # type: ignore[union-attr]


def test_one_refresh_asks_once_about_plain_and_dag_held_jobs(
    condor: Path, isolated_data_dir: Path
) -> None:
    backend = condor_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        parents = [engine.submit(shell("sleep 30")) for _ in range(3)]
        children = [engine.submit(shell("true", parent.id)) for parent in parents]
        engine.refresh()
        time.sleep(backend.options.min_refresh_interval)
        commands = commands_of_one_refresh(engine, counting)
        status = [c for c in commands if c[0] in STATUS_TOOLS]
        assert len(status) == 1, status
        assert status[0][-2] == "-constraint"
        assert all(engine.get(job.id).phase is Phase.QUEUED for job in children)
        for job in [*children, *parents]:
            engine.cancel(job.id)


def test_locate_finds_a_dag_submission_by_its_mark(condor: Path, isolated_data_dir: Path) -> None:
    backend = condor_backend(isolated_data_dir)
    parent = job_of(shell("sleep 30"))
    parent_id = backend.submit(parent)
    child = job_of(shell("true"))
    child_id = backend.submit(child, [NativeDependency(parent_id, "afterok")])
    located = backend.locate([parent, child])
    assert located.found == {parent.id: [parent_id], child.id: [child_id]}
    run("condor_rm", parent_id.split(".")[0], child_id.removeprefix("dag:").split(".")[0])


def shell(script: str, after: str | None = None, condition: str = "afterok") -> JobSpec:
    depends = [f"{condition}:{after}"] if after else []
    return JobSpec(executable="sh", arguments=["-c", script], depends_on=depends)


def job_of(spec: JobSpec) -> Job:
    return Job(id=new_job_id(), spec=spec, backend="htcondor", created=utcnow())
