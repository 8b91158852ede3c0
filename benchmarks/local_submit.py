"""Trivial local jobs end to end (submitted, run, their outcome recorded and waited for)
against this machine's spawn limit measured in the same run: posix_spawn + waitpid of
/bin/true from two threads.

    python benchmarks/local_submit.py [--jobs 1000] [--rounds 3] [--dir DIRECTORY]

jobbridge is measured through ``submit()`` one by one and through ``submit_many()``, each
round with a fresh data directory under ``--dir`` (default: the system's temporary
directory); then one status query of the local backend over all the ended jobs. Figures are
medians of the rounds, each ratio taken against the spawn limit of its own round (measured
before and after the round, and averaged: the machine's speed drifts); where psij-python is
installed, its local executor runs the same jobs in each round too. Each timed run starts
with the garbage of the runs before it collected, as a fresh process would.

Every job needs its directory and its two output files, so what creating files costs on the
disk under ``--dir`` bounds what any local runner can do: the run measures that too (the
CPU time to make a directory and two empty files, per job) and counts the files jobbridge
made per job. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
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


def job_files_ms(base: str, count: int = 300) -> float:
    """CPU milliseconds to create a directory and two empty files in it, per job."""
    scratch = tempfile.mkdtemp(prefix="files-", dir=base)
    started = time.process_time()
    for n in range(count):
        directory = os.path.join(scratch, str(n))
        os.mkdir(directory)
        for name in ("stdout", "stderr"):
            os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_WRONLY, 0o644))
    return (time.process_time() - started) / count * 1000


def files_made(jobs_dir: Path) -> int:
    """Distinct files and directories under the jobs directory (links counted once)."""
    return len({path.lstat().st_ino for path in jobs_dir.rglob("*")})


def end_to_end(base: str, count: int, many: bool) -> dict[str, float]:
    scratch = tempfile.mkdtemp(prefix="data-", dir=base)
    gc.collect()
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
        files = files_made(Path(scratch) / "jobs")
    return {
        "completed": sum(job.phase is Phase.COMPLETED for job in jobs),
        "submitted_per_s": round(count / (submitted - started), 1),
        "end_to_end_jobs_per_s": round(count / (finished - started), 1),
        "status_query_ms": round(status_s * 1000, 1),
        "files_per_job": round(files / count, 2),
    }


def psij_local(count: int) -> float | None:
    """The same jobs through psij-python's local executor, submitted and waited for (None
    if psij is not installed: ``pip install -e ".[bench]"``)."""
    try:
        import psij
    except ImportError:
        return None
    executor = psij.JobExecutor.get_instance("local")
    jobs = [psij.Job(psij.JobSpec(executable="/bin/true")) for _ in range(count)]
    gc.collect()
    started = time.perf_counter()
    for job in jobs:
        executor.submit(job)
    for job in jobs:
        job.wait()
    return count / (time.perf_counter() - started)


def one_round(base: str, count: int) -> dict[str, float]:
    before = spawn_limit(count)
    one_by_one = end_to_end(base, count, many=False)
    many = end_to_end(base, count, many=True)
    psij = psij_local(count)
    limit = (before + spawn_limit(count)) / 2
    return {
        "spawn_limit_per_s": limit,
        **({} if psij is None else {"psij_jobs_per_s": psij, "psij_vs_limit": psij / limit}),
        "job_files_ms": job_files_ms(base),
        **{f"one_by_one_{key}": value for key, value in one_by_one.items()},
        **{f"many_{key}": value for key, value in many.items()},
        "submit_vs_limit": one_by_one["end_to_end_jobs_per_s"] / limit,
        "submit_many_vs_limit": many["end_to_end_jobs_per_s"] / limit,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    # Every round's files stay until the end: on some file systems (ext4 among them) making
    # files costs more for a while after many were removed.
    spawn_limit(args.jobs)  # the first spawns of a process are slower: not a reference
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-", dir=args.dir) as base:
        rounds = [one_round(base, args.jobs) for _ in range(args.rounds)]
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    figures = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        **{key: round(value, 3) for key, value in median.items()},
        "submit_vs_limit_per_round": [round(r["submit_vs_limit"], 3) for r in rounds],
        "submit_many_vs_limit_per_round": [round(r["submit_many_vs_limit"], 3) for r in rounds],
        "supervisor_startup_ms": round(supervisor_startup_seconds() * 1000, 1),
        "cpus": os.cpu_count(),
    }
    print(
        f"spawn limit {median['spawn_limit_per_s']:.0f}/s; end to end: submit()"
        f" {median['one_by_one_end_to_end_jobs_per_s']}/s, submit_many()"
        f" {median['many_end_to_end_jobs_per_s']}/s; a job's own files"
        f" {median['job_files_ms']:.3f} ms"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
