"""UWS job creations against a real ``jobbridge serve`` with its default settings: the rate
from concurrent clients, and the service's own CPU time per creation (what a quiet machine
with clients elsewhere would be limited by), with and without a long history of ended jobs
per user (the per-user limit of jobs that have not ended is checked on every creation).

    python benchmarks/uws_create.py [--clients 8] [--creations 400] [--history 20000]

Each client is a user of its own (the default limit is 100 jobs that have not ended per
user). The history is written to the store before the service starts. The last line is a
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _serve import Service, service

from jobbridge import Job, JobSpec, Phase, Store, load_config
from jobbridge.job import new_job_id
from jobbridge.store.uws import ParameterValue, UwsJobRecord, UwsStore


def add_history(data_dir: Path, users: int, per_user: int) -> None:
    """``per_user`` COMPLETED jobs of the demo definition for each user, written in bulk."""
    store = Store(load_config(environ={"JOBBRIDGE_DATA_DIR": str(data_dir)}).database_url)
    uws = UwsStore(store)
    spec = JobSpec(executable="true", name="sum")
    start = datetime.now(UTC) - timedelta(days=1)
    for user in range(users):
        owner = f"bench{user}"
        for first in range(0, per_user, 5000):
            jobs, records = [], []
            for n in range(first, min(per_user, first + 5000)):
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
            store.add(jobs)
            uws.add_jobs(records)
    store.close()


def creations(server: Service, total: int) -> tuple[float, float]:
    """Jobs created per second by one client per token, and service CPU ms per creation."""
    clients = len(server.tokens)
    share = total // clients

    def create(token: str) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            for n in range(share):
                response = client.post(f"{server.url}/jobs/sum", data={"count": str(n)})
                assert response.status_code == 303, response.text

    before, started = server.cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(create, server.tokens))
    elapsed, used = time.perf_counter() - started, server.cpu_seconds() - before
    return clients * share / elapsed, used / (clients * share) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--creations", type=int, default=400, help="at most 100 per client")
    parser.add_argument("--history", type=int, default=20_000, help="ended jobs per user")
    args = parser.parse_args()
    figures: dict[str, object] = {"clients": args.clients, "creations": args.creations}
    with service(args.clients) as server:
        rate, cpu_ms = creations(server, args.creations)
    figures.update(
        creations_per_second=round(rate, 1), service_cpu_ms_per_creation=round(cpu_ms, 2)
    )
    print(f"{rate:.0f} creations/s from {args.clients} clients, {cpu_ms:.2f} ms service CPU each")
    if args.history:

        def prepare(data_dir: Path) -> None:
            add_history(data_dir, args.clients, args.history)

        with service(args.clients, prepare) as server:
            rate, cpu_ms = creations(server, args.creations)
        figures.update(
            history_per_user=args.history,
            with_history_creations_per_second=round(rate, 1),
            with_history_service_cpu_ms_per_creation=round(cpu_ms, 2),
        )
        print(f"with {args.history} ended jobs per user: {rate:.0f}/s, {cpu_ms:.2f} ms each")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
