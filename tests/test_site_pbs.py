"""PBS Pro and Torque as sites run them: the shared scenarios against the fake tools with
each site setting switched (see tests/fakes/bin/pbspro/_pbs.py), a submitter's environment
that the real qstat prints unreadably, and each way the real tools differ from the manuals."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, Phase
from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.pbs import PbsProBackend
from jobbridge.backends.batch.pbs_records import pbspro_jobs, torque_jobs
from jobbridge.backends.batch.torque import TorqueBackend
from jobbridge.errors import SubmissionError, SubmitOutcome
from tests import test_batch_pbs as fake_pbs
from tests.batch_support import new_job, wait_until_ended
from tests.fakes.fakesched import ENDED, FakeScheduler
from tests.test_batch_pbs import Backends, PbsScenarios, engine_on, pbs_backend

# the fake clusters' fixtures, under the names the tests ask for
bytecode_dir = fake_pbs.bytecode_dir
cluster = fake_pbs.cluster
flavour = fake_pbs.flavour

# What users export and qsub -V copies: released OpenPBS prints these values as invalid
# JSON, Torque as ill-formed XML.
HOSTILE_ENVIRONMENT = {
    "JB_ZEROS": "005",
    "JB_BACKSLASH": "C:\\new\\q",
    "JB_INFINITE": "inf",
    "JB_NAN": "nan",
    "JB_MARKUP": "a < b & c",
    "BASH_FUNC_jbfunc%%": '() {  test -n "$1" && echo "<$1>"\n}',
}


@pytest.fixture
def hostile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in HOSTILE_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


class SiteScenarios(PbsScenarios):
    """The shared scenarios with a site's settings and a hostile submitting environment."""

    site: dict[str, str] = {}  # noqa: RUF012 - read only

    @pytest.fixture
    def engine(
        self,
        isolated_data_dir: Path,
        cluster: Callable[[str], Path],
        monkeypatch: pytest.MonkeyPatch,
        hostile_environment: None,
    ) -> Iterator[Engine]:
        cluster(self.backend_class.kind)
        for name, value in self.site.items():
            monkeypatch.setenv(name, value)
        with engine_on(self.backend_class, isolated_data_dir) as engine:
            yield engine


class TestPbsProDefaults(SiteScenarios):
    """No job history, broken Variable_List JSON, a login node in another time zone."""

    backend_class = PbsProBackend


class TestPbsProWithHistory(SiteScenarios):
    backend_class = PbsProBackend
    site = {"FAKESCHED_PBS_HISTORY": "1"}  # noqa: RUF012


class TestPbsProOldServerWithHistory(SiteScenarios):
    """Walltime kills as 256 + signal (before 22.05), shown by the job history."""

    backend_class = PbsProBackend
    site = {"FAKESCHED_PBS_HISTORY": "1", "FAKESCHED_PBS_VERSION": "19.1"}  # noqa: RUF012


class TestPbsProFixedJson(SiteScenarios):
    backend_class = PbsProBackend
    site = {"FAKESCHED_PBS_JSON": "fixed", "FAKESCHED_PBS_HISTORY": "1"}  # noqa: RUF012


class TestTorqueDefaults(SiteScenarios):
    """keep_completed unset (0) and values written into the XML unescaped."""

    backend_class = TorqueBackend


class TestTorqueKeepCompleted(SiteScenarios):
    backend_class = TorqueBackend
    site = {"FAKESCHED_TORQUE_KEEP_COMPLETED": "300", "FAKESCHED_TORQUE_XML": "escaped"}  # noqa: RUF012


# -- each difference on its own ---------------------------------------------------------------


def test_without_history_a_running_job_is_seen_running(
    cluster: Callable[[str], Path], isolated_data_dir: Path
) -> None:
    cluster("pbspro")
    with engine_on(PbsProBackend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="sleep", arguments=["30"]))
        deadline = time.monotonic() + 20
        while engine.get(job.id).phase is not Phase.EXECUTING:
            assert time.monotonic() < deadline, engine.get(job.id)
            engine.refresh()
            time.sleep(0.3)
        for _ in range(5):
            time.sleep(0.4)
            engine.refresh()
            assert engine.get(job.id).phase is Phase.EXECUTING
        engine.cancel(job.id)


def test_the_fake_rejects_history_requests_as_the_real_server(
    cluster: Callable[[str], Path], tmp_path: Path
) -> None:
    cluster("pbspro")
    answer = subprocess.run(
        ["qstat", "-f", "-F", "json", "-x"], capture_output=True, text=True, check=False
    )
    assert answer.returncode == 0
    assert "PBS is not configured to maintain job history" in answer.stderr
    assert "Jobs" not in json.loads(answer.stdout)


