"""Load on the UWS service: real ``jobbridge serve`` processes on 127.0.0.1, with the default
settings (refresh intervals, push) for everything that decides latency:

- job creations per second from concurrent HTTP clients, round-robin over the replicas;
- ``GET {base}/jobs/stamp?LAST=100`` with ``--stored`` jobs stored (p50 and p95);
- WAIT wake-up: a client blocked with ``WAIT=-1`` on an EXECUTING job, from the moment its
  program ended (the time it wrote last, read back as a result) to the client having the
  answer, for local jobs and, when the SLURM test cluster is up, SLURM jobs. With several
  replicas the job is created on one replica and waited for on the next.

    python benchmarks/uws_load.py [--replicas 3] [--stored 100000] [--wait-samples 20]
    python benchmarks/uws_load.py --stored 2000 --creations 80 --wait-samples 3   # quick

One replica uses SQLite; several use PostgreSQL (``--database-url``, by default a scratch
database on the test server of ``scripts/test-clusters.sh``, dropped afterwards). Only
``max_active_jobs`` is raised (the PENDING jobs created count against it). The pushes the
replicas received are reported too. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from jobbridge import Job, JobSpec, Phase, Store
from jobbridge.job import new_job_id
from jobbridge.store.uws import ParameterValue, UwsJobRecord, UwsStore

TEST_ENV = Path(os.environ.get("JOBBRIDGE_TEST_ENV_DIR", "/var/tmp/jobbridge-test"))
STAMP = """\
name: {name}
description: sleeps, then writes the time it ended
parameters:
  sleep: {{type: float, default: 0}}
command: [python3, -c, "import sys, time; time.sleep(float(sys.argv[1])); \
open('end.txt', 'w').write(repr(time.time()))", "${{sleep}}"]
backend: {backend}
results:
  - {{glob: end.txt, name: end, media_type: text/plain}}
