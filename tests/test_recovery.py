"""Nothing is lost when the process that submitted jobs dies."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

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
