"""Three ``jobbridge serve`` processes on one PostgreSQL store behind one service: jobs
created on any of them run exactly once, a WAIT on one is woken by a phase change that
another saw, and when the replica polling the backend is killed another takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jobbridge import Phase, Store
from jobbridge.leases import backend_lease
from jobbridge.store.uws import UwsStore
from tests.uws_support import bearer, free_port

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]

JOBS = 300
LEASE = 3.0
DEFINITION = """\
name: mark
description: waits a little, then appends its job id to a file that every job shares
parameters:
  sleep: {{type: float, default: 0}}
command: [/bin/sh, -c, 'sleep "$$1"; echo "$$JOBBRIDGE_JOB_ID" >> "$$2"', sh, "${{sleep}}", {ran}]
"""
CONFIG = """\
database_url = "{url}"
[engine]
refresh_interval = 0.1
claim_timeout = 4.0
lease_duration = {lease}
[backends.local]
kind = "local"
min_refresh_interval = 0.1
max_jobs_in_flight = 24
[service]
definitions_dir = "{definitions}"
max_wait = 60
max_active_jobs = 1000
cookie_secret = "one secret that every replica shares"
"""


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Cluster:
    replicas: list[Replica]
    store: Store
    token: str
    ran: Path

    def client(self, replica: Replica) -> httpx.Client:
        return httpx.Client(base_url=replica.url, headers=bearer(self.token), timeout=90)

    def poller(self) -> Replica:
        """The replica that holds the local backend's lease now."""
        deadline = time.monotonic() + 30
        while True:
            holder = self.store.leases().get(backend_lease("local"))
            if holder is not None:
                pid = int(holder[0].split(":")[1])
                for replica in self.replicas:
                    if replica.process.pid == pid and replica.alive:
                        return replica
            assert time.monotonic() < deadline, f"no live replica holds the lease: {holder}"
            time.sleep(0.1)


@pytest.fixture
def cluster(store_url: str, tmp_path: Path, isolated_data_dir: Path) -> Iterator[Cluster]:
    ran = tmp_path / "ran.txt"
    definitions = tmp_path / "definitions"
    definitions.mkdir()
    (definitions / "mark.yaml").write_text(DEFINITION.format(ran=ran))
    config = tmp_path / "jobbridge.toml"
    config.write_text(CONFIG.format(url=store_url, lease=LEASE, definitions=definitions))
    store = Store(store_url)  # creates the schema before the replicas meet
    users = UwsStore(store)
    token = users.add_user("alice")
    env = {
        **os.environ,
        "JOBBRIDGE_CONFIG": str(config),
        "JOBBRIDGE_DATA_DIR": str(isolated_data_dir),  # one host: the job directories shared
    }
    jobbridge = str(Path(sys.executable).parent / "jobbridge")
    replicas = []
    for number in range(3):
        port = free_port()
        log = tmp_path / f"replica-{number}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [jobbridge, "serve", "--port", str(port)], env=env, stderr=output, stdout=output
            )
        replicas.append(Replica(process, f"http://127.0.0.1:{port}", log))
    try:
        for replica in replicas:
            wait_until_up(replica, token)
        yield Cluster(replicas, store, token, ran)
    finally:
        for replica in replicas:
            if replica.alive:
                replica.process.send_signal(signal.SIGTERM)
        for replica in replicas:
            try:
                replica.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.process.kill()
        users.close()
        store.close()


def wait_until_up(replica: Replica, token: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{replica.url}/jobs/mark", headers=bearer(token)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert replica.alive, (
            f"a replica stopped while starting:\n{replica.log.read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, "a replica did not start"
        time.sleep(0.1)


def create(client: httpx.Client, sleep: float) -> str:
    response = client.post("/jobs/mark", data={"sleep": str(sleep), "PHASE": "RUN"})
    assert response.status_code == 303, response.text
    return response.headers["location"].rsplit("/", 1)[1]


def phase_of(client: httpx.Client, job_id: str, **params: str) -> str:
    response = client.get(
        f"/jobs/mark/{job_id}", params=params, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["phase"])


def test_replicas_run_each_job_once_wake_every_wait_and_survive_a_killed_poller(
    cluster: Cluster,
) -> None:
    poller = cluster.poller()
    others = [replica for replica in cluster.replicas if replica is not poller]

    # a WAIT on a replica that does not poll, for a job whose phases the poller sees
    with cluster.client(others[0]) as client:
        watched = create(client, 1.0)
        seen = phase_of(client, watched)
        changes = []
        while seen in {"QUEUED", "EXECUTING"}:
            started = time.monotonic()
            now = phase_of(client, watched, WAIT="30", PHASE=seen)
            changes.append((seen, now, time.monotonic() - started < 30))
            seen = now
    assert seen == "COMPLETED", changes
    assert all(before != after and woken for before, after, woken in changes), changes

    # 300 jobs round-robin over the three; WAITs on the replicas that will live
    clients = [cluster.client(replica) for replica in cluster.replicas]
    try:
        with ThreadPoolExecutor(12) as pool:
            ids = list(pool.map(lambda n: create(clients[n % 3], 0.2), range(JOBS)))
        survivors = [n for n, replica in enumerate(cluster.replicas) if replica is not poller]

        def wait_once(n: int) -> tuple[str, str]:
            client = clients[survivors[n % 2]]
            before = phase_of(client, ids[-1 - n])
            return before, phase_of(client, ids[-1 - n], WAIT="30", PHASE=before)

        with ThreadPoolExecutor(30) as pool:
            waits = [pool.submit(wait_once, n) for n in range(30)]
            time.sleep(0.5)  # mid-run: the poller dies while handing jobs over
            poller.process.send_signal(signal.SIGKILL)
            poller.process.wait(timeout=30)
            woken = [wait.result(timeout=120) for wait in waits]
    finally:
        for client in clients:
            client.close()
    blocked = [(before, after) for before, after in woken if before in {"QUEUED", "EXECUTING"}]
    assert blocked, "no WAIT blocked: the jobs ran too fast to show anything"
    assert all(before != after for before, after in blocked), woken  # a WAIT on an ended job
    # answers at once (jobs push their end, so some have ended before their WAIT is asked)

    new_poller = cluster.poller()
    assert new_poller is not poller and new_poller.alive

    deadline = time.monotonic() + 75
    everything = [*ids, watched]
    while True:
        jobs = cluster.store.get_many(everything)
        if all(job.phase.is_final for job in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    phases = Counter(job.phase for job in jobs)
    assert phases == {Phase.COMPLETED: JOBS + 1}, phases
    runs = Counter(cluster.ran.read_text().split())
    assert set(runs) == set(everything), "a job ran that was not created, or one did not run"
    twice = {job_id: n for job_id, n in runs.items() if n != 1}
    assert not twice, f"jobs that ran more than once: {twice}"
    native = Counter(job.native_id for job in jobs)
    assert max(native.values()) == 1, "two jobs share a native job"
