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
from jobbridge.transport.base import CommandResult, Transport
from jobbridge.transport.local import LocalTransport


class CountingTransport(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        self.commands.append(list(argv))
        return super().run(argv, **kwargs)


@contextmanager
def slurm_engine(
    **options: Any,
) -> Iterator[tuple[Engine, SlurmBackend, CountingTransport | Transport]]:
    """An engine with one SLURM backend; on this machine its commands are counted."""
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        root = Path(scratch)
        settings = SlurmBackend.Options.model_validate({"min_refresh_interval": 0, **options})
        backend = SlurmBackend("slurm", settings, BackendContext(root / "jobs"))
        transport: CountingTransport | Transport = backend.transport
        if settings.host is None:
            transport = backend.transport = CountingTransport()
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
