"""TROY's descriptions, on SAGA's job description: what a pilot asks of a resource
(``PilotJobDescription``) and what one work unit runs (``WorkUnitDescription``).

Both may be filled in attribute by attribute, as in TROY (``wud.executable = "/bin/date"``);
each value is checked as it is set. A field that jobbridge cannot honour, for a pilot on its
backend or for a unit inside a pilot, is refused by ``PilotDescriptionError`` naming it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobbridge.errors import SpecError
from jobbridge.spec import FileTransfer, Launcher, Memory, Walltime

__all__ = [
    "PilotDescriptionError",
    "PilotJobDescription",
    "WorkUnitDescription",
    "parse_file_transfer",
]


class PilotDescriptionError(SpecError):
    """A description field that cannot be honoured; ``field`` names it."""

    def __init__(self, kind: str, field: str, reason: str) -> None:
        self.field = field
        super().__init__(f"{kind}.{field}: {reason}")


_SAGA_ONLY = (
    "interactive", "contact", "start_time", "cpu_architecture", "operating_system_type",
    "total_cpu_time", "spmd_variation",
)  # fmt: skip
"""SAGA fields that no jobbridge backend can honour for a pilot: refused when set."""


class _Description(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    executable: str | None = None
    arguments: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    working_directory: str | None = None
    input: str | None = None
    output: str | None = None
    error: str | None = None
    file_transfer: list[str] = Field(default_factory=list)
    number_of_processes: int = Field(1, ge=1)
    processes_per_host: int | None = Field(None, ge=1)
    threads_per_process: int = Field(1, ge=1)
    total_cpu_count: int | None = Field(None, ge=1)
    wall_time_limit: Walltime | None = None
    cleanup: bool | None = None
    interactive: bool | None = None
    contact: str | None = None
    project: str | None = None
    start_time: str | None = None
    spmd_variation: str | None = None
    candidate_hosts: list[str] | None = None
    cpu_architecture: str | None = None
    total_physical_memory: Memory | None = None
    operating_system_type: str | None = None
    total_cpu_time: Walltime | None = None
    queue: str | None = None

    @field_validator("file_transfer")
    @classmethod
    def _transfers(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_file_transfer(item)
        return value

    def refuse_set(self, kind: str, fields: tuple[str, ...], reason: str) -> None:
        for name in fields:
            value = getattr(self, name)
            if value not in (None, False, [], {}):
                raise PilotDescriptionError(kind, name, reason)


def parse_file_transfer(text: str) -> tuple[str, FileTransfer]:
    """SAGA's ``local > remote`` (copy in) or ``local < remote`` (copy out); ``->`` as in
    jobbridge's stage_in means in. Returns ("in" or "out", the transfer)."""
    for sign, direction in ((">>", "in"), ("<<", "out"), ("->", "in"), (">", "in"), ("<", "out")):
        local, found, remote = text.partition(sign)
        if found:
            local, remote = local.strip(), remote.strip()
            if not local or not remote:
                break
            if direction == "in":
                return direction, FileTransfer(source=local, target=remote)
            return direction, FileTransfer(source=remote, target=local)
    raise ValueError(f"file_transfer {text!r} is not 'local > remote' or 'local < remote'")


