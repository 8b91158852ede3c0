"""Cost of one refresh on real SLURM with N held jobs: commands, wall time, jobbridge's own
CPU and that of the commands; psij-python's poll of the same jobs in the same run, where it
is installed (pip install -e '.[bench]').

    python benchmarks/batch_poll.py [--sizes 1000 3000] [--refreshes 5]

Needs the SLURM test cluster (scripts/test-clusters.sh up slurm). Last line: JSON figures.

psij reads ``squeue --me`` split on blanks and gives up at a line it cannot read (a reason
with a space, such as ``ReqNodeNotAvail, UnavailableNodes:vm``), which makes its poll look
cheap: the run first waits (up to MinJobAge) until no such line is left, and each figure says
whether psij's poll read every job (``psij.read_all``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from _slurm import slurm_engine

from jobbridge import JobSpec, Phase


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action: Callable[[], object], times: int) -> tuple[float, float, float]:
    """Median wall, own CPU and commands' CPU of ``action``, in ms."""
    walls, own, helpers = [], [], []
    for _ in range(times):
        wall, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
        action()
        walls.append(time.perf_counter() - wall)
        own.append(time.process_time() - cpu)
        helpers.append(children_cpu() - child)
    return tuple(round(statistics.median(v) * 1000, 1) for v in (walls, own, helpers))  # type: ignore[return-value]


def psij_executor() -> Any:
    try:
        import psij
        from psij.executors.batch.slurm import SlurmExecutorConfig
    except ImportError:
        return None
    config = SlurmExecutorConfig(initial_queue_polling_delay=3600, queue_polling_interval=3600)
    return psij.JobExecutor.get_instance("slurm", config=config)


def psij_can_read_the_queue(executor: Any) -> bool:
    listing = subprocess.run(
        executor.get_status_command([]), capture_output=True, text=True, check=False
    )
    try:
        executor.parse_status_output(listing.returncode, listing.stdout)
    except Exception:  # psij's parser asserts
        return False
    return True


def wait_for_a_queue_psij_reads(executor: Any, longest: float = 360.0) -> bool:
    """Lines psij cannot read leave the queue after MinJobAge (300 s by default)."""
    deadline = time.monotonic() + longest
    while not psij_can_read_the_queue(executor):
        if time.monotonic() > deadline:
            return False
        time.sleep(10)
    return True


def psij_poll(native_ids: list[str], refreshes: int) -> dict[str, Any] | None:
    executor = psij_executor()
    if executor is None:
        return None
    import psij

    jobs = [psij.Job() for _ in native_ids]
    for job, native_id in zip(jobs, native_ids, strict=True):
        executor.attach(job, native_id)
    poller = executor._queue_poll_thread
    wall, own, command = timed(poller._poll, refreshes)
    read_all = all(job.status.state == psij.JobState.QUEUED for job in jobs)
    return {
        "refresh_wall_ms": wall,
        "refresh_own_cpu_ms": own,
        "refresh_command_cpu_ms": command,
        "read_all": read_all,
    }


def measure(size: int, refreshes: int) -> dict[str, Any]:
    with slurm_engine() as (engine, _backend, transport):
        spec = JobSpec(executable="true", attributes={"slurm.hold": True})
        jobs = engine.submit_many([spec] * size)
        engine.refresh()
        commands: list[int] = []

        def refresh() -> None:
            transport.commands.clear()
            engine.refresh(force=True)
            commands.append(len(transport.commands))

        wall, own, command = timed(refresh, refreshes)
        held = sum(job.phase is Phase.HELD for job in engine.store.get_many(j.id for j in jobs))
        reference = psij_poll([job.native_id or "" for job in jobs], refreshes)
    row: dict[str, Any] = {
        "jobs": size,
        "queue_lines": queue_lines(),
        "held_seen": held,
        "commands_per_refresh": max(commands),
        "refresh_wall_ms": wall,
        "refresh_own_cpu_ms": own,
        "refresh_command_cpu_ms": command,
    }
    if reference is not None:
        row["psij"] = reference
        if reference["read_all"]:
            row["own_cpu_vs_psij"] = round(own / max(reference["refresh_own_cpu_ms"], 0.1), 2)
    return row


def queue_lines() -> int:
    """Jobs of this user that ``squeue --me --states=all`` lists (ended ones included)."""
    listing = subprocess.run(
        ["squeue", "--me", "--noheader", "--states=all", "--format=%i"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return len(listing.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--refreshes", type=int, default=5)
    args = parser.parse_args()
    executor = psij_executor()
    if executor is not None and not wait_for_a_queue_psij_reads(executor):
        print("the queue still holds lines psij cannot read: its figures will not count")
    results = [measure(size, args.refreshes) for size in args.sizes]
    for row in results:
        psij = row.get("psij")
        print(
            f"{row['jobs']:>5} held jobs: {row['commands_per_refresh']} command(s) per refresh, "
            f"{row['refresh_wall_ms']} ms wall, {row['refresh_own_cpu_ms']} ms own CPU"
            + (
                f"; psij {psij['refresh_wall_ms']} ms / {psij['refresh_own_cpu_ms']} ms"
                + ("" if psij["read_all"] else " (psij did not read every job)")
                if psij
                else ""
            )
        )
    print(json.dumps({"scheduler": "slurm", "results": results}))


if __name__ == "__main__":
    main()
