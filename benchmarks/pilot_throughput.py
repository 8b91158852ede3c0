"""Null work units (/bin/true) through one 2-core local pilot, end to end (from the submission
of the first unit to every unit's ending recorded in the store), against this machine's spawn
limit measured in the same run: posix_spawn + waitpid of /bin/true from two threads. Also the
time from a pilot's submission to its first unit running on the SLURM test cluster (if it is
up) and the agent's memory.

    python benchmarks/pilot_throughput.py [--units 5000] [--rounds 3] [--slurm-rounds 3]

Figures are medians over the rounds, after a warm-up round of 500 units. The last line is a
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _spawn import spawn_limit

from jobbridge import Engine, EngineSettings, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.pilot import (
    Coordinator,
    PilotJob,
    PilotJobDescription,
    PilotJobService,
    WorkUnit,
    WorkUnitDescription,
    WorkUnitService,
)

TEST_ENV = Path(os.environ.get("JOBBRIDGE_TEST_ENV_DIR", "/var/tmp/jobbridge-test"))


def agent_memory(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of the agent, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def local_rounds(units: int, rounds: int) -> tuple[list[float], list[float], dict[str, float]]:
    """Units/s end to end and spawn limits, alternating, on one 2-core local pilot."""
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        root = Path(scratch)
        backend = LocalBackend("local", LocalOptions(), BackendContext(root / "jobs"))
        store = Store(f"sqlite:///{root / 'jobbridge.db'}")
        with Engine(store, {"local": backend}, settings=EngineSettings()) as engine:
            coordinator = Coordinator(engine)
            try:
                pjs = PilotJobService(coordinator=coordinator)
                pilot = pjs.create("local", PilotJobDescription(total_cpu_count=2))
                assert pilot.wait_active(60), pilot.state_detail
                wus = WorkUnitService(coordinator=coordinator)
                wus.add(pjs)
                rates, limits = [], []
                null = WorkUnitDescription(executable="/bin/true")
                wus.submit_many([null] * 500)  # warm-up, not measured
                assert wus.wait(120)
                for _ in range(rounds):
                    limits.append(spawn_limit(units))
                    started = time.perf_counter()
                    done = wus.submit_many([null] * units)
                    assert wus.wait(600)
                    rates.append(units / (time.perf_counter() - started))
                    assert all(unit.state is Phase.COMPLETED for unit in done[-10:])
                limits.append(spawn_limit(units))
                agent_pid = int(pilot.agent["pid"])
                memory = agent_memory(agent_pid)
                failed = [u for u in wus.work_units if u.state is not Phase.COMPLETED]
                assert not failed, failed[:3]
                pilot.cancel()
                wait_gone(agent_pid)  # before its directory is removed
            finally:
                coordinator.close()
    return rates, limits, memory


def slurm_first_unit(rounds: int) -> list[float] | None:
    """Seconds from a pilot's submission to its first unit running, on the test SLURM."""
    if not (TEST_ENV / "slurm.env").exists():
        return None
    samples = []
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        root = Path(scratch)
        options = SlurmBackend.Options(min_refresh_interval=0.2)
        backend = SlurmBackend("slurm", options, BackendContext(root / "jobs"))
        store = Store(f"sqlite:///{root / 'jobbridge.db'}")
        with Engine(
            store, {"slurm": backend}, settings=EngineSettings(refresh_interval=0.1)
        ) as engine:
            coordinator = Coordinator(engine)
            try:
                for _ in range(rounds):
                    pjs = PilotJobService(coordinator=coordinator)
                    wus = WorkUnitService(coordinator=coordinator)
                    wus.add(pjs)
                    submitted = time.time()
                    pilot: PilotJob = pjs.create("slurm", PilotJobDescription(total_cpu_count=1))
                    unit = wus.submit(WorkUnitDescription(executable="/bin/true"))
                    assert isinstance(unit, WorkUnit)
                    assert unit.wait(120) is Phase.COMPLETED, unit.message
                    assert unit.started is not None
                    samples.append(unit.started.timestamp() - submitted)
                    pjs.cancel()
                    wait_ended(pilot)
            finally:
                coordinator.close()
    return samples


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def wait_ended(pilot: PilotJob) -> None:
    deadline = time.monotonic() + 60
    while not pilot.state.is_final and time.monotonic() < deadline:
        time.sleep(0.1)


def _listed(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slurm-rounds", type=int, default=3)
    args = parser.parse_args()

    rates, limits, memory = local_rounds(args.units, args.rounds)
    rate, limit = statistics.median(rates), statistics.median(limits)
    print(f"units through one 2-core local pilot: {args.units} x /bin/true, {args.rounds} rounds")
    print(f"  end to end: {_listed(rates)} units/s (median {rate:.0f})")
    print(f"  spawn limit, same run, around each round: {_listed(limits)}/s (median {limit:.0f})")
    around = [(before + after) / 2 for before, after in itertools.pairwise(limits)]
    ratios = [r / limit_then for r, limit_then in zip(rates, around, strict=True)]
    print(f"  ratio: {rate / limit:.2f} of the limit (per round: {_listed(ratios, 2)})")
    rss, peak = memory.get("VmRSS", 0.0), memory.get("VmHWM", 0.0)
    print(f"  agent memory: {rss:.1f} MiB resident, {peak:.1f} MiB peak")
    first = slurm_first_unit(args.slurm_rounds) if args.slurm_rounds else None
    if first:
        print(f"  SLURM, pilot submitted to first unit running: {_listed(first, 2)} s")
    figures = {
        "units": args.units,
        "rounds": args.rounds,
        "units_per_second": round(rate, 1),
        "units_per_second_rounds": [round(r, 1) for r in rates],
        "spawn_limit_per_second": round(limit, 1),
        "spawn_limit_rounds": [round(x, 1) for x in limits],
        "ratio_to_limit": round(rate / limit, 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "agent_rss_mib": round(memory.get("VmRSS", 0.0), 1),
        "agent_peak_rss_mib": round(memory.get("VmHWM", 0.0), 1),
        "slurm_first_unit_seconds": None if not first else round(statistics.median(first), 2),
        "slurm_first_unit_rounds": first and [round(s, 2) for s in first],
        "python": sys.version.split()[0],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
