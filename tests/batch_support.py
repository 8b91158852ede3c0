"""Shared by every batch scheduler's tests: awkward specs for golden-file tests of the
generated scripts, and the scenarios each backend must pass through the engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, Job, JobSpec, Phase, Resources
from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.base import BatchBackend

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("JOBBRIDGE_UPDATE_GOLDEN") == "1"

HOSTILE_ARGUMENTS = [
    "$(touch pwned)",
    "`touch pwned`",
    "a b",
    "it's",
    'say "hi"',
    "new\nline",
    "; touch pwned",
    "*",
    "$HOME",
    "\\",
]
HOSTILE_VALUE = "$(touch pwned) 'single' \"double\" `tick` ;\nnext line \\"

CASES: dict[str, JobSpec] = {
    "plain": JobSpec(executable="echo", arguments=["hello"]),
    "awkward": JobSpec(
        executable="/opt/my tools/run it's.sh",
        arguments=HOSTILE_ARGUMENTS,
        name="it's a $(test); job\nsecond line",
        environment={"TRICKY": HOSTILE_VALUE},
        directory="/data/my dir/$(x)/it's",
        stdin="in put.txt",
        stdout="out 'file'.log",
        stderr="err\nfile.log",
        prologue="module load gcc\necho 'prologue ran'",
        epilogue="echo epilogue ran",
    ),
    "resources": JobSpec(
        executable="mpi_app",
        arguments=["--steps", "100"],
        name="mpi run",
        resources=Resources(
            nodes=2,
            processes_per_node=4,
            cores_per_process=2,
            memory="16G",
            walltime="1-02:03:04",
        ),
        queue="long",
        account="astro",
        reservation="maint-window",
        launcher="mpirun",
        inherit_environment=False,
    ),
    "array": JobSpec(executable="work", arguments=["--part"], array="0-9%3"),
}
DEPENDENCIES = [NativeDependency("1001", "afterok"), NativeDependency("1002", "afterany")]
FIXED_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def case_jobs(case: str) -> list[Job]:
    spec = CASES[case]
    job = Job(id="jb0case0" + case[:4], spec=spec, backend="cluster", created=FIXED_TIME)
    if spec.array is None:
        return [job]
    return [
        job.model_copy(
            update={"id": f"jb0member{i:03d}", "array_id": "jb0array0000", "array_index": i}
        )
        for i in spec.array.indices
    ]


def render_case(backend: BatchBackend, case: str, dependencies: bool = False) -> str:
    jobs = case_jobs(case)
    return backend.render_script(jobs[0], jobs, DEPENDENCIES if dependencies else [])


def check_golden(scheduler: str, name: str, text: str) -> None:
    """Compare with tests/golden/SCHEDULER/NAME; JOBBRIDGE_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / scheduler / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with JOBBRIDGE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; rerun with JOBBRIDGE_UPDATE_GOLDEN=1"


def run_rendered_script(backend: BatchBackend, tmp_path: Path, env: dict[str, str]) -> dict:
    """Render a hostile spec, run it with bash as a scheduler would, and return what the
    program saw: its arguments, a variable, its working directory."""
    workdir = tmp_path / "my dir" / "$(x)" / "it's"
    workdir.mkdir(parents=True)
    (workdir / "in put.txt").write_text("from stdin\n")
    program = (
        "import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
        "'tricky': os.environ['TRICKY'], 'cwd': os.getcwd(), 'stdin': sys.stdin.read()}))"
    )
    spec = CASES["awkward"].replace(
        executable="python3",
        arguments=["-c", program, *HOSTILE_ARGUMENTS],
        directory=str(workdir),
        stdout="out 'file'.log",
    )
    job = Job(id="jb0runme0000", spec=spec, backend="cluster", created=FIXED_TIME)
    script = tmp_path / "job.sh"
    script.write_text(backend.render_script(job, [job], []))
    done = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("pwned"))
    return json.loads((workdir / "out 'file'.log").read_text())


