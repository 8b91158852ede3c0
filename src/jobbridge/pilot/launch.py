"""A pilot as a job: the ``JobSpec`` that runs the agent for a ``PilotJobDescription`` on a
backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobbridge.backends.base import Backend
from jobbridge.errors import JobbridgeError, ResourcesNotSupportedError
from jobbridge.pilot import agent as agent_module
from jobbridge.pilot.description import (
    PilotDescriptionError,
    PilotJobDescription,
    parse_file_transfer,
)
from jobbridge.spec import FileTransfer, JobSpec, Resources
from jobbridge.transport.local import LocalTransport

__all__ = ["AGENT_FILE", "AGENT_SOURCE", "pilot_spec", "walltime_seconds"]

AGENT_FILE = "jobbridge_agent.py"
AGENT_SOURCE = Path(agent_module.__file__)


def pilot_spec(
    pilot_id: str, backend: Backend, description: PilotJobDescription, remote_flush: float
) -> JobSpec:
    """The job that runs a pilot's agent: the agent and the description's files staged in,
        its settings as its one argument; what the backend cannot honour is refused, naming the
    description's field."""
    local = backend.kind == "local"
    nearby = local or isinstance(getattr(backend, "transport", None), LocalTransport)
    config = {
        "pilot": pilot_id,
        "cores": description.cores_per_node,
        "nodes": description.nodes,
        "walltime": walltime_seconds(description),
        "drain_margin": description.drain_margin,
        "directory": description.working_directory,
        "flush": 0.01 if nearby else remote_flush,
        "heartbeat": 2.0,
    }
    config.update(description.attributes_for_agent())
    python = description.python or (sys.executable if local else "python3")
    attributes = {k: v for k, v in description.attributes.items() if not k.startswith("agent.")}
    if description.candidate_hosts:
        if backend.kind != "slurm":
            raise PilotDescriptionError(
                "PilotJobDescription",
                "candidate_hosts",
                f"backend {backend.name!r} ({backend.kind}) cannot choose hosts",
            )
        attributes["slurm.nodelist"] = ",".join(description.candidate_hosts)
    stage_in = [FileTransfer(source=str(AGENT_SOURCE), target=AGENT_FILE)]
    for item in description.file_transfer:
        direction, transfer = parse_file_transfer(item)
        if direction != "in":
            raise PilotDescriptionError(
                "PilotJobDescription", "file_transfer", f"{item!r}: a pilot only copies in"
            )
        stage_in.append(transfer)
    try:
        spec = JobSpec(
            name=f"pilot-{pilot_id}",
            executable=python,
            arguments=["-I", "-S", AGENT_FILE, json.dumps(config, separators=(",", ":"))],
            environment=description.environment,
            stdout=description.output or "agent.out",
            stderr=description.error or "agent.err",
            resources=Resources(
                nodes=description.nodes,
                processes_per_node=1,
                cores_per_process=description.cores_per_node,
                memory=description.total_physical_memory,
                walltime=description.wall_time_limit,
            ),
            queue=description.queue,
            project=description.project,
            stage_in=stage_in,
            attributes=attributes,
        )
    except ValueError as error:
        raise PilotDescriptionError("PilotJobDescription", "attributes", str(error)) from None
    try:
        backend.check_limits(spec)
        backend.check(spec)
    except ResourcesNotSupportedError as error:
        name = _DESCRIPTION_FIELDS.get(error.field, error.field)
        raise PilotDescriptionError(
            "PilotJobDescription", name, f"backend {backend.name!r} cannot honour it: {error}"
        ) from None
    except JobbridgeError as error:
        raise PilotDescriptionError("PilotJobDescription", "total_cpu_count", str(error)) from None
    return spec


_DESCRIPTION_FIELDS = {
    "queue": "queue",
    "account": "project",
    "project": "project",
    "resources.nodes": "processes_per_host",
    "resources.memory": "total_physical_memory",
    "resources.walltime": "wall_time_limit",
    "resources.cores_per_process": "total_cpu_count",
    "attributes.slurm.nodelist": "candidate_hosts",
    "stage_in": "file_transfer",
}
"""JobSpec fields a backend may refuse, by the pilot description field that set them."""


def walltime_seconds(description: PilotJobDescription) -> float | None:
    walltime = description.wall_time_limit
    return None if walltime is None else walltime.total_seconds()
