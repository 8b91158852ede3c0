"""Shared by every batch scheduler's tests: awkward specs for golden-file tests of the
generated scripts, the scenarios each backend must pass through the engine, and those it
must pass driven directly (finding submissions by their mark, the scheduler's own output)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from jobbridge import Engine, Job, JobSpec, JobStatus, Phase, Resources, ResourcesNotSupportedError
from jobbridge.backends.base import BackendContext, NativeDependency
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.errors import BackendError
from jobbridge.job import new_job_id
from jobbridge.transport.base import CommandResult

AnyBatchBackend = TypeVar("AnyBatchBackend", bound=BatchBackend)
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
    if spec.array is not None:
        return array_members(spec)
    return [Job(id="jb0case0" + case[:4], spec=spec, backend="cluster", created=FIXED_TIME)]


def array_members(spec: JobSpec, array_id: str = "jb0array0000") -> list[Job]:
    """The members of an array, with ids that stay the same from run to run."""
    assert spec.array is not None
    return [
        Job(
            id=f"jb0member{index:03d}",
            spec=spec,
            backend="cluster",
            created=FIXED_TIME,
            array_id=array_id,
            array_index=index,
        )
        for index in spec.array.indices
    ]


def make_backend(cls: type[AnyBatchBackend], data_dir: Path, **options: object) -> AnyBatchBackend:
    """A backend of the class, named after its kind, that refreshes often and keeps its job
    directories under ``data_dir``."""
    settings = {"min_refresh_interval": 0.3, "accounting_delay": 10, **options}
    return cls(cls.kind, cls.Options.model_validate(settings), BackendContext(data_dir / "jobs"))


def assert_refused(backend: BatchBackend, changes: Mapping[str, Any], field: str) -> None:
    """The backend refuses a spec with these changes, naming the field."""
    with pytest.raises(ResourcesNotSupportedError, match=re.escape(field)):
        backend.check(JobSpec(executable="x").replace(**changes))


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


def run_rendered_script(
    backend: BatchBackend, tmp_path: Path, env: dict[str, str]
) -> dict[str, Any]:
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
    seen: dict[str, Any] = json.loads((workdir / "out 'file'.log").read_text())
    return seen


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
        settings=EngineSettings(refresh_interval=0.2, submit_in_background=False),
        default_backend=backend.name,
    )


class CountingTransport:
    """Wraps a real transport and records every command it runs."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.commands: list[list[str]] = []

    @classmethod
    def around(cls, backend: BatchBackend) -> CountingTransport:
        """Put one around the backend's transport."""
        counting = cls(backend.transport)
        backend.transport = counting  # type: ignore[assignment]
        return counting

    def run(self, argv: list[str], **kwargs: object) -> object:
        self.commands.append(list(argv))
        return self.inner.run(argv, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def commands_of_one_refresh(engine: Engine, counting: CountingTransport) -> list[list[str]]:
    """The commands one refresh of the engine runs."""
    counting.commands.clear()
    engine.refresh()
    return counting.commands


@dataclass(frozen=True)
class Outage:
    """How one of a scheduler's tools answers when it cannot do its work (its server is out
    of reach, say): only calls with the argument ``when``, if given."""

    tool: str
    said: str
    when: str | None = None
    returncode: int = 1

    def hits(self, argv: list[str]) -> bool:
        return argv[0] == self.tool and (self.when is None or self.when in argv)


class FailingTool:
    """Wraps a real transport; the tool of an ``Outage`` answers as it says."""

    def __init__(self, inner: object, outage: Outage) -> None:
        self.inner, self.outage = inner, outage

    @classmethod
    def around(cls, backend: BatchBackend, outage: Outage) -> None:
        backend.transport = cls(backend.transport, outage)  # type: ignore[assignment]

    def run(self, argv: list[str], **kwargs: object) -> object:
        if self.outage.hits(argv):
            return CommandResult(tuple(argv), self.outage.returncode, "", self.outage.said)
        return self.inner.run(argv, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class ScriptedTransport:
    """A transport that answers each tool with recorded text and has the given files."""

    def __init__(
        self, answers: Mapping[str, str], files: Mapping[str, bytes] | None = None
    ) -> None:
        self.answers = dict(answers)
        self.files = dict(files or {})
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], **kwargs: object) -> CommandResult:
        self.commands.append(list(argv))
        return CommandResult(tuple(argv), 0, self.answers[argv[0]], "")

    def read_many(self, paths: list[str], limit: int = 4096) -> dict[str, bytes]:
        return {path: self.files[path] for path in paths if path in self.files}


# -- driving a backend directly ------------------------------------------------------------------


def new_job(spec: JobSpec, created: datetime | None = None) -> Job:
    return Job(id=new_job_id(), spec=spec, backend="cluster", created=created or datetime.now(UTC))


def new_members(spec: JobSpec) -> list[Job]:
    array_id = new_job_id()
    assert spec.array is not None
    return [
        new_job(spec).model_copy(update={"array_id": array_id, "array_index": index})
        for index in spec.array.indices
    ]


