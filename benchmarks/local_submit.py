"""Trivial local jobs end to end (submitted, run, their outcome recorded and waited for)
against this machine's spawn limit measured in the same run: posix_spawn + waitpid of
/bin/true from two threads.

    python benchmarks/local_submit.py [--jobs 1000]

jobbridge is measured through ``submit()`` one by one and through ``submit_many()``;
then one status query of the local backend over all the ended jobs (it reads their result
files). The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _spawn import spawn_limit

from jobbridge import Engine, JobSpec, Phase, load_config


def supervisor_startup_seconds(samples: int = 20) -> float:
    """How long the interpreter of the local supervisor takes to start (paid once per
    jobs directory, not once per job)."""
    started = time.perf_counter()
    for _ in range(samples):
        pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-S", "-c", "pass"], {})
        os.waitpid(pid, 0)
    return (time.perf_counter() - started) / samples


def end_to_end(count: int, many: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        environ = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch}
        environ.pop("JOBBRIDGE_DATABASE_URL", None)
        environ.pop("JOBBRIDGE_CONFIG", None)
        with Engine.from_config(load_config(environ=environ)) as engine:
            spec = JobSpec(executable="/bin/true")
            started = time.perf_counter()
            if many:
                ids = [job.id for job in engine.submit_many([spec] * count, wait=False)]
            else:
                ids = [engine.submit(spec).id for _ in range(count)]
            submitted = time.perf_counter()
            jobs = engine.wait(ids, timeout=900)
            finished = time.perf_counter()
            status_started = time.perf_counter()
            engine.backend().status(jobs)
            status_s = time.perf_counter() - status_started
            db_bytes = (Path(scratch) / "jobbridge.db").stat().st_size
    return {
        "completed": sum(job.phase is Phase.COMPLETED for job in jobs),
        "submit_jobs_per_s": round(count / (submitted - started), 1),
        "end_to_end_jobs_per_s": round(count / (finished - started), 1),
        "end_to_end_s": round(finished - started, 2),
        "sqlite_bytes": db_bytes,
        "status_query_ms": round(status_s * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    limit = spawn_limit(args.jobs)
    one_by_one = end_to_end(args.jobs, many=False)
    many = end_to_end(args.jobs, many=True)
    figures = {
        "jobs": args.jobs,
        "spawn_limit_per_s": round(limit, 1),
        "submit": one_by_one,
        "submit_many": many,
        "submit_vs_limit": round(one_by_one["end_to_end_jobs_per_s"] / limit, 3),
        "submit_many_vs_limit": round(many["end_to_end_jobs_per_s"] / limit, 3),
        "supervisor_startup_ms": round(supervisor_startup_seconds() * 1000, 1),
        "cpus": os.cpu_count(),
    }
    print(
        f"spawn limit {limit:.0f}/s; end to end: submit() {one_by_one['end_to_end_jobs_per_s']}/s,"
        f" submit_many() {many['end_to_end_jobs_per_s']}/s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