"""
CONFIG = """\
database_url = "{url}"
default_backend = "local"
[backends.local]
kind = "local"
{slurm}
[service]
definitions_dir = "{definitions}"
max_active_jobs = 1000000
cookie_secret = "{secret}"
"""
SLURM = '[backends.slurm]\nkind = "slurm"\n'


class Replicas:
    def __init__(self, url: str, data_dir: Path, count: int, slurm: bool) -> None:
        self.url = url
        definitions = data_dir / "definitions"
        definitions.mkdir()
        (definitions / "stamp.yaml").write_text(STAMP.format(name="stamp", backend="local"))
        if slurm:
            (definitions / "stamp-slurm.yaml").write_text(
                STAMP.format(name="stamp-slurm", backend="slurm")
            )
        config = data_dir / "jobbridge.toml"
        config.write_text(
            CONFIG.format(
                url=url, definitions=definitions, secret=secrets.token_hex(16),
                slurm=SLURM if slurm else "",
            )
        )  # fmt: skip
        self.store = Store(url)  # the schema, before the replicas meet
        users = UwsStore(self.store)
        self.token = users.add_user("bench")
        users.close()
        env = {**os.environ, "JOBBRIDGE_CONFIG": str(config), "JOBBRIDGE_DATA_DIR": str(data_dir)}
        jobbridge = shutil.which("jobbridge", path=str(Path(sys.executable).parent)) or "jobbridge"
        self.urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            port = free_port()
            self.processes.append(
                subprocess.Popen(
                    [jobbridge, "serve", "--port", str(port)], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            self.urls.append(f"http://127.0.0.1:{port}")
        for url_ in self.urls:
            self._wait_until_up(url_)

    def _wait_until_up(self, url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/jobs/stamp", headers=self.headers).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the replica at {url} did not start")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, n: int) -> httpx.Client:
        return httpx.Client(
            base_url=self.urls[n % len(self.urls)], headers=self.headers, timeout=120
        )

    def pushes(self) -> float:
        total = 0.0
        for url in self.urls:
            text = httpx.get(f"{url}/metrics").text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "jobbridge_push_messages_received_total":
                        total += sample.value if sample.labels.get("event") == "ended" else 0
        return total

    def close(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.store.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def scratch_postgres(server: str) -> Iterator[str]:
    name = f"jobbridge_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_server(name: str, key: str) -> str | None:
    if key in os.environ:
        return os.environ[key]
    path = TEST_ENV / f"{name}.env"
    if not path.exists():
        return None
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}.get(key)


def creations_per_second(replicas: Replicas, clients: int, total: int) -> float:
    per_client = total // clients

    def create_many(n: int) -> None:
        with replicas.client(n) as client:
            for count in range(per_client):
                response = client.post("/jobs/stamp", data={"sleep": str(count)})
                assert response.status_code == 303, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create_many, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def store_many(store: Store, owner: str, count: int) -> None:
    """``count`` finished jobs of the stamp definition, written in bulk."""
    uws = UwsStore(store)
    spec = JobSpec(executable="true", name="stamp")
    start = datetime.now(UTC) - timedelta(days=1)
    for first in range(0, count, 5000):
        jobs, records = [], []
        for n in range(first, min(count, first + 5000)):
            created = start + timedelta(milliseconds=n)
            job = Job(
                id=new_job_id(), spec=spec, backend="local", owner=owner,
                phase=Phase.COMPLETED, created=created, ended=created,
            )  # fmt: skip
            jobs.append(job)
            records.append(
                UwsJobRecord(
                    job_id=job.id, definition="stamp", owner=owner, run_id=None,
                    parameters=(ParameterValue(id="sleep", value="0"),),
                    execution_duration=600, quote=None, created=created,
                )
            )  # fmt: skip
        store.add(jobs)
        uws.add_jobs(records)
    uws.close()
    if store.dialect == "postgresql":  # what autovacuum does soon after a bulk load
        with store.writing() as conn:
            conn.exec_driver_sql("ANALYZE")


def list_latencies(replicas: Replicas, samples: int) -> list[float]:
    seconds = []
    with replicas.client(0) as client:
        for _ in range(samples):
            started = time.perf_counter()
            response = client.get("/jobs/stamp", params={"LAST": "100"})
            seconds.append(time.perf_counter() - started)
            assert response.content.count(b"<uws:jobref") == 100
    return seconds


def phase_of(client: httpx.Client, url: str, **params: str) -> str:
    response = client.get(url, params=params, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    return str(response.json()["phase"])


def wait_latencies(
    replicas: Replicas, definition: str, samples: int, sleep: float
) -> tuple[list[float], int]:
    """Seconds from each program's end to the WAIT's answer; and the samples left out
    because the job had ended before the WAIT was asked."""
    latencies, missed = [], 0
    for n in range(samples):
        with replicas.client(n) as creator, replicas.client(n + 1) as waiter:
            response = creator.post(
                f"/jobs/{definition}", data={"PHASE": "RUN", "sleep": str(sleep)}
            )
            url = response.headers["location"]
            seen = phase_of(waiter, url)
            while seen in ("PENDING", "QUEUED"):
                seen = phase_of(waiter, url, WAIT="120", PHASE=seen)
            asked = time.time()
            if seen == "EXECUTING":
                seen = phase_of(waiter, url, WAIT="-1", PHASE="EXECUTING")
            received = time.time()
            assert seen == "COMPLETED", seen
            ended = float(waiter.get(f"{url}/results/end").text)
            if ended < asked:
                missed += 1
                continue
            latencies.append(received - ended)
    return latencies, missed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(prefix: str, seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {f"{prefix}_p50_ms": None, f"{prefix}_p95_ms": None}
    return {
        f"{prefix}_p50_ms": round(statistics.median(seconds) * 1000, 2),
        f"{prefix}_p95_ms": round(percentile(seconds, 0.95) * 1000, 2),
    }


def shown(seconds: list[float]) -> str:
    if not seconds:
        return "no samples"
    p50, p95 = statistics.median(seconds), percentile(seconds, 0.95)
    return f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--database-url", help="default: SQLite for one replica, else a"
                        " scratch database on the test PostgreSQL")  # fmt: skip
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--creations", type=int, default=400)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--list-samples", type=int, default=100)
    parser.add_argument("--wait-samples", type=int, default=20)
    parser.add_argument("--no-slurm", action="store_true", help="local jobs only")
    args = parser.parse_args()
    slurm = not args.no_slurm and shutil.which("sbatch") is not None
    with tempfile.TemporaryDirectory() as scratch, database(args, Path(scratch)) as url:
        replicas = Replicas(url, Path(scratch), args.replicas, slurm)
        try:
            rate = creations_per_second(replicas, args.clients, args.creations)
            print(f"creations: {rate:.0f} jobs/s from {args.clients} clients")
            store_many(replicas.store, "bench", max(0, args.stored - args.creations))
            listing = list_latencies(replicas, args.list_samples)
            print(f"LAST=100 of {args.stored}: p50 {statistics.median(listing) * 1000:.1f} ms")
            local, local_missed = wait_latencies(replicas, "stamp", args.wait_samples, 0.5)
            print(f"WAIT wake-up, local: {shown(local)}")
            remote, remote_missed = ([], 0)
            if slurm:
                remote, remote_missed = wait_latencies(
                    replicas, "stamp-slurm", args.wait_samples, 1.0
                )
                print(f"WAIT wake-up, SLURM: {shown(remote)}")
            pushes = replicas.pushes()
        finally:
            replicas.close()
    figures = {
        "settings": "defaults",
        "replicas": args.replicas,
        "database": url.split(":", 1)[0],
        "clients": args.clients,
        "creations_per_second": round(rate, 1),
        "stored_jobs": args.stored,
        **summary("list_last_100", listing),
        **summary("wait_wakeup_local", local),
        "wait_samples_local": len(local),
        "wait_missed_local": local_missed,
        **summary("wait_wakeup_slurm", remote),
        "wait_samples_slurm": len(remote),
        "wait_missed_slurm": remote_missed,
        "ended_pushes_received": pushes,
    }
    print(json.dumps(figures))


@contextmanager
def database(args: argparse.Namespace, scratch: Path) -> Iterator[str]:
    if args.database_url:
        yield args.database_url
    elif args.replicas == 1:
        yield f"sqlite:///{scratch / 'jobbridge.db'}"
    else:
        server = test_server("postgres", "JOBBRIDGE_TEST_POSTGRES_URL")
        if server is None:
            raise SystemExit("several replicas need PostgreSQL: give --database-url")
        with scratch_postgres(server) as url:
            yield url


if __name__ == "__main__":
    main()
