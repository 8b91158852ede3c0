"""Cost of one refresh on real SLURM with N held jobs: commands, wall and CPU time.

    python benchmarks/batch_poll.py [--sizes 100 1000] [--refreshes 5]

Needs the SLURM test cluster (scripts/test-clusters.sh up slurm). Last line: JSON figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from _slurm import slurm_engine

from jobbridge import JobSpec, Phase


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(size: int, refreshes: int) -> dict[str, float]:
    with slurm_engine() as (engine, _backend, transport):
        spec = JobSpec(executable="true", attributes={"slurm.hold": True})
        jobs = [engine.submit(spec) for _ in range(size)]
        engine.refresh()
        walls, own, commands, helpers = [], [], [], []
        for _ in range(refreshes):
            transport.commands.clear()
            wall, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
            engine.refresh()
            walls.append(time.perf_counter() - wall)
            own.append(time.process_time() - cpu)
            helpers.append(children_cpu() - child)
            commands.append(len(transport.commands))
        held = sum(engine.get(job.id).phase is Phase.HELD for job in jobs)
    return {
        "jobs": size,
        "held_seen": held,
        "commands_per_refresh": max(commands),
        "refresh_wall_ms": round(statistics.median(walls) * 1000, 1),
        "refresh_own_cpu_ms": round(statistics.median(own) * 1000, 1),
        "refresh_command_cpu_ms": round(statistics.median(helpers) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--refreshes", type=int, default=5)
    args = parser.parse_args()
    results = [measure(size, args.refreshes) for size in args.sizes]
    for row in results:
        print(
            f"{row['jobs']:>5} held jobs: {row['commands_per_refresh']} command(s) per refresh, "
            f"{row['refresh_wall_ms']} ms wall, {row['refresh_own_cpu_ms']} ms own CPU"
        )
    print(json.dumps({"scheduler": "slurm", "results": results}))


if __name__ == "__main__":
    main()
