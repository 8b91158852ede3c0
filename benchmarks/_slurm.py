"""What the SLURM benchmarks share: an engine on a scratch store and a command counter."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobbridge import Engine, EngineSettings, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.transport.base import CommandResult
from jobbridge.transport.local import LocalTransport


class CountingTransport(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.commands.append(list(argv))
        return super().run(argv, **kwargs)


@contextmanager
def slurm_engine() -> Iterator[tuple[Engine, SlurmBackend, CountingTransport]]:
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        root = Path(scratch)
        options = SlurmBackend.Options(min_refresh_interval=0)
        backend = SlurmBackend("slurm", options, BackendContext(root / "jobs"))
        transport = CountingTransport()
        backend.transport = transport
        engine = Engine(
            Store(f"sqlite:///{root / 'jobbridge.db'}"),
            {"slurm": backend},
            settings=EngineSettings(refresh_interval=0.1),
            default_backend="slurm",
        )
        try:
            yield engine, backend, transport
        finally:
            for job in engine.store.active():
                if job.native_id:
                    transport.run(["scancel", job.native_id.split("_")[0]], check=False)
            engine.close()
