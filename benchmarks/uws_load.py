"""Load on the UWS service under a real uvicorn on 127.0.0.1, local backend, SQLite:

- job creations per second from concurrent HTTP clients;
- ``GET {base}/jobs/sum?LAST=100`` with 100,000 jobs stored (p50 and p95);
- WAIT wake-up latency: a client blocked with ``WAIT=-1`` on an EXECUTING job, from the
  moment the job's process ended (as its runner recorded it) to the client having the
  answer.

    python benchmarks/uws_load.py [--clients 8] [--creations 400] [--stored 100000]

The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn

from jobbridge import EngineSettings, Job, JobSpec, Phase, load_config
from jobbridge.config import BackendConfig, Config
from jobbridge.engine import Engine
from jobbridge.job import new_job_id
from jobbridge.store.uws import ParameterValue, UwsJobRecord, UwsStore
from jobbridge.uws import create_app

DEFINITIONS = Path(__file__).parent.parent / "examples" / "definitions"


def configure(data_dir: Path) -> Config:
    config = load_config(environ={"JOBBRIDGE_DATA_DIR": str(data_dir)})
    service = config.service.model_validate({"definitions_dir": str(DEFINITIONS)})
    local = BackendConfig(kind="local", min_refresh_interval=0.02, max_jobs_in_flight=64)
    return config.model_copy(
        update={
            "service": service,
            "engine": EngineSettings(refresh_interval=0.02),
            "backends": {"local": local},
        }
    )


class Server:
    def __init__(self, config: Config) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine = Engine.from_config(config)
        app = create_app(config, engine=self.engine)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.engine.close()


def creations_per_second(server: Server, token: str, clients: int, total: int) -> float:
    per_client = total // clients

    def create_many(_: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
            for n in range(per_client):
                response = client.post(f"{server.url}/jobs/sum", data={"count": str(n)})
                assert response.status_code == 303, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create_many, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def store_many(engine: Engine, owner: str, count: int) -> None:
    """``count`` finished jobs of the demo definition, written in bulk."""
    uws = UwsStore(engine.store)
    spec = JobSpec(executable="true", name="sum")
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
                    job_id=job.id, definition="sum", owner=owner, run_id=None,
                    parameters=(ParameterValue(id="count", value=str(n)),),
                    execution_duration=600, quote=None, created=created,
                )
            )  # fmt: skip
        engine.store.add(jobs)
        uws.add_jobs(records)
    uws.close()


def list_latencies(server: Server, token: str, samples: int) -> list[float]:
    seconds = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(samples):
            started = time.perf_counter()
            response = client.get(f"{server.url}/jobs/sum", params={"LAST": "100"})
            seconds.append(time.perf_counter() - started)
            assert response.content.count(b"<uws:jobref") == 100
    return seconds


def wait_latencies(server: Server, token: str, samples: int) -> list[float]:
    """Seconds from each job's end (recorded by its runner) to the WAIT answer."""
    latencies = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for _ in range(samples):
            url = client.post(
                f"{server.url}/jobs/sum", data={"PHASE": "RUN", "sleep": "0.3"}
            ).headers["location"]
            while client.get(f"{url}/phase").text != "EXECUTING":
                client.get(url, params={"WAIT": "5"})
            answer = client.get(url, params={"WAIT": "-1"})
            received = datetime.now(UTC)
            assert b"COMPLETED" in answer.content, answer.text
            ended = server.engine.get(url.rsplit("/", 1)[1]).ended
            assert ended is not None
            latencies.append((received - ended).total_seconds())
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--creations", type=int, default=400)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--list-samples", type=int, default=100)
    parser.add_argument("--wait-samples", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        config = configure(Path(data_dir))
        with Server(config) as server:
            users = UwsStore(server.engine.store)
            token = users.add_user("bench")
            users.close()
            rate = creations_per_second(server, token, args.clients, args.creations)
            print(f"creations: {rate:.0f} jobs/s from {args.clients} clients")
            started = time.perf_counter()
            store_many(server.engine, "bench", args.stored - args.creations)
            print(f"stored {args.stored} jobs in {time.perf_counter() - started:.1f} s")
            listing = list_latencies(server, token, args.list_samples)
            print(f"LAST=100 of {args.stored}: p50 {statistics.median(listing) * 1000:.1f} ms")
            waits = wait_latencies(server, token, args.wait_samples)
            print(f"WAIT wake-up: p50 {statistics.median(waits) * 1000:.1f} ms")
    figures = {
        "clients": args.clients,
        "creations_per_second": round(rate, 1),
        "stored_jobs": args.stored,
        "list_last_100_p50_ms": round(statistics.median(listing) * 1000, 2),
        "list_last_100_p95_ms": round(percentile(listing, 0.95) * 1000, 2),
        "wait_wakeup_p50_ms": round(statistics.median(waits) * 1000, 2),
        "wait_wakeup_p95_ms": round(percentile(waits, 0.95) * 1000, 2),
        "wait_wakeup_max_ms": round(max(waits) * 1000, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
