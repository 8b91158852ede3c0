"""Cost of one refresh on real SLURM with N held jobs: commands, wall time, jobbridge's own
CPU and that of the commands; psij-python's poll of the same jobs in the same run, where it
is installed (pip install -e '.[bench]').

    python benchmarks/batch_poll.py [--sizes 1000 3000] [--refreshes 5]

Needs the SLURM test cluster (scripts/test-clusters.sh up slurm). Last line: JSON figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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


def psij_poll(native_ids: list[str], refreshes: int) -> dict[str, float] | None:
    try:
        import psij
        from psij.executors.batch.slurm import SlurmExecutorConfig
    except ImportError:
        return None
    config = SlurmExecutorConfig(initial_queue_polling_delay=3600, queue_polling_interval=3600)
    executor = psij.JobExecutor.get_instance("slurm", config=config)
    for native_id in native_ids:
        executor.attach(psij.Job(), native_id)
    poller = executor._queue_poll_thread
    wall, own, command = timed(poller._poll, refreshes)
    return {"refresh_wall_ms": wall, "refresh_own_cpu_ms": own, "refresh_command_cpu_ms": command}


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
        "held_seen": held,
        "commands_per_refresh": max(commands),
        "refresh_wall_ms": wall,
        "refresh_own_cpu_ms": own,
        "refresh_command_cpu_ms": command,
    }
    if reference is not None:
        row["psij"] = reference
        row["own_cpu_vs_psij"] = round(own / max(reference["refresh_own_cpu_ms"], 0.1), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--refreshes", type=int, default=5)
    args = parser.parse_args()
    results = [measure(size, args.refreshes) for size in args.sizes]
    for row in results:
        psij = row.get("psij")
        print(
            f"{row['jobs']:>5} held jobs: {row['commands_per_refresh']} command(s) per refresh, "
            f"{row['refresh_wall_ms']} ms wall, {row['refresh_own_cpu_ms']} ms own CPU"
            + (
                f"; psij {psij['refresh_wall_ms']} ms / {psij['refresh_own_cpu_ms']} ms"
                if psij
                else ""
            )
        )
    print(json.dumps({"scheduler": "slurm", "results": results}))


if __name__ == "__main__":
    main()
