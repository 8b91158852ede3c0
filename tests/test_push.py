"""Push, not poll: jobs tell the service when they start and end.

Through the HTTP API of a real uvicorn, with real local jobs and real SLURM jobs: a WAIT is
woken by the job's own push (shown by polling so slow that only a push can have moved the
job), a forged, wrong or malformed push is refused and changes nothing, a repeated push
changes nothing, a push is never taken on its word, and a job whose push cannot reach the
service still ends right through polling. The batch job script's push is also run with
bash against a recording server, and against one that never answers.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from jobbridge import Engine, EngineSettings, JobSpec, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.htcondor import HTCondorBackend
from jobbridge.backends.batch.lsf import LsfBackend
from jobbridge.backends.batch.pbs import PbsProBackend
from jobbridge.backends.batch.sge import SgeBackend
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.backends.batch.torque import TorqueBackend
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.config import ServiceSettings
from jobbridge.errors import JobNotFoundError
from jobbridge.job import Job, new_job_id
from jobbridge.phase import Phase
from jobbridge.push import PushAddress, PushEvent, PushKey
from jobbridge.uws import create_app
from jobbridge.uws.push import push_endpoint
from tests.batch_support import case_jobs, make_backend, render_case
from tests.conftest import cluster_env
from tests.test_batch_slurm import slurm_backend
from tests.test_local_backend import recorded_end
from tests.test_metrics import scrape, until, value
from tests.uws_support import RunningServer, add_user, bearer, service_config, wait_for_phase

SLOW = 3600.0
"""A polling interval no test outlives: whatever moves a job then is its push."""
PUSHED = "jobbridge_push_messages_received_total"
REFUSED = "jobbridge_push_messages_refused_total"


@contextmanager
def serving(
    engine: Engine, data_dir: Path, **service: object
) -> Iterator[tuple[str, httpx.Client]]:
    app = create_app(service_config(data_dir, **service), engine=engine)
    with (
        RunningServer(app) as server,
        httpx.Client(headers=bearer(add_user(engine, "alice")), timeout=90) as client,
    ):
        yield server.url, client


def slow_local_engine(data_dir: Path) -> Engine:
    backend = LocalBackend(
        "local", LocalOptions(min_refresh_interval=SLOW), BackendContext(data_dir / "jobs")
    )
    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    return Engine(store, {"local": backend}, settings=EngineSettings(refresh_interval=SLOW))


def default_engine(data_dir: Path) -> Engine:
    return Engine.from_config(service_config(data_dir))


def run_job(client: httpx.Client, url: str, sleep: str = "0.5") -> str:
    response = client.post(f"{url}/jobs/sum", data={"PHASE": "RUN", "sleep": sleep})
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def wait_once(client: httpx.Client, job_url: str, seconds: int, phase: str) -> str:
    """The phase a single WAIT answers with."""
    document = client.get(job_url, params={"WAIT": str(seconds), "PHASE": phase}).text
    return document.split("<uws:phase>")[1].split("<")[0]


def job_of(engine: Engine, job_url: str) -> Job:
    return engine.get(job_url.rsplit("/", 1)[1])


# -- local jobs ------------------------------------------------------------------------------


def test_a_local_job_s_own_pushes_wake_a_wait_when_nothing_polls(isolated_data_dir: Path) -> None:
    with (
        slow_local_engine(isolated_data_dir) as engine,
        serving(engine, isolated_data_dir) as (url, client),
    ):
        job_url = run_job(client, url)
        assert wait_once(client, job_url, 30, "QUEUED") == "EXECUTING"
        assert wait_once(client, job_url, 30, "EXECUTING") == "COMPLETED"
        assert job_of(engine, job_url).exit_code == 0
        until(lambda: value(scrape(client, url), PUSHED, event="ended") == 1)
        assert value(scrape(client, url), PUSHED, event="started") == 1


def test_without_push_the_same_wait_is_not_woken(isolated_data_dir: Path) -> None:
    """The control of the test above: no push, and polling too slow to help."""
    with (
        slow_local_engine(isolated_data_dir) as engine,
        serving(engine, isolated_data_dir, push=False) as (url, client),
    ):
        job_url = run_job(client, url, sleep="0")
        assert wait_once(client, job_url, 3, "QUEUED") == "QUEUED"
        assert value(scrape(client, url), PUSHED, event="ended") == 0


def test_a_local_job_pushes_with_the_default_settings(isolated_data_dir: Path) -> None:
    with (
        default_engine(isolated_data_dir) as engine,
        serving(engine, isolated_data_dir) as (url, client),
    ):
        job_url = run_job(client, url)
        assert wait_for_phase(client, job_url, {"EXECUTING", "COMPLETED"}) == "EXECUTING"
        assert wait_once(client, job_url, 30, "EXECUTING") == "COMPLETED"
        until(lambda: value(scrape(client, url), PUSHED, event="ended") == 1)
        assert value(scrape(client, url), REFUSED) == 0


def test_a_job_whose_push_cannot_reach_the_service_ends_through_polling(
    isolated_data_dir: Path,
) -> None:
    with default_engine(isolated_data_dir) as engine:
        dead = "http://127.0.0.1:9/push"  # the discard port: nothing listens
        with serving(engine, isolated_data_dir, push_url=dead) as (url, client):
            job_url = run_job(client, url, sleep="0.2")
            assert wait_for_phase(client, job_url, {"COMPLETED", "ERROR"}) == "COMPLETED"
            assert job_of(engine, job_url).exit_code == 0
            samples = scrape(client, url)
            assert value(samples, PUSHED, event="ended") == 0
            assert value(samples, PUSHED, event="started") == 0


# -- pushes that must change nothing ----------------------------------------------------------


def push(client: httpx.Client, url: str, job_id: str, **fields: str) -> httpx.Response:
    return client.post(f"{url}/push/{job_id}", data=fields, headers={"Authorization": ""})


def test_forged_wrong_and_malformed_pushes_are_refused_and_change_nothing(
    isolated_data_dir: Path,
) -> None:
    with (
        slow_local_engine(isolated_data_dir) as engine,
        serving(engine, isolated_data_dir) as (url, client),
    ):
        job_url = run_job(client, url, sleep="30")
        assert wait_once(client, job_url, 30, "QUEUED") == "EXECUTING"
        job = job_of(engine, job_url)
        key: PushKey = client_app_key(engine, url, client)
        other = engine.create(JobSpec(executable="true"))
        trail = engine.store.events(job.id)
        for fields, status in [
            ({"event": "ended", "token": "0" * 64}, 403),
            ({"event": "ended"}, 403),
            ({"event": "ended", "token": key.token(other.id)}, 403),  # another job's
            ({"event": "ended", "token": "ü" * 64}, 403),
            ({"event": "finished", "token": key.token(job.id)}, 400),
            ({"event": "ended", "token": key.token(job.id), "index": "x"}, 400),
            ({"event": "ended", "token": key.token(job.id), "index": "²"}, 400),
        ]:
            assert push(client, url, job.id, **fields).status_code == status, fields
        unknown = "nosuchjob000"
        assert (
            push(client, url, unknown, event="ended", token=key.token(unknown)).status_code == 404
        )
        raw = client.post(
            f"{url}/push/{job.id}",
            content=b"\xff\x00",
            headers={"Content-Type": "application/json"},
        )
        assert raw.status_code == 403
        # a verified push is only evidence: the runner's records say the job still runs
        assert push(client, url, job.id, event="ended", token=key.token(job.id)).status_code == 204
        assert engine.store.events(job.id) == trail
        assert job_of(engine, job_url).phase is Phase.EXECUTING
        samples = scrape(client, url)
        assert value(samples, REFUSED) == 9
        assert value(samples, PUSHED, event="ended") == 1
        client.post(f"{job_url}/phase", data={"PHASE": "ABORT"})


def client_app_key(engine: Engine, url: str, client: httpx.Client) -> PushKey:
    """The service's push key, as the backends were given it."""
    address = engine.backend("local").push
    assert address is not None and address.url == f"{url}/push"
    return address.key