def wait_until_ended(backend: BatchBackend, job: Job, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status([job]).get(job.id)
        if isinstance(status, JobStatus) and status.phase.is_final:
            return
        assert time.monotonic() < deadline, f"{job.native_id} never ended: {status}"
        time.sleep(0.2)


def located_by_member(backend: BatchBackend, entry: str, array: str) -> dict[int, list[str]]:
    """What one id of ``parse_located`` stands for, for each member of an array with these
    indices that it stands for at all."""
    members = new_members(JobSpec(executable="x", array=array))
    found = {job.array_index: backend.located_ids(entry, job) for job in members}
    return {index: ids for index, ids in found.items() if index is not None and ids}


class BackendScenarios:
    """What every scheduler must do driven directly, without the engine: ``locate`` finds
    what submissions created by their marks, and what a job script printed outside the
    program is where ``scheduler_output_path`` says. A subclass provides the fixture
    ``backend`` (a fresh one on its scheduler) and the figures below; what the tests leave
    queued is cancelled after them."""

    hold_attribute: ClassVar[str]
    """The attribute that submits a job on hold (set true)."""
    queue_down: ClassVar[Outage]
    """The locate command for the queue failing."""
    accounting_down: ClassVar[Outage]
    """The locate command for ended jobs failing."""
    whole_array: ClassVar[str] = "1,3,4"
    """An array submitted whole, about whose last member and first ``locate`` is asked."""
    lone_array: ClassVar[str] = "5,7,9"
    """An array whose first and last members are handed over alone."""
    last_member_id: ClassVar[str]
    """A pattern that the native id of that array's last member matches."""

    @property
    def held(self) -> dict[str, Any]:
        return {self.hold_attribute: True}

    @pytest.fixture(autouse=True)
    def _cancel_leftovers(self, backend: BatchBackend) -> Iterator[None]:
        self.submitted: list[str] = []
        yield
        if self.submitted:
            backend._run(backend.cancel_command(self.submitted), check=False)

    def submit(self, backend: BatchBackend, *jobs: Job) -> list[str]:
        """Each job alone (array members each as a one-task array)."""
        natives = [backend.submit(job) for job in jobs]
        self.submitted += natives
        return natives

    def submit_array(self, backend: BatchBackend, members: list[Job]) -> list[str]:
        natives = backend.submit_array(members)
        self.submitted += natives
        return natives

    def wait_until_searchable(self, backend: BatchBackend, job: Job) -> None:
        """Until the job has ended where ``locate`` looks for ended jobs."""
        wait_until_ended(backend, job)

    def check_ended_later(self, backend: BatchBackend, job: Job) -> None:
        """What more the scheduler tells of an ended job that ``locate`` found."""

    def test_locate_finds_submissions_whose_native_ids_were_forgotten(
        self, backend: BatchBackend
    ) -> None:
        held = new_job(JobSpec(executable="true", name="9 held", attributes=self.held))
        ended = new_job(JobSpec(executable="true", name="7 quick"))
        never = new_job(JobSpec(executable="true"))
        natives = dict(zip([held.id, ended.id], self.submit(backend, held, ended), strict=True))
        ended = ended.model_copy(update={"native_id": natives[ended.id]})
        self.wait_until_searchable(backend, ended)
        located = backend.locate([held, ended, never])
        assert located.found == {held.id: [natives[held.id]], ended.id: [natives[ended.id]]}
        assert located.complete
        self.check_ended_later(backend, ended)

    def test_locate_finds_array_members_by_their_member_ids(self, backend: BatchBackend) -> None:
        spec = JobSpec(executable="true", attributes=self.held)
        whole = new_members(spec.replace(array=self.whole_array))
        whole_ids = self.submit_array(backend, whole)
        # members handed over one by one carry their array's tag too, each only its own
        alone = new_members(spec.replace(array=self.lone_array))
        alone_ids = self.submit(backend, alone[0], alone[-1])
        located = backend.locate([whole[-1], whole[0], *alone])
        assert located.found == {
            whole[-1].id: [whole_ids[-1]],
            whole[0].id: [whole_ids[0]],
            alone[0].id: [alone_ids[0]],
            alone[-1].id: [alone_ids[1]],
        }
        assert re.search(self.last_member_id, whole_ids[-1]), whole_ids
        assert len(set(whole_ids)) == len(whole_ids)

    def test_locate_returns_every_duplicate(self, backend: BatchBackend) -> None:
        job = new_job(JobSpec(executable="true", attributes=self.held))
        twice = self.submit(backend, job, job)
        assert sorted(backend.locate([job]).found[job.id]) == sorted(twice)
        assert len(set(twice)) == 2

    def test_locate_is_incomplete_when_ended_jobs_cannot_be_searched(
        self, backend: BatchBackend
    ) -> None:
        job = new_job(JobSpec(executable="true", attributes=self.held))
        [native] = self.submit(backend, job)
        FailingTool.around(backend, self.accounting_down)
        located = backend.locate([job])
        assert (located.found, located.complete) == ({job.id: [native]}, False)

    def test_locate_fails_when_the_queue_cannot_be_listed(self, backend: BatchBackend) -> None:
        job = new_job(JobSpec(executable="true", attributes=self.held))
        self.submit(backend, job)
        FailingTool.around(backend, self.queue_down)
        with pytest.raises(BackendError, match=re.escape(self.queue_down.said.strip())):
            backend.locate([job])

    def test_what_the_job_script_printed_is_where_the_scheduler_put_it(
        self, backend: BatchBackend
    ) -> None:
        spec = JobSpec(executable="true", prologue="echo 'said by the script' >&2")
        jobs = [new_job(spec), *new_members(spec.replace(array="2-3"))]
        natives = [*self.submit(backend, jobs[0]), *self.submit_array(backend, jobs[1:])]
        for job, native in zip(jobs, natives, strict=True):
            job = job.model_copy(update={"native_id": native})
            wait_until_ended(backend, job, timeout=60)
            path = backend.scheduler_output_path(job, "stderr")
            assert path is not None and Path(path).read_text() == "said by the script\n", path
            assert Path(backend.scheduler_output_path(job, "stdout") or "").exists()
