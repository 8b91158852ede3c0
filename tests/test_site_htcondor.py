"""HTCondor as pools run it: the shared scenarios on a pool that forbids getenv, jobs the
system holds itself, and a history whose files have rotated (see
tests/fakes/bin/htcondor/fakecondor.py for the switches)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, Phase
from tests import test_batch_htcondor as fake_condor
from tests.batch_support import running_engine
from tests.test_batch_htcondor import TestHTCondor as HTCondorScenarios
from tests.test_batch_htcondor import condor_backend

condor = fake_condor.condor  # the fake pool's fixture, under the name the tests ask for


class TestPoolWithoutGetenv(HTCondorScenarios):
    @pytest.fixture
    def engine(
        self, isolated_data_dir: Path, condor: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[Engine]:
        monkeypatch.setenv("FAKESCHED_CONDOR_SUBMIT_ALLOW_GETENV", "false")
        yield from running_engine(condor_backend(isolated_data_dir), isolated_data_dir)


def test_the_fake_pool_refuses_getenv_as_configured(
    condor: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "job.sh").write_text("#!/bin/sh\ntrue\n")
    (tmp_path / "job.sub").write_text("executable = job.sh\ngetenv = true\nqueue\n")
    monkeypatch.setenv("FAKESCHED_CONDOR_SUBMIT_ALLOW_GETENV", "false")
    refused = subprocess.run(
        ["condor_submit", "-terse", "job.sub"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "SUBMIT_ALLOW_GETENV" in refused.stderr


@pytest.mark.parametrize(
    ("code", "detail"), [(34, "OUT_OF_MEMORY"), (12, "TRANSFER_FAILED"), (13, "TRANSFER_FAILED")]
)
def test_a_job_the_system_holds_ends_error_and_leaves_the_queue(
    code: int,
    detail: str,
    condor: Path,
    isolated_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKESCHED_CONDOR_SYSTEM_HOLD", str(code))
    with next(running_engine(condor_backend(isolated_data_dir), isolated_data_dir)) as engine:
        job = engine.submit(JobSpec(executable="sleep", arguments=["60"]))
        [done] = engine.wait([job.id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, detail)
    assert done.message and "Error from slot1@" in done.message
    queue = subprocess.run(["condor_q", "-json"], capture_output=True, text=True).stdout
    assert (done.native_id or "?").split(".")[0] not in queue  # removed with condor_rm


def test_jobs_gone_from_rotated_history_are_settled_from_their_exit_files(
    condor: Path, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESCHED_CONDOR_HISTORY_KEEP", "0")
    with next(running_engine(condor_backend(isolated_data_dir), isolated_data_dir)) as engine:
        good = engine.submit(JobSpec(executable="true"))
        bad = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 5"]))
        done = engine.wait([good.id, bad.id], timeout=30)
    history = subprocess.run(["condor_history", "-json"], capture_output=True, text=True).stdout
    assert history.strip() in ("", "[]")
    assert [(job.phase, job.exit_code) for job in done] == [
        (Phase.COMPLETED, 0),
        (Phase.ERROR, 5),
    ]
