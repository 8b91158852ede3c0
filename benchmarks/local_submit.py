"""Submit trivial local jobs and wait for them; compare with this machine's raw spawn rate.

    python benchmarks/local_submit.py [--jobs 1000]

The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobbridge import Engine, JobSpec, Phase, load_config


def raw_spawn_rate(count: int) -> float:
    """Processes per second that plain subprocess can start and reap here."""
    started = time.perf_counter()
    for _ in range(count):
        subprocess.Popen(["true"], start_new_session=True).wait()
    return count / (time.perf_counter() - started)


def runner_startup_seconds(samples: int = 20) -> float:
    """How long the interpreter that runs each local job takes to start."""
    started = time.perf_counter()
    for _ in range(samples):
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - started) / samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        environ = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch}
        environ.pop("JOBBRIDGE_DATABASE_URL", None)
        environ.pop("JOBBRIDGE_CONFIG", None)
        with Engine.from_config(load_config(environ=environ)) as engine:
            spec = JobSpec(executable="true")
            started = time.perf_counter()
            ids = [engine.submit(spec).id for _ in range(args.jobs)]
            submitted = time.perf_counter()
            jobs = engine.wait(ids, timeout=600)
            finished = time.perf_counter()
            db_bytes = (Path(scratch) / "jobbridge.db").stat().st_size
        completed = sum(job.phase is Phase.COMPLETED for job in jobs)
        raw = raw_spawn_rate(args.jobs)
    submit_rate = args.jobs / (submitted - started)
    figures = {
        "jobs": args.jobs,
        "completed": completed,
        "submit_jobs_per_s": round(submit_rate, 1),
        "end_to_end_jobs_per_s": round(args.jobs / (finished - started), 1),
        "end_to_end_s": round(finished - started, 2),
        "raw_spawn_per_s": round(raw, 1),
        "submit_vs_raw_spawn": round(submit_rate / raw, 3),
        "runner_startup_ms": round(runner_startup_seconds() * 1000, 1),
        "sqlite_bytes": db_bytes,
        "cpus": os.cpu_count(),
    }
    print(f"submitted {args.jobs} jobs at {submit_rate:.0f}/s; {completed} completed")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
