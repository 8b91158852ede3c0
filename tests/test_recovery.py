"""Nothing is lost when the process that submitted jobs dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jobbridge import Engine, Phase, load_config

SUBMITTER = textwrap.dedent(
    """
    import sys, time
    from jobbridge import Engine, JobSpec, Phase

    engine = Engine.from_config()
    ids = []
    for i in range(50):
        kind = i % 3
        if kind == 0:
            spec = JobSpec(executable="sh", arguments=["-c", "sleep 3"], name=f"ok-{i}")
        elif kind == 1:
            spec = JobSpec(executable="sh", arguments=["-c", "sleep 3; exit 5"], name=f"fail-{i}")
        else:
            spec = JobSpec(executable="sleep", arguments=["60"], name=f"slow-{i}",
                           resources={"walltime": 4})
        ids.append(engine.submit(spec).id)
    while True:
        engine.refresh()
        if all(engine.get(i).phase is Phase.EXECUTING for i in ids):
            break
        time.sleep(0.1)
    print(" ".join(ids), flush=True)
    time.sleep(600)
    """
)


def jobbridge_command() -> str:
    found = shutil.which("jobbridge", path=str(Path(sys.executable).parent))
    assert found, "the jobbridge console script is not installed next to this interpreter"
    return found


def test_killing_the_submitter_loses_no_job(isolated_data_dir: Path) -> None:
    submitter = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert submitter.stdout is not None
    ids = submitter.stdout.readline().split()
    assert len(ids) == 50, "the submitter did not get its 50 jobs running"
    os.killpg(submitter.pid, signal.SIGKILL)
    submitter.wait()

    waited = subprocess.run(
        [jobbridge_command(), "wait", "--timeout", "60", "--quiet", *ids],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert waited.returncode == 1, waited.stderr  # some jobs were meant to fail

    with Engine.from_config(load_config()) as engine:
        jobs = engine.store.get_many(ids)
    outcomes = {(job.name.split("-")[0], job.phase, job.exit_code, job.detail) for job in jobs}
    assert outcomes == {
        ("ok", Phase.COMPLETED, 0, None),
        ("fail", Phase.ERROR, 5, None),
        ("slow", Phase.ERROR, 143, "TIMEOUT"),
    }
    assert len(jobs) == 50


MANY_SUBMITTER = textwrap.dedent(
    """
    import os, signal
    from jobbridge import Engine, JobSpec

    engine = Engine.from_config()
    specs = [JobSpec(executable="sh", arguments=["-c", f"exit {i % 2}"], name=f"j-{i}")
             for i in range(200)]
    jobs = engine.submit_many(specs, wait=False)  # recorded; handed over in the background
    print(" ".join(job.id for job in jobs), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # in the middle of handing them over
    """
)


def test_killing_the_submitter_during_submit_many_loses_no_job(
    isolated_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "jobbridge.toml"
    config_file.write_text("[engine]\nclaim_timeout = 1.0\nrefresh_interval = 0.1\n")
    monkeypatch.setenv("JOBBRIDGE_CONFIG", str(config_file))
    submitter = subprocess.run(
        [sys.executable, "-c", MANY_SUBMITTER], capture_output=True, text=True, timeout=120
    )
    assert submitter.returncode == -signal.SIGKILL, submitter.stderr
    ids = submitter.stdout.split()
    assert len(ids) == 200

    config = load_config()
    with Engine.from_config(config) as engine:
        jobs = engine.wait(ids, timeout=120)
    assert len(jobs) == 200
    outcomes = {(job.name, job.phase, job.exit_code) for job in jobs}
    assert outcomes == {
        (f"j-{i}", Phase.COMPLETED if i % 2 == 0 else Phase.ERROR, i % 2) for i in range(200)
    }
    runs = [p for p in (isolated_data_dir / "jobs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 200  # one job directory each: nothing submitted twice