def held_with_the_environment(tmp_path: Path) -> str:
    """Submit a held job that carries the submitter's environment (``qsub -V``)."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    return subprocess.run(
        ["qsub", "-V", "-h", str(script)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    ("flavour_name", "query", "read"),
    [
        ("pbspro", ["-f", "-F", "json", "-t"], pbspro_jobs),
        ("torque", ["-f", "-x", "-t"], torque_jobs),
    ],
)
def test_an_environment_the_tools_print_unreadably_blinds_no_job(
    flavour_name: str,
    query: list[str],
    read: Callable[[str], Iterator[object]],
    cluster: Callable[[str], Path],
    hostile_environment: None,
    tmp_path: Path,
) -> None:
    cluster(flavour_name)
    job_id = held_with_the_environment(tmp_path)
    answer = subprocess.run(["qstat", *query], capture_output=True, text=True).stdout
    if flavour_name == "pbspro":  # released OpenPBS: invalid JSON
        with pytest.raises(json.JSONDecodeError):
            json.loads(answer, strict=False)
    else:  # Torque: values written unescaped
        assert "a < b & c" in answer
    assert [record[0] for record in read(answer)] == [job_id]  # type: ignore[index]
    subprocess.run(["qdel", job_id], check=True)


def test_times_are_read_in_utc_whatever_the_login_nodes_zone(
    cluster: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path
) -> None:
    cluster("pbspro")
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "1")
    monkeypatch.setenv("FAKESCHED_LOGIN_TZ", "XYZ+7:30")
    backend = pbs_backend(PbsProBackend, isolated_data_dir)
    job = new_job(JobSpec(executable="sleep", arguments=["5"]))
    job = job.model_copy(update={"native_id": backend.submit(job)})
    try:
        deadline = time.monotonic() + 20
        while True:
            status = backend.status([job])[job.id]
            started = getattr(status, "started", None)
            if started is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert abs((started - datetime.now(UTC)).total_seconds()) < 60
    finally:
        backend.cancel(job)


def _ended_at_the_scheduler(native_id: str, root: Path) -> None:
    number = int(native_id.split(".")[0].split("[")[0])
    deadline = time.monotonic() + 20
    while True:
        with FakeScheduler(str(root)).session() as tasks:
            if all(t.state in ENDED for t in tasks if t.number == number):
                return
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_parent_the_server_forgot_is_not_handed_over(
    flavour: Backends, isolated_data_dir: Path
) -> None:
    backend = pbs_backend(flavour, isolated_data_dir)
    parent = new_job(JobSpec(executable="true"))
    parent = parent.model_copy(update={"native_id": backend.submit(parent)})
    wait_until_ended(backend, parent)
    child = new_job(JobSpec(executable="true"))
    with pytest.raises(SubmissionError, match="no longer shows parent") as refused:
        backend.submit(child, [NativeDependency(parent.native_id or "", "afterok")])
    assert refused.value.outcome is SubmitOutcome.NOT_MADE


def test_a_child_of_a_parent_that_just_ended_runs(
    flavour: Backends, isolated_data_dir: Path
) -> None:
    root = Path(os.environ["FAKESCHED_DIR"])
    with engine_on(flavour, isolated_data_dir) as engine:
        parent = engine.submit(JobSpec(executable="true"))
        _ended_at_the_scheduler(parent.native_id or "", root)
        # the engine has not refreshed: it still takes the parent for a running job
        child = engine.submit(JobSpec(executable="true", depends_on=[parent.id]))
        done = engine.wait([parent.id, child.id], timeout=30)
    assert [(job.phase, job.detail) for job in done] == [(Phase.COMPLETED, None)] * 2


@pytest.mark.parametrize("site", [{}, {"FAKESCHED_PBS_HISTORY": "1"}], ids=["off", "history"])
def test_a_walltime_kill_ends_timeout(
    flavour: Backends,
    site: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_data_dir: Path,
) -> None:
    for name, value in site.items():
        monkeypatch.setenv(name, value)
    with engine_on(flavour, isolated_data_dir) as engine:
        spec = JobSpec(executable="sleep", arguments=["60"], resources={"walltime": 2})
        [done] = engine.wait([engine.submit(spec).id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, "TIMEOUT")
    assert done.exit_code in (143, -29, -11)