class BatchScenarios:
    """What every scheduler must show through the engine. A subclass provides the fixture
    ``engine`` (whose default backend is the scheduler) and may tune the figures below."""

    timeout: float = 120.0
    walltime: int = 60
    """Seconds; SLURM cannot go below a minute."""
    walltime_timeout: float = 180.0

    def wait(self, engine: Engine, jobs: list[Job], timeout: float | None = None) -> list[Job]:
        done = engine.wait([job.id for job in jobs], timeout=timeout or self.timeout)
        still = [job for job in done if job.phase.is_active]
        assert not still, f"still active: {[(j.id, j.native_id, j.phase) for j in still]}"
        return done

    def wait_for_phase(self, engine: Engine, job: Job, phase: Phase, timeout: float = 60) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            engine.refresh()
            job = engine.get(job.id)
            if job.phase is phase:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job.id} is {job.phase}, never reached {phase}")

    def test_a_completed_job(self, engine: Engine) -> None:
        job = engine.submit(JobSpec(executable="echo", arguments=["hello", "cluster"]))
        [done] = self.wait(engine, [job])
        assert (done.phase, done.exit_code) == (Phase.COMPLETED, 0)
        assert engine.read_output(done.id) == b"hello cluster\n"
        assert done.started is not None and done.ended is not None

    def test_a_failing_job_keeps_its_exit_code_and_stderr(self, engine: Engine) -> None:
        spec = JobSpec(executable="sh", arguments=["-c", "echo partial; echo boom >&2; exit 3"])
        [done] = self.wait(engine, [engine.submit(spec)])
        assert (done.phase, done.exit_code) == (Phase.ERROR, 3)
        assert engine.read_output(done.id, "stderr") == b"boom\n"
        assert engine.read_output(done.id) == b"partial\n"

    def test_metacharacters_reach_the_program_verbatim(
        self, engine: Engine, tmp_path: Path
    ) -> None:
        program = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['TRICKY']]))"
        spec = JobSpec(
            executable="python3",
            arguments=["-c", program, *HOSTILE_ARGUMENTS],
            name="it's $(touch pwned)",
            environment={"TRICKY": HOSTILE_VALUE},
            directory=str(tmp_path),
        )
        [done] = self.wait(engine, [engine.submit(spec)])
        assert done.phase is Phase.COMPLETED, engine.read_output(done.id, "stderr")
        assert json.loads(engine.read_output(done.id)) == [HOSTILE_ARGUMENTS, HOSTILE_VALUE]
        assert not list(tmp_path.rglob("pwned"))

    def test_portable_variables(self, engine: Engine) -> None:
        names = [
            "JOBBRIDGE_JOB_ID",
            "JOBBRIDGE_JOB_NAME",
            "JOBBRIDGE_WORKDIR",
            "JOBBRIDGE_SUBMIT_HOST",
            "JOBBRIDGE_NODELIST",
        ]
        program = (
            "import json, os, sys; print(json.dumps({n: os.environ.get(n) for n in sys.argv[1:]}))"
        )
        spec = JobSpec(executable="python3", arguments=["-c", program, *names], name="vars")
        [done] = self.wait(engine, [engine.submit(spec)])
        seen = json.loads(engine.read_output(done.id))
        assert all(seen[name] for name in names), seen
        assert seen["JOBBRIDGE_JOB_NAME"] == "vars"
        assert seen["JOBBRIDGE_JOB_ID"] in (done.native_id or "")

    def test_cancel_while_queued(self, engine: Engine) -> None:
        blocker = engine.submit(JobSpec(executable="sleep", arguments=["120"]))
        waiting = engine.submit(JobSpec(executable="true", depends_on=[blocker.id]))
        assert waiting.is_submitted, "the scheduler should hold the dependency itself"
        assert engine.get(waiting.id).phase is Phase.QUEUED
        cancelled = engine.cancel(waiting.id)
        engine.cancel(blocker.id)
        assert cancelled.phase is Phase.ABORTED
        self.wait(engine, [blocker, waiting])
        assert engine.get(waiting.id).started is None

    def test_cancel_while_running(self, engine: Engine) -> None:
        job = engine.submit(JobSpec(executable="sleep", arguments=["300"]))
        self.wait_for_phase(engine, job, Phase.EXECUTING)
        assert engine.cancel(job.id).phase is Phase.ABORTED
        time.sleep(2 * engine.backend().options.min_refresh_interval + 1)
        engine.refresh()
        assert engine.get(job.id).phase is Phase.ABORTED

    def test_a_held_job(self, engine: Engine) -> None:
        blocker = engine.submit(JobSpec(executable="sleep", arguments=["60"]))
        spec = JobSpec(executable="echo", arguments=["released"])
        job = engine.submit(spec.replace(depends_on=[f"afterany:{blocker.id}"]))
        held = engine.hold(job.id)
        assert held.phase is Phase.HELD
        engine.cancel(blocker.id)
        time.sleep(engine.backend().options.min_refresh_interval + 1)
        engine.refresh()
        assert engine.get(job.id).phase is Phase.HELD, "a held job must stay held"
        engine.cancel(job.id)

    def test_an_array_of_ten_with_one_failing_member(self, engine: Engine) -> None:
        script = 'echo "member $JOBBRIDGE_ARRAY_INDEX"; [ "$JOBBRIDGE_ARRAY_INDEX" != 7 ]'
        members = engine.submit_array(
            JobSpec(executable="sh", arguments=["-c", script], array="0-9")
        )
        assert len({m.native_id for m in members}) == 10
        done = self.wait(engine, members)
        assert [m.array_index for m in done] == list(range(10))
        for member in done:
            expected = Phase.ERROR if member.array_index == 7 else Phase.COMPLETED
            assert member.phase is expected, (member.array_index, member.phase, member.detail)
            assert engine.read_output(member.id) == f"member {member.array_index}\n".encode()
        assert next(m for m in done if m.array_index == 7).exit_code == 1

    def test_a_dependency_chain(self, engine: Engine, tmp_path: Path) -> None:
        stamp = tmp_path / "stamps"
        first = engine.submit(
            JobSpec(
                executable="sh",
                arguments=["-c", f"sleep 2; date +%s.%N >> {stamp}; echo A >> {stamp}"],
            )
        )
        second = engine.submit(
            JobSpec(executable="sh", arguments=["-c", f"echo B >> {stamp}"], depends_on=[first.id])
        )
        self.wait(engine, [first, second])
        assert stamp.read_text().split()[1:] == ["A", "B"]
        first, second = engine.get(first.id), engine.get(second.id)
        assert second.phase is Phase.COMPLETED
        assert first.ended is not None and second.started is not None
        assert second.started >= first.ended.replace(microsecond=0)

    def test_a_failed_parent_means_the_child_never_runs(self, engine: Engine) -> None:
        parent = engine.submit(JobSpec(executable="sh", arguments=["-c", "sleep 1; exit 2"]))
        child = engine.submit(JobSpec(executable="true", depends_on=[parent.id]))
        done = self.wait(engine, [parent, child])
        assert done[0].phase is Phase.ERROR
        assert (done[1].phase, done[1].detail) == (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED")
        assert done[1].started is None

    @pytest.mark.slow
    def test_walltime_ends_a_job_as_timeout(self, engine: Engine) -> None:
        spec = JobSpec(executable="sleep", arguments=["600"], resources={"walltime": self.walltime})
        [done] = self.wait(engine, [engine.submit(spec)], timeout=self.walltime_timeout)
        assert (done.phase, done.detail) == (Phase.ERROR, "TIMEOUT")


def running_engine(backend: BatchBackend, data_dir: Path) -> Iterator[Engine]:
    """For a fixture: an engine on the backend; what it left running is cancelled after."""
    engine = make_engine(backend, data_dir)
    yield engine
    for job in engine.store.active():
        if job.is_submitted:
            engine.backend().cancel(job)
    engine.close()


def make_engine(backend: BatchBackend, data_dir: Path) -> Engine:
    from jobbridge import EngineSettings, Store

    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    return Engine(
        store,
        {backend.name: backend},
        settings=EngineSettings(refresh_interval=0.2),
        default_backend=backend.name,
    )


class CountingTransport:
    """Wraps a real transport and records every command it runs."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], **kwargs: object) -> object:
        self.commands.append(list(argv))
        return self.inner.run(argv, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)
