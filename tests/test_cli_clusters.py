"""The ``jobbridge`` command line on the real SLURM test cluster, here and behind the test
sshd: a kind used by name with no configuration, a remote job's default directory, and the
scheduler's own words in the logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cluster_env

pytestmark = pytest.mark.slurm

JOBBRIDGE = shutil.which("jobbridge", path=os.path.dirname(sys.executable)) or "jobbridge"
WAIT = 240


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBBRIDGE, *args], capture_output=True, text=True, timeout=WAIT, cwd=cwd)


def status(job_id: str, *config: str) -> dict[str, Any]:
    done = run(*config, "status", "--json", job_id)
    assert done.returncode == 0, done.stderr
    [job] = json.loads(done.stdout)
    return dict(job)


def remote_config(tmp_path: Path) -> list[str]:
    """``--config`` of a file naming a SLURM backend ``remote`` reached over the test sshd."""
    cluster_env("slurm")
    ssh = cluster_env("ssh")
    destination = f"{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}"
    path = tmp_path / "jobbridge.toml"
    path.write_text(
        "[backends.remote]\n"
        'kind = "slurm"\n'
        f"host = {json.dumps(destination)}\n"
        f"port = {int(ssh['JOBBRIDGE_TEST_SSH_PORT'])}\n"
        f"identity_file = {json.dumps(ssh['JOBBRIDGE_TEST_SSH_KEY'])}\n"
        f"known_hosts = {json.dumps(ssh['JOBBRIDGE_TEST_SSH_KNOWN_HOSTS'])}\n"
        "min_refresh_interval = 0.3\n"
        "accounting_delay = 10\n"
    )
    return ["--config", str(path)]


def test_slurm_by_name_needs_no_configuration(tmp_path: Path) -> None:
    cluster_env("slurm")
    done = run(
        "submit", "--backend", "slurm", "--wait", "-q", "--",
        "sh", "-c", 'echo "slurm job $SLURM_JOB_ID in $PWD"',
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    job = status(job_id)
    assert (job["backend"], job["phase"]) == ("slurm", "COMPLETED")
    # a later invocation finds the backend again to read the job's output
    logs = run("logs", job_id)
    assert logs.stdout == f"slurm job {job['native_id']} in {tmp_path}\n", logs.stderr


def test_a_refused_submission_without_wait_exits_one() -> None:
    cluster_env("slurm")
    done = run("submit", "--backend", "slurm", "--queue", "no-such-partition", "--", "true")
    assert done.returncode == 1
    assert "ended ERROR (SUBMIT_FAILED)" in done.stderr and "no-such-partition" in done.stderr


def test_logs_show_what_the_scheduler_said_when_the_program_never_ran(tmp_path: Path) -> None:
    cluster_env("slurm")
    missing = tmp_path / "no" / "such" / "directory"
    done = run(
        "submit", "--backend", "slurm", "--wait", "-q", "--directory", str(missing), "--", "true"
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    job_id = done.stdout.strip()
    assert status(job_id)["exit_code"] == 127
    logs = run("logs", "--stderr", job_id)
    assert logs.returncode == 0, logs.stderr
    assert str(missing) in logs.stdout and "No such file or directory" in logs.stdout
    tail = run("logs", "--stderr", "--tail", "1", job_id)
    assert "No such file or directory" in tail.stdout, tail.stderr


@pytest.mark.ssh
def test_a_remote_job_runs_in_its_own_directory_there(tmp_path: Path) -> None:
    config = remote_config(tmp_path)
    here = tmp_path / "private"
    here.mkdir(mode=0o700)  # the cluster's user could not even enter it
    done = run(
        *config, "submit", "--backend", "remote", "--wait", "-q", "--", "sh", "-c", "pwd", cwd=here
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    job = status(job_id, *config)
    assert job["spec"]["directory"] is None
    logs = run(*config, "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == f"/home/jbtest/.jobbridge/jobs/{job_id}\n"
