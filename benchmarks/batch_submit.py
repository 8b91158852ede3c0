"""Submission rate on real SLURM: jobbridge vs a raw sbatch loop, and one array of 1,000.

    python benchmarks/batch_submit.py [--jobs 200] [--array 1000]

Needs the SLURM test cluster (scripts/test-clusters.sh up slurm). Jobs are submitted held
and cancelled afterwards, so the cluster never runs them. Last line: JSON figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from _slurm import slurm_engine

from jobbridge import JobSpec


def raw_sbatch_rate(count: int) -> float:
    with tempfile.TemporaryDirectory(prefix="jobbridge-raw-") as scratch:
        script = Path(scratch) / "job.sh"
        script.write_text("#!/bin/bash\n#SBATCH --output=/dev/null\ntrue\n")
        ids = []
        started = time.perf_counter()
        for _ in range(count):
            done = subprocess.run(
                ["sbatch", "--parsable", "--hold", str(script)],
                cwd=scratch,
                capture_output=True,
                text=True,
                check=True,
            )
            ids.append(done.stdout.strip())
        elapsed = time.perf_counter() - started
        subprocess.run(["scancel", *ids], check=False)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--array", type=int, default=1000)
    args = parser.parse_args()
    spec = JobSpec(executable="true", attributes={"slurm.hold": True})
    raw = raw_sbatch_rate(args.jobs)
    with slurm_engine() as (engine, _backend, transport):
        started = time.perf_counter()
        for _ in range(args.jobs):
            engine.submit(spec)
        ours = args.jobs / (time.perf_counter() - started)
        transport.commands.clear()
        started = time.perf_counter()
        members = engine.submit_array(spec.replace(array=f"0-{args.array - 1}"))
        array_seconds = time.perf_counter() - started
        array_calls = sum(command[0] == "sbatch" for command in transport.commands)
        assert all(member.is_submitted for member in members)
    figures = {
        "scheduler": "slurm",
        "jobs": args.jobs,
        "jobbridge_jobs_per_s": round(ours, 1),
        "raw_sbatch_jobs_per_s": round(raw, 1),
        "jobbridge_vs_raw": round(ours / raw, 3),
        "array_members": args.array,
        "array_sbatch_calls": array_calls,
        "array_submit_s": round(array_seconds, 2),
    }
    print(
        f"jobbridge {ours:.0f} jobs/s vs raw sbatch {raw:.0f} jobs/s; array of {args.array} in "
        f"{array_seconds:.2f} s with {array_calls} sbatch call(s)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
