"""Batch schedulers on a 'remote' login node: the real sshd on 127.0.0.1 in front of the real
SLURM and Grid Engine, reached as the unprivileged test user. Sandboxes, staging, results,
peek, free, and one SSH connection for everything."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.sge import SgeBackend
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.transport.ssh import SshTransport
from tests.conftest import cluster_env

pytestmark = pytest.mark.ssh

SCHEDULERS: dict[str, type[BatchBackend]] = {"slurm": SlurmBackend, "sge": SgeBackend}


def remote_backend(kind: str, data_dir: Path) -> BatchBackend:
    ssh = cluster_env("ssh")
    facts = cluster_env(kind)
    cls = SCHEDULERS[kind]
    settings: dict[str, object] = {
        "host": f"{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}",
        "port": int(ssh["JOBBRIDGE_TEST_SSH_PORT"]),
        "identity_file": ssh["JOBBRIDGE_TEST_SSH_KEY"],
        "known_hosts": ssh["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
        "min_refresh_interval": 0.3,
        "accounting_delay": 10,
    }
    if kind == "sge":
        settings.update(sge_root=facts["SGE_ROOT"], sge_cell=facts["SGE_CELL"], user="jbtest")
    return cls("cluster", cls.Options.model_validate(settings), BackendContext(data_dir / "jobs"))


def held(kind: str) -> JobSpec:
    return JobSpec(executable="true", attributes={f"{kind}.hold": True})


@pytest.fixture(params=list(SCHEDULERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(isolated_data_dir: Path, kind: str) -> Iterator[Engine]:
    backend = remote_backend(kind, isolated_data_dir)
    assert isinstance(backend.transport, SshTransport)
    backend.transport.disconnect()  # every test starts with no master connection
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    engine = Engine(
        store,
        {"cluster": backend},
        settings=EngineSettings(refresh_interval=0.2, submit_in_background=False),
        default_backend="cluster",
        results_dir=isolated_data_dir / "results",
    )
    yield engine
    for job in engine.store.active():
        if job.is_submitted:
            backend.cancel(job)
    engine.close()


def logins() -> int:
    log = Path(cluster_env("ssh")["JOBBRIDGE_TEST_SSH_LOG"]).read_text()
    return log.count("Accepted publickey for jbtest")


def test_a_remote_job_with_its_files_in_and_out(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "numbers.txt").write_text("1\n2\n3\n")
    spec = JobSpec(
        executable="sh",
        arguments=[
            "-c",
            "mkdir out; awk '{s += $1} END {print s}' in/numbers.txt > out/sum.txt; whoami",
        ],
        stage_in=[f"{tmp_path / 'numbers.txt'} -> in/numbers.txt"],
        stage_out=[f"out/sum.txt -> {tmp_path / 'sum.txt'}"],
    )
    job = engine.submit(spec)
    [done] = engine.wait([job.id], timeout=60)
    assert done.phase is Phase.COMPLETED, (done.detail, done.message)
    assert engine.read_output(done.id) == b"jbtest\n"
    assert (tmp_path / "sum.txt").read_text() == "6\n"
    _, sandbox = engine.backend().sandbox(done)
    assert sandbox.startswith("/home/jbtest/.jobbridge/jobs/")

    download = tmp_path / "results"
    download.mkdir()
    first = engine.get_results(done.id, download)
    assert {"in/numbers.txt", "out/sum.txt", "stdout", "job.sh", "exitcode"} <= set(first)
    assert (download / "out" / "sum.txt").read_text() == "6\n"
    assert engine.get_results(done.id, download) == []

    engine.free(done.id)
    assert not engine.backend().transport.exists(sandbox)


def test_peek_at_a_running_remote_job(engine: Engine) -> None:
    job = engine.submit(
        JobSpec(executable="sh", arguments=["-c", "printf 'abcdefghij' > progress.log; sleep 60"])
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        engine.refresh()
        if engine.get(job.id).phase is Phase.EXECUTING:
            try:
                buffer = io.BytesIO()
                engine.peek(job.id, "progress.log", buffer, offset=-3)
                if buffer.getvalue():
                    break
            except FileNotFoundError:
                pass
        time.sleep(0.3)
    assert buffer.getvalue() == b"hij"
    head = io.BytesIO()
    engine.peek(job.id, "progress.log", head, offset=1, size=2)
    assert head.getvalue() == b"bc"
    engine.cancel(job.id)


def test_fifty_submissions_and_a_refresh_use_one_connection(engine: Engine, kind: str) -> None:
    before = logins()
    jobs = [engine.submit(held(kind)) for _ in range(50)]
    engine.refresh(force=True)
    assert logins() - before == 1
    assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)


def test_a_dropped_connection_is_made_again_and_no_job_changes_wrongly(
    engine: Engine, kind: str
) -> None:
    running = engine.submit(JobSpec(executable="sleep", arguments=["8"]))
    waiting = engine.submit(held(kind))
    engine.wait([running.id], timeout=0.1)
    deadline = time.monotonic() + 30
    while engine.get(running.id).phase is not Phase.EXECUTING and time.monotonic() < deadline:
        engine.refresh()
        time.sleep(0.2)
    transport = engine.backend().transport
    assert isinstance(transport, SshTransport)
    check = subprocess.run(
        [*transport.ssh_command()[:-1], "-O", "check", transport.host],
        capture_output=True,
        text=True,
        check=False,
    )
    os.kill(int(check.stderr.split("pid=")[1].split(")")[0]), signal.SIGKILL)

    engine.refresh(force=True)
    assert engine.get(running.id).phase is Phase.EXECUTING
    assert engine.get(waiting.id).phase is Phase.HELD
    [done] = engine.wait([running.id], timeout=60)
    assert done.phase is Phase.COMPLETED
