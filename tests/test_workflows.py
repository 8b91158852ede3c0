"""Workflows and their shared workspace, and hooks as REANA users rely on them, through the
engine on the local backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, SpecError, Store
from jobbridge.backends.local import LocalBackend
from jobbridge.phase import ACTIVE_PHASES


@pytest.fixture
def wf_engine(isolated_data_dir: Path, local_backend: LocalBackend) -> Iterator[Engine]:
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    engine = Engine(
        store,
        {"local": local_backend},
        settings=EngineSettings(refresh_interval=0.1),
        results_dir=isolated_data_dir / "results",
    )
    yield engine
    engine.close()


def run(engine: Engine, spec: JobSpec, owner: str | None = "alice") -> Job:
    job = engine.submit(spec, owner=owner)
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase.is_final, f"job still {done.phase}"
    return done


def test_jobs_of_a_workflow_share_its_workspace(wf_engine: Engine, tmp_path: Path) -> None:
    workspace = tmp_path / "space"
    write = JobSpec(
        executable="sh",
        arguments=["-c", 'echo "$JOBBRIDGE_WORKFLOW" > "$JOBBRIDGE_WORKSPACE/step1.txt"'],
        workflow="analysis",
        workspace=str(workspace),
    )
    first = run(wf_engine, write)
    assert first.phase is Phase.COMPLETED, first.message
    read = JobSpec(
        executable="sh",
        arguments=["-c", 'cat "$JOBBRIDGE_WORKSPACE/step1.txt"'],
        workflow="analysis",
    )
    second = run(wf_engine, read)
    assert second.phase is Phase.COMPLETED, second.message
    assert second.spec.workspace == str(workspace)  # the workflow's, recorded with the job
    assert wf_engine.read_output(second.id).decode() == "analysis\n"
    assert {job.id for job in wf_engine.store.find(workflow="analysis")} == {first.id, second.id}
    assert wf_engine.store.find(workflow="other") == []


def test_a_workflow_without_a_workspace_gets_one_beside_the_jobs(
    wf_engine: Engine, isolated_data_dir: Path
) -> None:
    job = run(
        wf_engine,
        JobSpec(executable="sh", arguments=["-c", 'pwd > /dev/null; echo "$JOBBRIDGE_WORKSPACE"'],
                workflow="w1"),
    )  # fmt: skip
    expected = isolated_data_dir / "workspaces" / "alice" / "w1"
    assert job.spec.workspace == str(expected)
    assert wf_engine.read_output(job.id).decode() == f"{expected}\n"
    assert expected.is_dir()


def test_another_workspace_for_a_known_workflow_is_refused(
    wf_engine: Engine, tmp_path: Path
) -> None:
    run(wf_engine, JobSpec(executable="true", workflow="w", workspace=str(tmp_path / "a")))
    with pytest.raises(SpecError, match="has the workspace"):
        wf_engine.submit(
            JobSpec(executable="true", workflow="w", workspace=str(tmp_path / "b")), owner="alice"
        )


def test_cancel_a_workflow_cancels_its_active_jobs_only(wf_engine: Engine) -> None:
    sleeper = JobSpec(executable="sleep", arguments=["60"], workflow="long")
    done = run(wf_engine, JobSpec(executable="true", workflow="long"))
    running = [wf_engine.submit(sleeper, owner="alice") for _ in range(2)]
    other = wf_engine.submit(JobSpec(executable="sleep", arguments=["60"]), owner="alice")
    try:
        cancelled = wf_engine.cancel_workflow("long")
        assert sorted(job.id for job in cancelled) == sorted(job.id for job in running)
        assert all(job.phase is Phase.ABORTED for job in cancelled)
        events = wf_engine.store.events(running[0].id)
        assert events[-1].detail == "CANCELLED"  # through the normal cancel path
        assert wf_engine.get(done.id).phase is Phase.COMPLETED
        assert wf_engine.get(other.id).phase in ACTIVE_PHASES
    finally:
        wf_engine.cancel(other.id)


def test_a_raising_hook_is_an_event_and_the_job_completes(wf_engine: Engine) -> None:
    seen: list[tuple[str, Phase]] = []

    def before(job: Job) -> None:
        seen.append(("before", wf_engine.get(job.id).phase))  # the row is in the store
        raise RuntimeError("before-hook broke")

    def after(job: Job) -> None:
        seen.append(("after", wf_engine.get(job.id).phase))
        raise ValueError("after-hook broke")

    def changed(job: Job, old: Phase) -> None:
        seen.append(("phase", job.phase))
        raise KeyError("phase-hook broke")

    wf_engine.hooks.on_before_submit(before)
    wf_engine.hooks.on_after_submit(after)
    wf_engine.hooks.on_phase_change(changed)
    job = run(wf_engine, JobSpec(executable="echo", arguments=["fine"]))
    assert job.phase is Phase.COMPLETED
    assert seen[0] == ("before", Phase.QUEUED) and seen[1][0] == "after"
    assert ("phase", Phase.COMPLETED) in seen
    failures = [e.message for e in wf_engine.store.events(job.id) if e.detail == "HOOK_FAILED"]
    assert any("before-submit" in m and "RuntimeError: before-hook broke" in m for m in failures)
    assert any("after-submit" in m and "ValueError: after-hook broke" in m for m in failures)
    assert any("phase-change" in m and "phase-hook broke" in m for m in failures)
    # the engine goes on: the next job runs too
    assert run(wf_engine, JobSpec(executable="true")).phase is Phase.COMPLETED


@pytest.mark.slurm
def test_a_workflow_on_slurm_shares_its_workspace_and_gets_a_secret(
    isolated_data_dir: Path,
) -> None:
    from jobbridge.config import SecretsSettings
    from jobbridge.secrets import SecretKind, new_key
    from tests.conftest import cluster_env
    from tests.test_batch_slurm import slurm_backend

    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir)
    engine = Engine(
        Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}"),
        {backend.name: backend},
        settings=EngineSettings(refresh_interval=0.2),
        default_backend=backend.name,
        secrets=SecretsSettings(key=new_key()),
    )
    try:
        engine.secrets.add("alice", "PASSWORD", SecretKind.ENV, b"on slurm; $(id) 'x'")
        write = JobSpec(
            executable="sh",
            arguments=["-c", 'printf %s "$PASSWORD" | wc -c > "$JOBBRIDGE_WORKSPACE/n"'],
            workflow="onslurm",
            secrets=["PASSWORD"],
        )
        first = engine.submit(write, owner="alice")
        read = JobSpec(
            executable="cat",
            arguments=["n"],
            workflow="onslurm",
            directory=first.spec.workspace,
            depends_on=[first.id],
        )
        second = engine.submit(read, owner="alice")
        done = engine.wait([first.id, second.id], timeout=120)
        assert [job.phase for job in done] == [Phase.COMPLETED, Phase.COMPLETED], done
        assert first.spec.workspace == str(isolated_data_dir / "workspaces" / "alice" / "onslurm")
        assert engine.read_output(second.id).decode().strip() == "19"
        assert [job.id for job in engine.store.find(workflow="onslurm")] == [second.id, first.id]
        script = (isolated_data_dir / "jobs" / first.id).rglob("*")
        assert not any(b"on slurm; $(id)" in p.read_bytes() for p in script if p.is_file())
    finally:
        for job in engine.store.active():
            if job.is_submitted:
                engine.backend().cancel(job)
        engine.close()


def test_the_command_line_lists_and_cancels_a_workflow(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobbridge.cli import cli

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    space = tmp_path / "space"
    ids = [
        invoke("submit", "-q", "--workflow", "wf", "--workspace", str(space), "--", "sleep", "60"),
        invoke("submit", "-q", "--workflow", "wf", "--", "sleep", "60"),
    ]
    ids = [text.strip() for text in ids]
    other = invoke("submit", "-q", "--", "sleep", "60").strip()
    try:
        listed = json.loads(invoke("list", "--workflow", "wf", "--json"))
        assert sorted(job["id"] for job in listed) == sorted(ids)
        assert {job["workflow"] for job in listed} == {"wf"}
        assert {job["spec"]["workspace"] for job in listed} == {str(space)}
        said = invoke("cancel", "--workflow", "wf")
        assert all(job_id in said for job_id in ids) and other not in said
        status = json.loads(invoke("status", *ids, other, "--json"))
        assert [job["phase"] for job in status[:2]] == ["ABORTED", "ABORTED"]
        assert status[2]["phase"] in {"QUEUED", "EXECUTING"}
        assert "no active jobs" in CliRunner().invoke(cli, ["cancel", "--workflow", "wf"]).output
    finally:
        CliRunner().invoke(cli, ["cancel", other])
