"""The local backend with real processes: outcomes, limits, cancellation, quoting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobbridge import (
    Engine,
    Job,
    JobSpec,
    LimitExceededError,
    Phase,
    ResourcesNotSupportedError,
)
from jobbridge.backends import local_runner
from jobbridge.backends import local_supervisor as sup
from jobbridge.backends.local_records import RunnerRecords
from jobbridge.job import Handover

HOSTILE = ["$(touch pwned)", "`touch pwned`", "a; touch pwned", 'it\'s "quoted"', "new\nline", "*"]


def recorded_end(job_dir: str, job_id: str) -> dict[str, Any]:
    """How the job's runner recorded that it ended ({} while it has not)."""
    record = RunnerRecords().read(job_dir)
    return {} if record is None else record.ended.get(job_id, {})


def run(engine: Engine, spec: JobSpec, timeout: float = 30) -> Job:
    job = engine.submit(spec)
    [done] = engine.wait([job.id], timeout=timeout)
    assert done.phase.is_final, f"job still {done.phase} after {timeout} s"
    return done


def out(engine: Engine, job: Job, stream: str = "stdout") -> str:
    return engine.read_output(job.id, stream).decode()  # type: ignore[arg-type]


def test_a_completed_job(engine: Engine) -> None:
    job = run(engine, JobSpec(executable="echo", arguments=["hello", "world"]))
    assert (job.phase, job.exit_code, job.detail) == (Phase.COMPLETED, 0, None)
    assert out(engine, job) == "hello world\n"
    assert job.started is not None and job.ended is not None and job.started <= job.ended


def test_a_failing_job_keeps_its_exit_code_and_stderr(engine: Engine) -> None:
    job = run(
        engine, JobSpec(executable="sh", arguments=["-c", "echo partial; echo boom >&2; exit 3"])
    )
    assert (job.phase, job.exit_code) == (Phase.ERROR, 3)
    assert out(engine, job) == "partial\n"
    assert out(engine, job, "stderr") == "boom\n"


def test_metacharacters_reach_the_program_verbatim(engine: Engine, tmp_path: Path) -> None:
    script = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['TRICKY']]))"
    spec = JobSpec(
        executable="python3",
        arguments=["-c", script, *HOSTILE],
        name="$(touch pwned); echo",
        environment={"TRICKY": "$(touch pwned) `touch pwned` ; 'x' \"y\"\nz"},
        directory=str(tmp_path),
    )
    job = run(engine, spec)
    assert job.phase is Phase.COMPLETED, out(engine, job, "stderr")
    arguments, tricky = json.loads(out(engine, job))
    assert arguments == HOSTILE
    assert tricky == "$(touch pwned) `touch pwned` ; 'x' \"y\"\nz"
    assert not (tmp_path / "pwned").exists()
    assert not list(Path.cwd().glob("pwned"))