def test_a_repeated_or_late_push_changes_nothing(isolated_data_dir: Path) -> None:
    with (
        slow_local_engine(isolated_data_dir) as engine,
        serving(engine, isolated_data_dir) as (url, client),
    ):
        job_url = run_job(client, url, sleep="0")
        assert wait_for_phase(client, job_url, {"COMPLETED", "ERROR"}) == "COMPLETED"
        job = job_of(engine, job_url)
        trail = engine.store.events(job.id)
        token = client_app_key(engine, url, client).token(job.id)
        for event in ("ended", "ended", "started"):
            assert push(client, url, job.id, event=event, token=token).status_code == 204
        assert engine.store.events(job.id) == trail
        assert job_of(engine, job_url) == job


# -- SLURM -------------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.parametrize("polling", ["slow", "default", "unreachable"])
def test_a_slurm_job_s_pushes_wake_a_wait(isolated_data_dir: Path, polling: str) -> None:
    """``slow``: only the pushes can move the job; ``default``: the default settings, the
    pushes counted; ``unreachable``: the pushes go nowhere and polling ends the job."""
    cluster_env("slurm")
    slow = polling == "slow"
    options = {"min_refresh_interval": SLOW} if slow else {}
    backend = SlurmBackend(
        "slurm", SlurmBackend.Options(**options), BackendContext(isolated_data_dir / "jobs")
    )
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    settings = EngineSettings(refresh_interval=SLOW) if slow else EngineSettings()
    service = {"push_url": "http://127.0.0.1:9/push"} if polling == "unreachable" else {}
    with Engine(store, {"slurm": backend}, settings=settings, default_backend="slurm") as engine:
        try:
            with serving(engine, isolated_data_dir, **service) as (url, client):
                job_url = run_job(client, url, sleep="1")
                assert wait_for_phase(client, job_url, {"EXECUTING", "COMPLETED"}, 120) in (
                    {"EXECUTING"} if slow else {"EXECUTING", "COMPLETED"}
                )
                if slow:  # one WAIT, woken by the job's push alone
                    assert wait_once(client, job_url, 60, "EXECUTING") == "COMPLETED"
                ended = wait_for_phase(client, job_url, {"COMPLETED", "ERROR"}, 120)
                assert ended == "COMPLETED"
                job = job_of(engine, job_url)
                assert job.exit_code == 0 and job.native_id
                assert client.get(f"{job_url}/results/total").text == "total 5050\n"
                if polling == "unreachable":
                    assert value(scrape(client, url), PUSHED, event="ended") == 0
                else:
                    until(lambda: value(scrape(client, url), PUSHED, event="ended") == 1)
        finally:
            for job in engine.store.active():
                if job.is_submitted:
                    backend.cancel(job)