class PilotJobDescription(_Description):
    """What one pilot asks of its resource. ``total_cpu_count`` cores (default:
    ``number_of_processes`` x ``threads_per_process``), ``processes_per_host`` x
    ``threads_per_process`` of them per node; the rest maps onto ``JobSpec``:
    ``wall_time_limit`` (walltime), ``queue``, ``project``, ``total_physical_memory``
    (memory), ``environment``, ``candidate_hosts`` (SLURM's node list), ``file_transfer``
    (staged into the pilot's directory), ``working_directory`` (where units run by default),
    ``output``/``error`` (the agent's own log files). ``executable`` and ``arguments`` are
    jobbridge's agent and cannot be set; ``python`` is the cluster's interpreter that runs it."""

    python: str | None = Field(
        None, description="the interpreter on the resource (default: python3; locally, this one)"
    )
    drain_margin: float = Field(
        10.0, ge=0, description="seconds before the walltime when the pilot stops taking units"
    )
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def check_own(self) -> None:
        """Refuse what no backend can honour for a pilot."""
        kind = "PilotJobDescription"
        self.refuse_set(kind, ("executable",), "the pilot's executable is jobbridge's agent")
        self.refuse_set(kind, ("arguments",), "the pilot's arguments are jobbridge's agent's")
        self.refuse_set(kind, ("input",), "the agent reads no standard input")
        self.refuse_set(kind, _SAGA_ONLY, "no jobbridge backend can honour it")

    def attributes_for_agent(self) -> dict[str, str | int | float | bool]:
        """``agent.*`` attributes: settings of the agent itself (``agent.flush``, ...)."""
        return {k[6:]: v for k, v in self.attributes.items() if k.startswith("agent.")}

    @property
    def cores(self) -> int:
        return self.total_cpu_count or self.number_of_processes * self.threads_per_process

    @property
    def cores_per_node(self) -> int:
        if self.processes_per_host is None:
            return self.cores
        return min(self.cores, self.processes_per_host * self.threads_per_process)

    @property
    def nodes(self) -> int:
        return math.ceil(self.cores / self.cores_per_node)


class WorkUnitDescription(_Description):
    """What one work unit runs: ``executable`` with ``arguments``, ``environment`` added to
    the pilot's, in ``working_directory`` (relative: to the pilot's directory), with
    ``input``/``output``/``error`` files (relative to that directory; default: the unit's
    own files in the pilot's ``units/``). ``number_of_processes`` x ``threads_per_process``
    cores (or ``total_cpu_count``, if more); several processes need a ``launcher`` (srun or
    mpirun; SAGA's ``spmd_variation`` "mpi" means mpirun). ``wall_time_limit`` ends the unit
    as TIMEOUT and keeps it from a pilot that would end first. ``file_transfer`` copies
    files into the pilot's directory before the unit is sent, and out after it ends;
    ``retries`` overrides the service's number of reschedules."""

    launcher: Launcher | None = None
    retries: int | None = Field(None, ge=0)

    def check_own(self) -> None:
        kind = "WorkUnitDescription"
        if not self.executable:
            raise PilotDescriptionError(kind, "executable", "a work unit needs an executable")
        self.refuse_set(
            kind,
            (
                "cleanup", "interactive", "contact", "project", "start_time", "candidate_hosts",
                "cpu_architecture", "total_physical_memory", "operating_system_type",
                "total_cpu_time", "queue", "processes_per_host",
            ),
            "a work unit runs inside a pilot, which decides it",
        )  # fmt: skip
        if self.spmd_variation not in (None, "single", "mpi", "srun", "mpirun"):
            raise PilotDescriptionError(
                kind, "spmd_variation", f"{self.spmd_variation!r} is not single, mpi or srun"
            )
        if self.number_of_processes > 1 and self.chosen_launcher is Launcher.SINGLE:
            raise PilotDescriptionError(
                kind,
                "number_of_processes",
                "several processes need a launcher: launcher='srun' or 'mpirun'",
            )

    @property
    def chosen_launcher(self) -> Launcher:
        if self.launcher is not None:
            return self.launcher
        return {"mpi": Launcher.MPIRUN, "mpirun": Launcher.MPIRUN, "srun": Launcher.SRUN}.get(
            self.spmd_variation or "", Launcher.SINGLE
        )

    @property
    def cores(self) -> int:
        return max(self.number_of_processes * self.threads_per_process, self.total_cpu_count or 0)

    def transfers(self, direction: str) -> list[FileTransfer]:
        found = [parse_file_transfer(item) for item in self.file_transfer]
        return [transfer for way, transfer in found if way == direction]

    def wire(self, unit_id: str) -> dict[str, Any]:
        """What the agent is sent (without the attempt)."""
        assert self.executable is not None
        walltime = self.wall_time_limit
        return {
            "id": unit_id,
            "argv": [self.executable, *self.arguments],
            "env": self.environment,
            "cwd": self.working_directory,
            "stdin": self.input,
            "stdout": self.output,
            "stderr": self.error,
            "cores": self.cores,
            "processes": self.number_of_processes,
            "launcher": self.chosen_launcher.value,
            "walltime": None if walltime is None else walltime.total_seconds(),
        }