def test_portable_variables_and_environment(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROM_SUBMITTER", "inherited")
    monkeypatch.setenv("OWN", "the submitter's, which the job's own replaces")
    names = [
        "JOBBRIDGE_JOB_ID",
        "JOBBRIDGE_JOB_NAME",
        "JOBBRIDGE_WORKDIR",
        "JOBBRIDGE_SUBMIT_HOST",
        "JOBBRIDGE_NODELIST",
        "FROM_SUBMITTER",
        "OWN",
    ]
    script = "import json, os, sys; print(json.dumps({n: os.environ.get(n) for n in sys.argv[1:]}))"
    spec = JobSpec(
        executable="python3",
        arguments=["-c", script, *names],
        name="env check",
        environment={"OWN": "mine"},
        directory=str(tmp_path),
    )
    job = run(engine, spec)
    seen = json.loads(out(engine, job))
    assert seen["JOBBRIDGE_JOB_ID"] == job.id
    assert seen["JOBBRIDGE_JOB_NAME"] == "env check"
    assert seen["JOBBRIDGE_WORKDIR"] == str(tmp_path)
    assert seen["JOBBRIDGE_SUBMIT_HOST"] and seen["JOBBRIDGE_NODELIST"]
    assert (seen["FROM_SUBMITTER"], seen["OWN"]) == ("inherited", "mine")

    clean = run(
        engine, spec.replace(inherit_environment=False, executable="/usr/bin/env", arguments=[])
    )
    lines = out(engine, clean).splitlines()
    assert "OWN=mine" in lines
    assert not any(line.startswith("FROM_SUBMITTER=") for line in lines)

    # in one batch, whose plans carry the submitter's environment once, for those that take it
    both = engine.submit_many([spec, spec.replace(inherit_environment=False)])
    seen_in_batch = [json.loads(out(engine, job)) for job in engine.wait([j.id for j in both], 30)]
    assert [(s["FROM_SUBMITTER"], s["OWN"]) for s in seen_in_batch] == [
        ("inherited", "mine"),
        (None, "mine"),
    ]


def test_array_members_see_their_index(engine: Engine) -> None:
    spec = JobSpec(
        executable="sh", arguments=["-c", 'echo "$JOBBRIDGE_ARRAY_INDEX"'], array="2,5-6"
    )
    members = engine.submit_array(spec)
    done = engine.wait([m.id for m in members], timeout=30)
    assert [out(engine, m).strip() for m in done] == ["2", "5", "6"]


def test_walltime_ends_a_job_as_timeout(engine: Engine) -> None:
    started = time.monotonic()
    job = run(engine, JobSpec(executable="sleep", arguments=["60"], resources={"walltime": 1}))
    assert (job.phase, job.detail) == (Phase.ERROR, "TIMEOUT")
    assert time.monotonic() - started < 15


def test_cancel_stops_the_whole_process_group(engine: Engine, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait"
    job = engine.submit(JobSpec(executable="sh", arguments=["-c", script]))
    deadline = time.monotonic() + 10
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = [int(pid) for pid in pids.read_text().split()]
    cancelled = engine.cancel(job.id)
    assert (cancelled.phase, cancelled.detail) == (Phase.ABORTED, "CANCELLED")
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in processes)


def test_a_job_that_ignores_term_is_killed_after_the_grace_period(
    engine: Engine, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    script = f"trap '' TERM; touch {marker}; while true; do sleep 0.1; done"
    job = engine.submit(JobSpec(executable="sh", arguments=["-c", script]))
    while not marker.exists():
        time.sleep(0.05)
    engine.cancel(job.id)
    native = engine.get(job.id).native_id
    assert native
    deadline = time.monotonic() + 10
    while not recorded_end(native, job.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorded_end(native, job.id)["detail"] == "CANCELLED"


def test_a_job_cancelled_before_its_runner_claims_it_never_starts(
    engine: Engine, tmp_path: Path, isolated_data_dir: Path
) -> None:
    marker = tmp_path / "ran"
    job = engine.create(JobSpec(executable="touch", arguments=[str(marker)]))
    job_dir = isolated_data_dir / "jobs" / job.id
    job_dir.mkdir(parents=True)
    (job_dir / local_runner.CANCEL_MARK).write_text("")
    engine.start(job.id)
    deadline = time.monotonic() + 10
    while not recorded_end(str(job_dir), job.id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recorded_end(str(job_dir), job.id)["detail"] == "CANCELLED"
    assert not marker.exists()


def test_a_missing_program_is_reported(engine: Engine) -> None:
    job = run(engine, JobSpec(executable="no-such-program-anywhere"))
    assert (job.phase, job.detail, job.exit_code) == (Phase.ERROR, "EXEC_FAILED", 127)
    assert "no-such-program-anywhere" in (job.message or "")


def test_a_missing_directory_is_reported(engine: Engine, tmp_path: Path) -> None:
    job = run(engine, JobSpec(executable="true", directory=str(tmp_path / "absent")))
    assert (job.phase, job.detail) == (Phase.ERROR, "EXEC_FAILED")
    assert "absent" in (job.message or "")


def test_death_by_signal(engine: Engine) -> None:
    job = run(engine, JobSpec(executable="sh", arguments=["-c", "kill -KILL $$"]))
    assert (job.phase, job.detail, job.exit_code) == (Phase.ERROR, "SIGKILL", 128 + 9)


def test_redirections(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("from stdin\n")
    spec = JobSpec(
        executable="sh",
        arguments=["-c", "cat; echo to-err >&2"],
        directory=str(tmp_path),
        stdin="input.txt",
        stdout="both.log",
        stderr="both.log",
    )
    job = run(engine, spec)
    assert job.phase is Phase.COMPLETED
    assert sorted((tmp_path / "both.log").read_text().splitlines()) == ["from stdin", "to-err"]
    assert "from stdin" in out(engine, job)


def test_prologue_and_epilogue_surround_the_program(engine: Engine) -> None:
    spec = JobSpec(
        executable="sh",
        arguments=["-c", 'echo "main $STEP"; exit 4'],
        prologue="echo prologue\nexport STEP=prepared",
        epilogue="echo epilogue",
    )
    job = run(engine, spec)
    assert out(engine, job).splitlines() == ["prologue", "main prepared", "epilogue"]
    assert job.exit_code == 4


def test_a_failing_prologue_stops_the_job(engine: Engine) -> None:
    job = run(engine, JobSpec(executable="echo", arguments=["never"], prologue="exit 7"))
    assert (job.phase, job.exit_code) == (Phase.ERROR, 7)
    assert out(engine, job) == ""


def test_memory_limit_is_enforced(engine: Engine) -> None:
    grab = "x = bytearray(600 * 1024 * 1024); print('allocated')"
    job = run(
        engine, JobSpec(executable="python3", arguments=["-c", grab], resources={"memory": "200M"})
    )
    assert job.phase is Phase.ERROR
    assert "MemoryError" in out(engine, job, "stderr")


def test_a_runner_killed_from_outside_is_lost_not_completed(engine: Engine) -> None:
    job = engine.submit(JobSpec(executable="sleep", arguments=["301"]))
    runner_file = Path(job.native_id or "") / local_runner.RUNNER_FILE
    while not runner_file.exists():
        time.sleep(0.05)
    os.kill(int(runner_file.read_text().split()[0]), signal.SIGKILL)
    [done] = engine.wait([job.id], timeout=10)
    assert (done.phase, done.detail) == (Phase.ERROR, "LOST")
    subprocess.run(["pkill", "-f", "sleep 301"], check=False)  # the orphan the brutal kill left


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"resources": {"nodes": 2}}, "resources.nodes"),
        ({"resources": {"gpus_per_process": 1}}, "resources.gpus_per_process"),
        ({"queue": "long"}, "queue"),
        ({"launcher": "srun"}, "launcher"),
        ({"attributes": {"local.affinity": "0-3"}}, "attributes.local.affinity"),
    ],
)
def test_requests_this_machine_cannot_honour_are_refused(
    engine: Engine, changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ResourcesNotSupportedError, match=field.replace(".", r"\.")):
        engine.submit(JobSpec(executable="true").replace(**changes))
    assert engine.store.count() == 0


def test_other_schedulers_attributes_are_ignored_here(engine: Engine) -> None:
    job = run(engine, JobSpec(executable="true", attributes={"slurm.constraint": "haswell"}))
    assert job.phase is Phase.COMPLETED


def test_more_cores_than_the_machine_has_is_refused(engine: Engine) -> None:
    cores = (os.cpu_count() or 1) + 1
    with pytest.raises(LimitExceededError, match="cores"):
        engine.submit(JobSpec(executable="true", resources={"cores_per_process": cores}))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_supervisor_stays_small() -> None:
    """It forks a runner for every batch of jobs: it must not carry the engine's modules."""
    directory = os.path.dirname(sup.__file__)
    probe = (
        f"import sys; sys.path.insert(0, {directory!r}); import local_supervisor;"
        " print(*sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"local_supervisor", "local_runner"} <= set(loaded)
    assert not {"jobbridge", "pydantic", "sqlalchemy", "subprocess", "threading"} & set(loaded)


def test_many_jobs_handed_over_in_one_step_each_run_once(engine: Engine, tmp_path: Path) -> None:
    """submit_many() gives the supervisor all jobs with one wake-up; a job whose input is
    missing is kept back alone, and every other one runs, once."""
    counter = tmp_path / "runs"
    specs = [
        JobSpec(executable="sh", arguments=["-c", f"echo {n} >> {counter}"]) for n in range(30)
    ]
    vanishing = tmp_path / "vanishing"
    vanishing.write_text("gone before its job is handed over")
    missing_input = JobSpec(executable="true", stage_in=[{"source": str(vanishing), "target": "x"}])
    engine.hooks.on_before_submit(lambda job: vanishing.unlink(missing_ok=True))
    backend = engine.backend()
    wakes: list[bytes] = []
    wake = backend.supervisor.wake  # type: ignore[attr-defined]
    backend.supervisor.wake = lambda message=b"j": wakes.append(message) or wake(message)  # type: ignore[attr-defined]
    jobs = engine.submit_many([*specs[:15], missing_input, *specs[15:]])
    assert len(wakes) == 1
    kept_back = jobs.pop(15)  # to be tried again later, as a passing failure
    assert kept_back.handover is Handover.WAITING and not kept_back.is_submitted
    assert all(job.is_submitted for job in jobs)
    done = engine.wait([job.id for job in jobs], timeout=60)
    assert [job.phase for job in done].count(Phase.COMPLETED) == 30
    assert sorted(int(line) for line in counter.read_text().split()) == list(range(30))
