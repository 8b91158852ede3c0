"""Submission rate on a real scheduler against a raw serial submission loop measured in the
same run: jobbridge's ``submit()`` one by one (by default: each job recorded and claimed
before it returns, handed over in the background with bounded concurrency, all settled
within the measured time; and ``background=False``, waiting for each handover),
``submit_many()``, and one array of 1,000.

    python benchmarks/batch_submit.py [--scheduler slurm|sge] [--jobs 200] [--array 1000]
        [--rounds 3]

Needs the test cluster (scripts/test-clusters.sh up slurm / sge). Jobs are submitted held
and cancelled afterwards, so the cluster never runs them. Figures are medians of the rounds;
``submit_serial_own_cpu_ms`` is this process's CPU per job in ``submit()`` one by one (user
and system: the store, the job's directory and script, starting the command). Last line:
JSON figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _slurm import HOLD, batch_engine, cancel, raw_submit

from jobbridge import JobSpec

RATES = ("submit_serial", "submit_waiting", "submit_many")


def one_round(kind: str, count: int) -> dict[str, float]:
    raw, ids = raw_submit(kind, count)
    cancel(kind, ids)
    spec = JobSpec(executable="true", attributes=HOLD[kind])
    rates = {}
    with batch_engine(kind) as (engine, _backend, _transport):
        engine.submit(spec, background=False)  # warm up
        started, cpu = time.perf_counter(), time.process_time()
        jobs = [engine.submit(spec) for _ in range(count)]
        engine.settle()
        rates["submit_serial"] = count / (time.perf_counter() - started)
        rates["submit_serial_own_cpu_ms"] = (time.process_time() - cpu) / count * 1000
        assert all(job.is_submitted for job in engine.store.get_many(job.id for job in jobs))
        started = time.perf_counter()
        jobs = [engine.submit(spec, background=False) for _ in range(count)]
        rates["submit_waiting"] = count / (time.perf_counter() - started)
        assert all(job.is_submitted for job in jobs)
        started = time.perf_counter()
        jobs = engine.submit_many([spec] * count)
        rates["submit_many"] = count / (time.perf_counter() - started)
        assert all(job.is_submitted for job in jobs)
    return {"raw": raw, **rates}


def array_round(kind: str, size: int) -> tuple[float, int]:
    spec = JobSpec(executable="true", attributes=HOLD[kind], array=f"0-{size - 1}")
    with batch_engine(kind) as (engine, _backend, transport):
        transport.commands.clear()
        started = time.perf_counter()
        members = engine.submit_array(spec)
        seconds = time.perf_counter() - started
        calls = sum(command[0] in ("sbatch", "qsub") for command in transport.commands)
        assert all(member.is_submitted for member in members)
    return seconds, calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheduler", choices=["slurm", "sge"], default="slurm")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--array", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kind = args.scheduler
    rounds = [one_round(kind, args.jobs) for _ in range(args.rounds)]
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    array_seconds, array_calls = array_round(kind, args.array)
    raw = median["raw"]
    figures = {
        "scheduler": kind,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "raw_loop_jobs_per_s": round(raw, 1),
        **{f"{key}_jobs_per_s": round(median[key], 1) for key in RATES},
        **{f"{key}_vs_raw": round(median[key] / raw, 3) for key in RATES},
        "submit_serial_own_cpu_ms": round(median["submit_serial_own_cpu_ms"], 2),
        "array_members": args.array,
        "array_submit_calls": array_calls,
        "array_submit_s": round(array_seconds, 2),
    }
    print(
        f"{kind}: raw loop {raw:.0f}/s; submit() {median['submit_serial']:.0f}/s, waiting for"
        f" each handover {median['submit_waiting']:.0f}/s, submit_many"
        f" {median['submit_many']:.0f}/s; array of {args.array} in {array_seconds:.2f} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
