"""What the batch benchmarks share: an engine on a scratch store, a command counter, the raw
loops and the psij references they are measured against."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobbridge import Engine, EngineSettings, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.sge import SgeBackend
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.transport.base import CommandResult, Transport
from jobbridge.transport.local import LocalTransport

KINDS: dict[str, type[BatchBackend]] = {"slurm": SlurmBackend, "sge": SgeBackend}
HOLD = {"slurm": {"slurm.hold": True}, "sge": {"sge.hold": True}}
CANCEL = {"slurm": "scancel", "sge": "qdel"}


class CountingTransport(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.commands.append(list(argv))
        return super().run(argv, **kwargs)


@contextmanager
def batch_engine(
    kind: str = "slurm", **options: Any
) -> Iterator[tuple[Engine, BatchBackend, CountingTransport | Transport]]:
    """An engine with one batch backend; on this machine its commands are counted."""
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        root = Path(scratch)
        cls = KINDS[kind]
        settings = cls.Options.model_validate({"min_refresh_interval": 0, **options})
        backend = cls(kind, settings, BackendContext(root / "jobs"))
        transport: CountingTransport | Transport = backend.transport
        if getattr(settings, "host", None) is None:
            transport = backend.transport = CountingTransport()
        engine = Engine(
            Store(f"sqlite:///{root / 'jobbridge.db'}"),
            {kind: backend},
            settings=EngineSettings(refresh_interval=0.1),
            default_backend=kind,
        )
        try:
            yield engine, backend, transport
        finally:
            ids = [job.native_id.split("_")[0] for job in engine.store.active() if job.native_id]
            for start in range(0, len(ids), 500):
                transport.run([CANCEL[kind], *ids[start : start + 500]], check=False)
            engine.close()


@contextmanager
def slurm_engine(
    **options: Any,
) -> Iterator[tuple[Engine, BatchBackend, CountingTransport | Transport]]:
    with batch_engine("slurm", **options) as made:
        yield made


def raw_submit(kind: str, count: int) -> tuple[float, list[str]]:
    """A plain serial loop of held submissions (sbatch or qsub): jobs per second, native ids."""
    with tempfile.TemporaryDirectory(prefix="jobbridge-raw-") as scratch:
        script = Path(scratch) / "job.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        if kind == "slurm":
            command = ["sbatch", "--parsable", "--hold", "--output=/dev/null", str(script)]
        else:
            command = ["qsub", "-terse", "-h", "-o", "/dev/null", "-e", "/dev/null", str(script)]
        ids = []
        started = time.perf_counter()
        for _ in range(count):
            done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, check=True)
            ids.append(done.stdout.strip().split(";")[0])
        elapsed = time.perf_counter() - started
    return count / elapsed, ids


def cancel(kind: str, native_ids: Sequence[str]) -> None:
    for start in range(0, len(native_ids), 500):
        subprocess.run([CANCEL[kind], *native_ids[start : start + 500]], capture_output=True)