# -- the job script's push, run with bash ------------------------------------------------------


class Recorder:
    """An HTTP server that records each POST; with ``silent`` it never answers."""

    def __init__(self, *, silent: bool = False) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.release = threading.Event()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.posts.append((self.path, body))
                if silent:
                    recorder.release.wait(30)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def run_script(
    data_dir: Path, push_url: str, code: int
) -> tuple[Job, subprocess.CompletedProcess[str], float, Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    backend = slurm_backend(data_dir)
    key = PushKey(b"k" * 32)
    backend.push = PushAddress(push_url, key)
    spec = JobSpec(
        executable="sh", arguments=["-c", f"echo 'it ran'; exit {code}"], name="it's $(odd)"
    )
    job = Job.model_validate(
        {
            "id": "pushjob0001",
            "spec": spec,
            "backend": "slurm",
            "phase": "QUEUED",
            "created": "2026-01-01T00:00:00Z",
        }
    )
    script = data_dir / "job.sh"
    script.write_text(backend.render_script(job, [job]))
    (data_dir / "jobs" / job.id).mkdir(parents=True)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "4242"},
    )
    return job, done, time.monotonic() - started, data_dir / "jobs" / job.id / "exitcode"


def test_the_job_script_pushes_started_and_ended_with_its_token(isolated_data_dir: Path) -> None:
    recorder = Recorder()
    try:
        job, done, _, exit_file = run_script(isolated_data_dir, recorder.url, 3)
    finally:
        recorder.close()
    assert done.returncode == 3, done.stderr
    assert exit_file.read_text().split()[0] == "3"
    token = PushKey(b"k" * 32).token(job.id)
    assert sorted(recorder.posts) == [
        (f"/push/{job.id}", f"event=ended&index=&token={token}".encode()),
        (f"/push/{job.id}", f"event=started&index=&token={token}".encode()),
    ]
    script = (isolated_data_dir / "job.sh").read_text()
    assert script.count(token) == 1  # only in the (unexported) variable: never on a command line


def test_a_job_script_whose_push_hangs_or_fails_still_ends_in_time(isolated_data_dir: Path) -> None:
    silent = Recorder(silent=True)
    try:
        _, done, seconds, exit_file = run_script(isolated_data_dir, silent.url, 0)
    finally:
        silent.close()
    assert done.returncode == 0 and exit_file.exists()
    assert seconds < 15  # bounded by the push's own time-out, not by the silent server
    _, refused, _, _ = run_script(isolated_data_dir / "again", "http://127.0.0.1:9/push", 5)
    assert refused.returncode == 5


