"""SLURM against the real test cluster (slurmctld, slurmd, slurmdbd), plus its pure parts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, JobStatus, Phase
from jobbridge.backends.base import BackendContext, Missing
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.job import Job, utcnow
from tests.batch_support import (
    CASES,
    BackendScenarios,
    BatchScenarios,
    CountingTransport,
    Outage,
    ScriptedTransport,
    assert_refused,
    check_golden,
    commands_of_one_refresh,
    make_backend,
    make_engine,
    new_members,
    render_case,
    run_rendered_script,
    running_engine,
)
from tests.conftest import cluster_env


def slurm_backend(data_dir: Path, **options: object) -> SlurmBackend:
    return make_backend(SlurmBackend, data_dir, **options)


@pytest.fixture
def engine(isolated_data_dir: Path) -> Iterator[Engine]:
    cluster_env("slurm")
    yield from running_engine(slurm_backend(isolated_data_dir), isolated_data_dir)


@pytest.mark.slurm
class TestSlurm(BatchScenarios):
    walltime = 60
    walltime_timeout = 180


@pytest.mark.slurm
def test_without_accounting_ended_jobs_are_resolved_from_scontrol_or_exit_files(
    isolated_data_dir: Path,
) -> None:
    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir, accounting=False)
    with make_engine(backend, isolated_data_dir) as engine:
        good = engine.submit(JobSpec(executable="true"))
        bad = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 4"]))
        done = engine.wait([good.id, bad.id], timeout=60)
    assert [(j.phase, j.exit_code) for j in done] == [(Phase.COMPLETED, 0), (Phase.ERROR, 4)]


@pytest.mark.slurm
def test_capped_arrays_and_lone_members_run_natively(isolated_data_dir: Path) -> None:
    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir, max_jobs_in_flight=2)
    with make_engine(backend, isolated_data_dir) as engine:
        script = 'echo "$JOBBRIDGE_ARRAY_INDEX"'
        members = engine.submit_array(
            JobSpec(executable="sh", arguments=["-c", script], array="3-6")
        )
        assert [m.native_id is not None for m in members] == [True, True, False, False]
        assert members[0].native_id and members[0].native_id.endswith("_3")
        done = engine.wait([m.id for m in members], timeout=120)
    assert [engine_output(backend, m) for m in done] == ["3\n", "4\n", "5\n", "6\n"]
    assert all(m.phase is Phase.COMPLETED for m in done)


def engine_output(backend: SlurmBackend, job: object) -> str:
    return backend.read_output(job, "stdout").decode()  # type: ignore[arg-type]


@pytest.mark.slurm
def test_one_refresh_of_200_active_jobs_runs_one_status_command(isolated_data_dir: Path) -> None:
    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="true", attributes={"slurm.hold": True})
        jobs = [engine.submit(spec) for _ in range(200)]
        try:
            commands = commands_of_one_refresh(engine, counting)
            status_commands = [c for c in commands if c[0] in ("squeue", "sacct", "scontrol")]
            assert len(status_commands) == 1, status_commands
            assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)
        finally:
            backend._run(["scancel", *[job.native_id or "" for job in jobs]])


@pytest.mark.slurm
def test_a_job_purged_from_the_queue_is_resolved_from_accounting(isolated_data_dir: Path) -> None:
    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir)
    with make_engine(backend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 6"]))
        native = job.native_id or ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not backend._run(
            ["sacct", "-n", "-X", "-j", native, "-o", "State"], check=False
        ).stdout.strip().startswith("FAILED"):
            time.sleep(0.2)
        # the queue forgets the job (as sites with a short MinJobAge do) and no exit file exists
        Path(backend.exit_code_path(job)).unlink()
        backend.status_command = lambda ids: ["squeue", "--noheader", "--jobs=999999999"]  # type: ignore[method-assign]
        [done] = engine.wait([job.id], timeout=30)
    assert (done.phase, done.exit_code) == (Phase.ERROR, 6)


def test_scripts_match_the_golden_files(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path, work_dir="/scratch/jobbridge jobs")
    for case in CASES:
        check_golden("slurm", f"{case}.sh", render_case(backend, case))
    check_golden("slurm", "dependencies.sh", render_case(backend, "plain", dependencies=True))


def test_the_generated_script_passes_everything_verbatim(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path)
    seen = run_rendered_script(
        backend,
        tmp_path,
        {"SLURM_JOB_ID": "42", "SLURM_SUBMIT_HOST": "login", "SLURM_JOB_NODELIST": "node1"},
    )
    assert seen["stdin"] == "from stdin\n"
    assert seen["cwd"].endswith("it's")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"queue": "long; rm -rf /"}, "queue"),
        ({"account": "a b"}, "account"),
        ({"account": "a", "project": "b"}, "project"),
        ({"attributes": {"slurm.Bad_Name": "x"}}, "attributes.slurm.Bad_Name"),
        ({"attributes": {"slurm.constraint": "x\ny"}}, "attributes.slurm.constraint"),
    ],
)
def test_what_a_directive_cannot_carry_is_refused(
    tmp_path: Path, changes: dict, field: str
) -> None:
    assert_refused(slurm_backend(tmp_path), changes, field)


def test_parsing_squeue_and_sacct() -> None:
    backend = SlurmBackend("slurm", SlurmBackend.Options(), BackendContext(Path("/x")))
    queue = backend.parse_status(
        "12|PENDING|JobHeldUser|0|0\n13_[2-4,7%2]|PENDING|None|0|0\n14|RUNNING|None|1767225600|0\n"
    )
    assert queue["12"].reason == "JobHeldUser"
    assert set(queue) == {"12", "13_2", "13_3", "13_4", "13_7", "14"}
    assert queue["14"].started is not None and queue["14"].started.year == 2026
    assert backend.to_status(queue["12"]).phase is Phase.HELD
    accounting = backend.parse_accounting(
        "20|COMPLETED|0:0|1|2\n21|FAILED|3:0|1|2\n22|CANCELLED by 0|0:15|1|2\n"
        "23|OUT_OF_MEMORY|0:125|1|2\n24|TIMEOUT|0:0|1|Unknown\n"
    )
    summary = {
        k: (backend.to_status(v).phase, backend.to_status(v).detail, v.exit_code)
        for k, v in accounting.items()
    }
    assert summary == {
        "20": (Phase.COMPLETED, None, 0),
        "21": (Phase.ERROR, None, 3),
        "22": (Phase.ABORTED, "CANCELLED", 143),
        "23": (Phase.ERROR, "OUT_OF_MEMORY", 253),
        "24": (Phase.ERROR, "TIMEOUT", 0),
    }
    assert backend.to_status(NativeState("BRAND_NEW")).phase is Phase.UNKNOWN
    scontrol = backend.parse_accounting(
        "JobId=31 ArrayJobId=30 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode ExitCode=2:0\n"
    )
    assert scontrol["30_1"].exit_code == 2


@pytest.mark.slurm
class TestSlurmBackend(BackendScenarios):
    hold_attribute = "slurm.hold"
    queue_down = Outage("squeue", "squeue: error: Unable to contact slurm controller")
    accounting_down = Outage("sacct", "sacct: error: Problem talking to the database")
    last_member_id = r"_4$"

    @pytest.fixture
    def backend(self, isolated_data_dir: Path) -> SlurmBackend:
        cluster_env("slurm")
        return slurm_backend(isolated_data_dir)


def test_members_handed_over_alone_are_each_found_for_themselves(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path)
    members = new_members(JobSpec(executable="true", name="work", array="3-6"))
    tag = backend.tag(members[0])
    script = backend.render_script(members[1], [members[1]])
    assert f"#SBATCH --job-name=work.{tag}.4\n" in script and "#SBATCH --array=4\n" in script
    # one-task arrays keeping their index, each a job of its own, all under the array's tag
    squeue = f"13|work.{tag}.5\n12|work.{tag}.3\n10|run.jb-other\n15|someone else's\n"
    assert backend.parse_located(squeue) == {tag: ["12#3", "13#5"], "jb-other": ["10"]}
    sacct = f"12_3|work.{tag}.3\n9_[0-3%1]|arr.jb-other\n"
    backend.transport = ScriptedTransport({"squeue": squeue, "sacct": sacct})  # type: ignore[assignment]
    located = backend.locate(members)
    assert located.found == {members[0].id: ["12_3"], members[2].id: ["13_5"]}
    assert backend.parse_located_accounting(sacct) == {tag: ["12#3"], "jb-other": ["9"]}


def test_a_garbled_queue_or_accounting_line_is_news_for_no_job_only(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path)
    queue = backend.parse_status("12|RUNNING|None|1700000000|0\ngarbage line\n13|PENDING\n")
    assert list(queue) == ["12"]
    accounting = backend.parse_accounting("14|COMPLETED|0:0|1|2\n15|FAILED|x|y\n")
    assert list(accounting) == ["14"]


def test_requeueable_words_end_nothing_while_the_queue_holds_the_job(tmp_path: Path) -> None:
    from jobbridge.job import Job
    from jobbridge.job import utcnow as now

    backend = slurm_backend(tmp_path, requeue_grace=3600)
    job = Job(id="jbrequeue001", spec=JobSpec(executable="true"), backend="slurm",
              created=now(), native_id="77", phase=Phase.EXECUTING)  # fmt: skip
    for word in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REQUEUED"):
        status = backend._decide(job, NativeState(word=word), None)
        assert status is not None and not isinstance(status, Missing)
        assert (status.phase, status.detail) == (Phase.SUSPENDED, word)
    held = backend.to_status(NativeState(word="SPECIAL_EXIT"))
    assert held.phase is Phase.HELD
    # the accounting still says it runs: an OUT_OF_MEMORY seen once in squeue ends nothing
    lied = backend._decide(
        job, NativeState(word="OUT_OF_MEMORY"), None, NativeState(word="RUNNING")
    )
    assert isinstance(lied, JobStatus) and lied.phase is Phase.EXECUTING
    # a requeueable word that stands past the grace ends the job, its native job stopped first
    patient = slurm_backend(tmp_path, requeue_grace=0)
    patient._decide(job, NativeState(word="PREEMPTED"), None)
    time.sleep(0.01)
    ended = patient._decide(job, NativeState(word="PREEMPTED"), None)
    assert isinstance(ended, JobStatus)
    assert (ended.phase, ended.detail, ended.stop_native) == (Phase.ERROR, "PREEMPTED", True)


def test_a_vanished_job_is_missing_only_when_accounting_answered(tmp_path: Path) -> None:
    from jobbridge.job import Job
    from jobbridge.job import utcnow as now

    backend = slurm_backend(tmp_path)
    job = Job(id="jbvanished01", spec=JobSpec(executable="true"), backend="slurm",
              created=now(), native_id="78", phase=Phase.QUEUED)  # fmt: skip
    assert isinstance(backend._decide(job, None, None, None, searched=True), Missing)
    assert backend._decide(job, None, None, None, searched=False) is None


def _submitted(native_id: str, phase: Phase = Phase.QUEUED, **fields: object) -> Job:
    return Job(id=f"jb{native_id:0>10}", spec=JobSpec(executable="true"), backend="slurm",
               created=utcnow(), native_id=native_id, phase=phase, **fields)  # fmt: skip


def test_one_squeue_names_few_jobs_and_lists_the_users_jobs_for_many(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path, max_ids_per_query=3)
    listing = "".join(f"{n}|PENDING|Priority|0|0\n" for n in range(10, 20))
    backend.transport = scripted = ScriptedTransport({"squeue": listing})  # type: ignore[assignment]
    few = [_submitted(str(n)) for n in (11, 12, 13)]
    many = [_submitted(str(n)) for n in range(10, 20)]
    assert backend.status(few).keys() == {job.id for job in few}
    assert backend.status(many).keys() == {job.id for job in many[:1] + many[4:]}
    named, listed = scripted.commands
    assert "--jobs=11,12,13" in named and "--me" not in named
    assert "--me" in listed and not any(word.startswith("--jobs") for word in listed)
    # the members of one array are one id: named, however many they are
    members = [_submitted(f"30_{index}") for index in range(8)]
    scripted.answers["squeue"] = "30_[0-7]|PENDING|Priority|0|0\n"
    assert len(backend.status(members)) == 8
    assert "--jobs=30" in scripted.commands[-1]


def test_jobs_in_one_state_share_what_it_means(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path)
    queue = backend.parse_status(
        "12|PENDING|JobHeldUser|0|0\n13|PENDING|JobHeldUser|0|0\n14|RUNNING|None|1767225600|0\n"
    )
    assert queue["12"] is queue["13"] and queue["14"] is not queue["12"]
    answer = "12|PENDING|JobHeldUser|0|0\n13|PENDING|JobHeldUser|0|0\n"
    backend.transport = ScriptedTransport({"squeue": answer, "sacct": ""})  # type: ignore[assignment]
    told = backend.status([_submitted("12"), _submitted("13")])
    again = backend.status([_submitted("14"), _submitted("12")])
    said = [status for status in [*told.values(), *again.values()] if isinstance(status, JobStatus)]
    assert len(said) == 3 and len({id(status) for status in said}) == 1


def test_a_job_that_shows_its_unchanged_queue_state_has_no_news(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path)
    backend.transport = scripted = ScriptedTransport(  # type: ignore[assignment]
        {"squeue": "12|PENDING|JobHeldUser|0|0\n13|RUNNING|None|1767225600|0\n", "sacct": ""}
    )
    held, running = _submitted("12"), _submitted("13")
    first = backend.status([held, running])
    assert (first[held.id].phase, first[running.id].phase) == (Phase.HELD, Phase.EXECUTING)
    # not yet applied: the same news again
    assert backend.status([held, running]).keys() == {held.id, running.id}
    shown = [
        held.model_copy(update={"phase": Phase.HELD, "detail": "JobHeldUser"}),
        running.model_copy(update={"phase": Phase.EXECUTING, "started": utcnow()}),
    ]
    assert backend.status(shown) == {}
    # the store's row changed behind the backend's back: news again
    unknown = shown[0].model_copy(update={"phase": Phase.UNKNOWN})
    missed = shown[1].model_copy(update={"misses": 1})
    assert backend.status([unknown, missed]).keys() == {held.id, running.id}
    # the queue state changed
    scripted.answers["squeue"] = "12|PENDING|Priority|0|0\n13|RUNNING|None|1767225600|0\n"
    assert backend.status(shown).keys() == {held.id}
    # a fresh backend (a restart) tells everything once
    fresh = slurm_backend(tmp_path)
    fresh.transport = scripted  # type: ignore[assignment]
    assert fresh.status(shown).keys() == {held.id, running.id}


def test_an_unchanged_requeueable_word_still_ends_the_job_after_its_grace(tmp_path: Path) -> None:
    backend = slurm_backend(tmp_path, requeue_grace=0.2)
    answers = {"squeue": "12|PREEMPTED|None|0|0\n", "sacct": ""}
    backend.transport = ScriptedTransport(answers)  # type: ignore[assignment]
    job = _submitted("12", phase=Phase.EXECUTING)
    first = backend.status([job])[job.id]
    assert isinstance(first, JobStatus) and first.phase is Phase.SUSPENDED
    suspended = job.model_copy(update={"phase": Phase.SUSPENDED, "detail": "PREEMPTED"})
    time.sleep(0.3)
    ended = backend.status([suspended])[job.id]
    assert isinstance(ended, JobStatus)
    assert (ended.phase, ended.detail, ended.stop_native) == (Phase.ERROR, "PREEMPTED", True)


@pytest.mark.slurm
def test_many_active_jobs_are_refreshed_with_one_listing(isolated_data_dir: Path) -> None:
    cluster_env("slurm")
    backend = slurm_backend(isolated_data_dir, max_ids_per_query=10)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="true", attributes={"slurm.hold": True})
        jobs = engine.submit_many([spec] * 25)
        try:
            commands = commands_of_one_refresh(engine, counting)
            status_commands = [c for c in commands if c[0] in ("squeue", "sacct", "scontrol")]
            assert len(status_commands) == 1 and "--me" in status_commands[0], status_commands
            assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)
            engine.release(jobs[0].id)
            done = engine.wait([jobs[0].id], timeout=60)
            assert done[0].phase is Phase.COMPLETED
            assert all(engine.get(job.id).phase is Phase.HELD for job in jobs[1:])
        finally:
            backend._run(["scancel", *[job.native_id or "" for job in jobs]], check=False)
