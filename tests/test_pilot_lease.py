"""One coordinator per store, across processes: a second coordinator is told who holds the
store's pilot lease, waits for it, and takes over every pilot and unit when the holder is
killed (SIGKILL), each unit running exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from jobbridge import Engine, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.errors import JobbridgeError
from jobbridge.pilot import Coordinator, CoordinatorBusyError, CoordinatorSettings
from jobbridge.store.pilots import PilotStore

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from collections import Counter
    from pathlib import Path
    from jobbridge import Engine, EngineSettings, Store
    from jobbridge.backends.base import BackendContext
    from jobbridge.backends.local import LocalBackend, LocalOptions
    from jobbridge.pilot import (
        Coordinator, CoordinatorBusyError, CoordinatorSettings, PilotJobDescription,
        PilotJobService, WorkUnitDescription, WorkUnitService,
    )

    url, jobs_dir, mode, ledger = sys.argv[1:5]
    backend = LocalBackend("local", LocalOptions(grace_period=1.0), BackendContext(Path(jobs_dir)))
    engine = Engine(Store(url), {"local": backend}, settings=EngineSettings(refresh_interval=0.1))
    settings = CoordinatorSettings(settle=0.3, refresh_interval=0.2, lease_duration=2.0)

    def say(**what):
        print(json.dumps(what), flush=True)

    if mode == "hold":
        coordinator = Coordinator(engine, settings)
        pjs = PilotJobService(coordinator=coordinator)
        pilot = pjs.create("local", PilotJobDescription(total_cpu_count=2))
        assert pilot.wait_active(60)
        wus = WorkUnitService(coordinator=coordinator)
        wus.add(pjs)
        script = 'sleep 0.1; echo "$JOBBRIDGE_UNIT_ID" >> "$1"'
        wus.submit_many(
            [WorkUnitDescription(executable="sh", arguments=["-c", script, "sh", ledger])
             for _ in range(60)]
        )
        say(service=wus.id, pilot=pilot.job_id)
        time.sleep(3600)
    else:
        try:
            Coordinator(engine, settings)
        except CoordinatorBusyError as error:
            say(busy=str(error), holder=error.holder)
        began = time.monotonic()
        coordinator = Coordinator(engine, settings, wait=120)
        say(took=time.monotonic() - began)
        wus = WorkUnitService(mode, coordinator=coordinator)
        assert wus.wait(120)
        say(states=dict(Counter(unit.state.value for unit in wus.work_units)))
        coordinator.close()
    """
)


def child(tmp_path: Path, url: str, mode: str, ledger: Path) -> subprocess.Popen[str]:
    script = tmp_path / "coordinate.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "data" / "jobs"), mode, str(ledger)],
        stdout=subprocess.PIPE,
        text=True,
    )


def said(process: subprocess.Popen[str]) -> dict[str, object]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"the child said nothing (exit {process.poll()})"
    found = json.loads(line)
    assert isinstance(found, dict)
    return found


def test_a_second_coordinator_takes_over_when_the_first_is_killed(
    store_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    first = child(tmp_path, store_url, "hold", ledger)
    second: subprocess.Popen[str] | None = None
    try:
        ids = said(first)
        deadline = time.monotonic() + 60
        while not (ledger.exists() and len(ledger.read_text().split()) >= 5):
            assert time.monotonic() < deadline, "the first coordinator ran no unit"
            time.sleep(0.05)
        second = child(tmp_path, store_url, str(ids["service"]), ledger)
        busy = said(second)
        assert f":{first.pid}:" in str(busy["holder"]), busy
        assert "coordinates the pilots of this store" in str(busy["busy"])
        time.sleep(1.0)  # it waits while the first one renews its lease
        assert second.poll() is None
        os.kill(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        took = said(second)
        assert float(str(took["took"])) > 1.0
        assert time.monotonic() - killed < 10
        assert said(second)["states"] == {"COMPLETED": 60}
        assert second.wait(30) == 0
        ran = ledger.read_text().split()
        assert len(ran) == 60 and max(Counter(ran).values()) == 1, "each unit ran exactly once"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        stop_pilots(store_url, tmp_path / "data" / "jobs")


def stop_pilots(url: str, jobs_dir: Path) -> None:
    backend = LocalBackend("local", LocalOptions(grace_period=1.0), BackendContext(jobs_dir))
    with Engine(Store(url), {"local": backend}) as engine:
        for row in PilotStore(engine.store).pilots(done=None):
            with contextlib.suppress(JobbridgeError):
                engine.cancel(row["job_id"])


def test_a_second_coordinator_in_one_process_is_refused_then_takes_over_on_close(
    engine: Engine,
) -> None:
    settings = CoordinatorSettings(lease_duration=5.0)
    first = Coordinator(engine, settings)
    try:
        with pytest.raises(CoordinatorBusyError, match=f":{os.getpid()}:"):
            Coordinator(engine, settings, wait=0.5)
    finally:
        first.close()
    began = time.monotonic()
    second = Coordinator(engine, settings, wait=0.0)  # given up at close: free at once
    second.close()
    assert time.monotonic() - began < 2