@pytest.mark.parametrize(
    "kind",
    [SlurmBackend, SgeBackend, PbsProBackend, TorqueBackend, LsfBackend, HTCondorBackend],
)
@pytest.mark.parametrize("case", ["plain", "array", "awkward"])
def test_every_scheduler_s_job_script_pushes_and_stays_valid(
    kind: type[BatchBackend], case: str, isolated_data_dir: Path
) -> None:
    backend = make_backend(kind, isolated_data_dir)
    backend.push = PushAddress("http://127.0.0.1:9/push", PushKey(b"k" * 32))
    script = render_case(backend, case)
    assert "jobbridge_push started &" in script
    assert "    jobbridge_push ended" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    quiet = make_backend(kind, isolated_data_dir, push=False)
    quiet.push = backend.push
    assert "jobbridge_push" not in render_case(quiet, case)


def test_an_array_member_s_script_pushes_the_array_id_and_its_index(
    isolated_data_dir: Path,
) -> None:
    backend = make_backend(SlurmBackend, isolated_data_dir)
    key = PushKey(b"k" * 32)
    recorder = Recorder()
    backend.push = PushAddress(recorder.url, key)
    members = case_jobs("array")
    (isolated_data_dir / "jobs" / "jb0array0000").mkdir(parents=True)
    script = isolated_data_dir / "array.sh"
    script.write_text(backend.render_script(members[0], members))
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1"}
    try:
        subprocess.run(["bash", str(script)], capture_output=True, timeout=60, env=env)
    finally:
        recorder.close()
    token = key.token("jb0array0000")
    assert (
        "/push/jb0array0000",
        f"event=ended&index=1&token={token}".encode(),
    ) in recorder.posts


def test_a_push_for_an_array_member_settles_that_member_alone(isolated_data_dir: Path) -> None:
    with slow_local_engine(isolated_data_dir) as engine:
        members = engine.submit_array(JobSpec(executable="true", array="0-1"))
        array_id = members[0].array_id
        assert array_id is not None
        jobs_dir = isolated_data_dir / "jobs"
        until(lambda: all(recorded_end(str(jobs_dir / m.id), m.id) for m in members))
        settled = engine.pushed(array_id, PushEvent.ENDED, index=1)
        assert settled is not None and settled.id == members[1].id
        assert settled.phase is Phase.COMPLETED
        assert engine.get(members[0].id).phase is not Phase.COMPLETED
        assert engine.pushed(array_id, PushEvent.ENDED, index=1) is None  # once only
        with pytest.raises(JobNotFoundError):
            engine.pushed(array_id, PushEvent.ENDED, index=7)


def test_where_jobs_push_to() -> None:
    assert push_endpoint(ServiceSettings()) == "http://127.0.0.1:8000/push"
    assert push_endpoint(ServiceSettings(host="0.0.0.0", port=81)) == "http://127.0.0.1:81/push"
    assert push_endpoint(ServiceSettings(host="::1")) == "http://[::1]:8000/push"
    behind = ServiceSettings(base_url="https://uws.example.org/jb/")
    assert push_endpoint(behind) == "https://uws.example.org/jb/push"
    chosen = ServiceSettings(base_url="https://x.org", push_url="http://10.0.0.5:8000/push/")
    assert push_endpoint(chosen) == "http://10.0.0.5:8000/push"
    with pytest.raises(ValidationError, match="push_url"):
        ServiceSettings(push_url="file:///etc/passwd")


def test_a_push_that_overtakes_its_job_s_submission_waits_for_it(isolated_data_dir: Path) -> None:
    """The job started, and pushed, before its submitter recorded the native id."""
    with slow_local_engine(isolated_data_dir) as engine:
        now = datetime.now(UTC)
        job = Job(
            id=new_job_id(), spec=JobSpec(executable="true"), backend="local",
            phase=Phase.QUEUED, created=now, queued=now,
        )  # fmt: skip
        engine.store.add([job])
        assert engine.store.claim(job.id, "submitter")
        native_id = engine.backend("local").submit(job)
        until(lambda: bool(recorded_end(native_id, job.id)))
        recording = threading.Timer(
            0.3, lambda: engine.store.finish_claim(job.id, "submitter", native_id)
        )
        recording.start()
        settled = engine.pushed(job.id, PushEvent.ENDED)
        recording.join()
        assert settled is not None and settled.phase is Phase.COMPLETED
