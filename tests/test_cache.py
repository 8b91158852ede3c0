"""The job cache through the engine on the local backend: a job that matches an earlier
COMPLETED one is not run and reuses its outputs; a changed input or a failed first job
means running again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, Store
from jobbridge.backends.local import LocalBackend


@pytest.fixture
def cache_engine(isolated_data_dir: Path, local_backend: LocalBackend) -> Iterator[Engine]:
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    engine = Engine(
        store,
        {"local": local_backend},
        settings=EngineSettings(refresh_interval=0.1),
        results_dir=isolated_data_dir / "results",
    )
    yield engine
    engine.close()


def run(engine: Engine, spec: JobSpec, owner: str = "alice") -> Job:
    job = engine.submit(spec, owner=owner)
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase.is_final, f"job still {done.phase}"
    return done


def counted_job(counter: Path, data: Path, *, fail: bool = False, **extra: object) -> JobSpec:
    """Counts its runs in ``counter``; its output is its input upper-cased."""
    script = f'echo run >> "$1"; tr a-z A-Z < input.txt > out.txt; echo done{"; exit 4" * fail}'
    return JobSpec(
        executable="sh",
        arguments=["-c", script, "job", str(counter)],
        stage_in=[f"{data} -> input.txt"],
        stage_out=["out.txt -> out.txt"],
        cache=True,
        **extra,  # type: ignore[arg-type]
    )


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def output(engine: Engine, job: Job) -> str:
    assert engine.results_dir is not None
    return (engine.results_dir / job.id / "out.txt").read_text()


def test_the_second_identical_job_does_not_run_and_has_the_first_outputs(
    cache_engine: Engine, tmp_path: Path
) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("hello\n")
    first = run(cache_engine, counted_job(counter, data))
    assert first.phase is Phase.COMPLETED and first.cached_from is None
    second = run(cache_engine, counted_job(counter, data))
    assert runs(counter) == 1
    assert (second.phase, second.cached_from, second.exit_code) == (
        Phase.COMPLETED,
        first.id,
        0,
    )
    assert second.detail == "CACHED"
    assert output(cache_engine, second) == output(cache_engine, first) == "HELLO\n"
    events = cache_engine.store.events(second.id)
    assert any(e.detail == "CACHED" and first.id in (e.message or "") for e in events)
    # its logs and directory are those of the job that ran
    assert cache_engine.read_output(second.id).decode() == "done\n"
    got = tmp_path / "got"
    got.mkdir()
    assert "out.txt" in cache_engine.get_results(second.id, got)


def test_a_changed_input_runs_again(cache_engine: Engine, tmp_path: Path) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("one\n")
    run(cache_engine, counted_job(counter, data))
    data.write_text("two\n")
    again = run(cache_engine, counted_job(counter, data))
    assert runs(counter) == 2 and again.cached_from is None
    assert output(cache_engine, again) == "TWO\n"
    third = run(cache_engine, counted_job(counter, data))
    assert runs(counter) == 2 and third.cached_from == again.id


def test_a_declared_input_in_the_workspace_is_part_of_the_key(
    cache_engine: Engine, tmp_path: Path
) -> None:
    counter, workspace = tmp_path / "runs", tmp_path / "space"
    workspace.mkdir()
    (workspace / "params.txt").write_text("a\n")
    spec = JobSpec(
        executable="sh",
        arguments=["-c", 'echo run >> "$1"', "job", str(counter)],
        workflow="w",
        workspace=str(workspace),
        inputs=["params.txt"],
        cache=True,
    )
    run(cache_engine, spec)
    assert run(cache_engine, spec).cached_from is not None
    (workspace / "params.txt").write_text("b\n")
    assert run(cache_engine, spec).cached_from is None
    assert runs(counter) == 2


def test_a_failed_job_is_never_reused(cache_engine: Engine, tmp_path: Path) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("x\n")
    failed = run(cache_engine, counted_job(counter, data, fail=True))
    assert failed.phase is Phase.ERROR
    again = run(cache_engine, counted_job(counter, data, fail=True))
    assert again.phase is Phase.ERROR and again.cached_from is None
    assert runs(counter) == 2


def test_without_cache_a_job_always_runs(cache_engine: Engine, tmp_path: Path) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("x\n")
    spec = counted_job(counter, data).replace(cache=False)
    run(cache_engine, spec)
    assert run(cache_engine, spec).cached_from is None
    assert runs(counter) == 2


def test_another_owner_never_gets_the_outputs(cache_engine: Engine, tmp_path: Path) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("x\n")
    run(cache_engine, counted_job(counter, data), owner="alice")
    assert run(cache_engine, counted_job(counter, data), owner="bob").cached_from is None
    assert runs(counter) == 2


def test_a_workflow_may_turn_the_cache_on_for_all_its_jobs(
    cache_engine: Engine, tmp_path: Path
) -> None:
    counter, data = tmp_path / "runs", tmp_path / "data.txt"
    data.write_text("x\n")
    cache_engine.define_workflow("cached", owner="alice", cache=True)
    spec = counted_job(counter, data, workflow="cached").replace(cache=False)
    run(cache_engine, spec)
    second = run(cache_engine, spec)
    assert second.spec.cache and second.cached_from is not None
    assert runs(counter) == 1
