"""TROY's API (the P* model) on jobbridge: ``PilotJobService`` makes pilots, which are
ordinary jobbridge jobs running the agent; ``WorkUnitService`` takes work units and binds
them late to whichever pilot of its pilot job services has room.

    with Coordinator(engine) as coordinator:
        pjs = PilotJobService(coordinator=coordinator)
        pjs.create("slurm://", PilotJobDescription(total_cpu_count=2, wall_time_limit="1:00:00"))
        wus = WorkUnitService(coordinator=coordinator)
        wus.add(pjs)
        units = wus.submit([WorkUnitDescription(executable="/bin/date") for _ in range(1000)])
        wus.wait()

Objects are handles: a ``PilotJobService``, ``WorkUnitService``, ``PilotJob`` or
``WorkUnit`` made again from its id (after a restart, in another process) is the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from jobbridge.errors import SpecError
from jobbridge.phase import Phase
from jobbridge.pilot.coordinator import Coordinator
from jobbridge.pilot.description import PilotJobDescription, WorkUnitDescription
from jobbridge.pilot.records import Listener

__all__ = [
    "PILOTJOB_TYPE",
    "Callback",
    "PilotJob",
    "PilotJobService",
    "WorkUnit",
    "WorkUnitService",
]


class PILOTJOB_TYPE:
    """TROY's backend types. jobbridge runs its own agent on every backend: ``JOBBRIDGE``
    (or None) is the one accepted."""

    UNKNOWN = 0
    BIGJOB = 1
    DIANE = 2
    CONDOR = 3
    JOBBRIDGE = 4


class Callback:
    """TROY's callback: ``cb(wu, member, value)`` is called when ``member`` (``state`` or
    ``state_detail``) of a work unit or pilot changes; returning False removes it. A plain
    function with the same arguments does as well. Callbacks run in order, on a thread of
    the coordinator's own, after the change is recorded."""

    def cb(self, wu: Any, member: str, value: object) -> bool:
        return True


class _CallbackLike(Protocol):
    def cb(self, wu: Any, member: str, value: object) -> bool | None: ...


def _listener(subject: object, cb: object) -> Listener:
    method = cb.cb if hasattr(cb, "cb") else cb
    if not callable(method):
        raise SpecError("a callback is a Callback object or a function (wu, member, value)")

    def listener(object_id: str, member: str, value: object) -> object:
        return method(subject, member, value)

    return listener


class PilotJobService:
    """Creates and keeps pilots. With ``id``, reconnects to an existing service."""

    def __init__(self, id: str | None = None, *, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.id = id or coordinator.new_pilot_service()
        if id is not None:
            coordinator.open_pilot_service(id)

    @property
    def state(self) -> str:
        return self.coordinator.open_pilot_service(self.id)

    @property
    def pilot_jobs(self) -> list[PilotJob]:
        return [
            PilotJob(pid, coordinator=self.coordinator)
            for pid in self.coordinator.pilot_ids(self.id)
        ]

    def create(
        self,
        rm: str,
        pilotjob_desc: PilotJobDescription,
        pj_type: int | None = None,
        context: dict[str, Any] | None = None,
    ) -> PilotJob:
        """A pilot on ``rm`` (a configured backend's name or a URL such as ``slurm://``,
        ``sge+ssh://user@login``). ``context``: options for a backend made from the URL
        (``identity_file``, ``known_hosts``, ``port``, ...)."""
        if pj_type not in (None, PILOTJOB_TYPE.JOBBRIDGE):
            raise SpecError(f"pj_type {pj_type!r}: jobbridge runs its own agent (use None)")
        pilot_id = self.coordinator.create_pilot(self.id, rm, pilotjob_desc, context)
        return PilotJob(pilot_id, coordinator=self.coordinator)

    def cancel(self) -> None:
        """Cancel every pilot of the service; the service takes no more."""
        self.coordinator.cancel_pilot_service(self.id)

    def __repr__(self) -> str:
        return f"PilotJobService({self.id!r})"


class PilotJob:
    """One pilot: a jobbridge job running the agent. ``state`` is its job's phase;
    ``state_detail`` says more: STARTING (the job runs, the agent has not spoken yet),
    ACTIVE, DRAINING, or how its job ended."""

    def __init__(self, id: str, *, coordinator: Coordinator) -> None:
        self.id = id
        self.coordinator = coordinator

    @property
    def state(self) -> Phase:
        return Phase(self.coordinator.pilot_view(self.id)["state"])

    @property
    def state_detail(self) -> str | None:
        detail = self.coordinator.pilot_view(self.id)["state_detail"]
        return None if detail is None else str(detail)

    @property
    def job_id(self) -> str:
        return str(self.coordinator.pilot_view(self.id)["job_id"])

    @property
    def description(self) -> PilotJobDescription:
        description = self.coordinator.pilot_view(self.id)["description"]
        assert isinstance(description, PilotJobDescription)
        return description

    @property
    def rm(self) -> str:
        return str(self.coordinator.pilot_view(self.id)["rm"])

    @property
    def agent(self) -> dict[str, Any]:
        """What the agent last said of itself (hosts, cores, pid, ...); empty before."""
        agent = self.coordinator.pilot_view(self.id)["agent"]
        assert isinstance(agent, dict)
        return agent

    def cancel(self) -> None:
        """Cancel the pilot's job; its unfinished units go to other pilots."""
        self.coordinator.cancel_pilot(self.id)

    def reinitialize(self, pilotjob_description: PilotJobDescription) -> None:
        """Start a pilot job with the new description in place of this one, which drains
        (finishes what runs, hands back the rest) and ends. The handle follows the new one."""
        self.id = self.coordinator.reinitialize_pilot(self.id, pilotjob_description)

    def wait_active(self, timeout: float | None = None) -> bool:
        """Block until the agent runs (True) or the pilot has ended or ``timeout`` passed."""
        return self.coordinator.wait_pilot_active(self.id, timeout)

    def set_callback(self, member: str, cb: _CallbackLike | Any) -> None:
        self.coordinator.listen_pilot(self.id, member, _listener(self, cb))

    def unset_callback(self, member: str) -> None:
        self.coordinator.listen_pilot(self.id, member, None)

    def __repr__(self) -> str:
        return f"PilotJob({self.id!r})"


class WorkUnitService:
    """Takes work units and binds them to the pilots of its pilot job services. With
    ``id``, reconnects to an existing service and all its units. ``retries``: how often a
    unit whose pilot ended while it ran is started again elsewhere. ``pool``: a name for a
    service to find this one by."""

    def __init__(
        self,
        id: str | None = None,
        *,
        coordinator: Coordinator,
        retries: int | None = None,
        pool: str | None = None,
    ) -> None:
        self.coordinator = coordinator
        if id is None:
            self.id = coordinator.new_unit_service(retries, pool)
        else:
            self.id = id
            coordinator.open_unit_service(id)

    @property
    def state(self) -> str:
        return self.coordinator.unit_service_state(self.id)

    @property
    def pilotjob_services(self) -> list[PilotJobService]:
        return [
            PilotJobService(pjs, coordinator=self.coordinator)
            for pjs in self.coordinator.linked(self.id)
        ]

    @property
    def work_units(self) -> list[WorkUnit]:
        return [WorkUnit(uid, self.coordinator) for uid in self.coordinator.unit_ids(self.id)]

    def add(self, pjs: PilotJobService | Sequence[PilotJobService]) -> None:
        for service in _many(pjs):
            self.coordinator.link(self.id, service.id)

    def remove(self, pjs: PilotJobService | Sequence[PilotJobService]) -> None:
        """Units no longer go to its pilots (those they run keep running); it is not
        cancelled."""
        for service in _many(pjs):
            self.coordinator.unlink(self.id, service.id)

    def submit(
        self, wud: WorkUnitDescription | Sequence[WorkUnitDescription]
    ) -> WorkUnit | list[WorkUnit]:
        """One unit for one description, a list for a list (recorded in one go)."""
        if isinstance(wud, WorkUnitDescription):
            [unit_id] = self.coordinator.submit(self.id, [wud])
            return WorkUnit(unit_id, self.coordinator)
        return [WorkUnit(uid, self.coordinator) for uid in self.coordinator.submit(self.id, wud)]

    def submit_many(self, descriptions: Sequence[WorkUnitDescription]) -> list[WorkUnit]:
        """``submit`` of a list, typed as a list."""
        return [
            WorkUnit(uid, self.coordinator)
            for uid in self.coordinator.submit(self.id, descriptions)
        ]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every unit has ended (True) or ``timeout`` passed (False)."""
        return self.coordinator.wait_units(self.coordinator.unit_ids(self.id), timeout)

    def cancel(self) -> None:
        """Cancel every unit; the service takes no more."""
        self.coordinator.cancel_unit_service(self.id)

    def __repr__(self) -> str:
        return f"WorkUnitService({self.id!r})"


class WorkUnit:
    """One work unit. ``state`` is a phase: QUEUED (``state_detail`` WAITING for a pilot,
    BOUND to one, or RESCHEDULED after its pilot ended), EXECUTING, COMPLETED, ERROR (with
    ``exit_code``, and ``state_detail`` FAILED, EXEC_FAILED, TIMEOUT, TOO_BIG, NO_PILOT or
    PILOT_LOST) or ABORTED."""

    def __init__(self, id: str, coordinator: Coordinator) -> None:
        self.id = id
        self.coordinator = coordinator

    @property
    def state(self) -> Phase:
        return self.coordinator.unit_view(self.id).phase

    @property
    def state_detail(self) -> str | None:
        return self.coordinator.unit_view(self.id).detail

    @property
    def message(self) -> str | None:
        return self.coordinator.unit_view(self.id).message

    @property
    def exit_code(self) -> int | None:
        return self.coordinator.unit_view(self.id).exit_code

    @property
    def description(self) -> WorkUnitDescription:
        return self.coordinator.unit_view(self.id).description

    @property
    def pilot(self) -> PilotJob | None:
        pilot_id = self.coordinator.unit_view(self.id).pilot_id
        return None if pilot_id is None else PilotJob(pilot_id, coordinator=self.coordinator)

    @property
    def pilot_id(self) -> str | None:
        return self.coordinator.unit_view(self.id).pilot_id

    @property
    def attempts(self) -> int:
        return self.coordinator.unit_view(self.id).attempts

    @property
    def retried(self) -> int:
        return self.coordinator.unit_view(self.id).retried

    @property
    def started(self) -> Any:
        return self.coordinator.unit_view(self.id).started

    @property
    def ended(self) -> Any:
        return self.coordinator.unit_view(self.id).ended

    @property
    def stdout(self) -> bytes:
        return self.coordinator.read_unit_output(self.id, "stdout")

    @property
    def stderr(self) -> bytes:
        return self.coordinator.read_unit_output(self.id, "stderr")

    def cancel(self) -> None:
        self.coordinator.cancel_unit(self.id)

    def wait(self, timeout: float | None = None) -> Phase:
        """Block until the unit has ended or ``timeout`` passed; its state then."""
        self.coordinator.wait_units([self.id], timeout)
        return self.state

    def set_callback(self, member: str, cb: _CallbackLike | Any) -> None:
        self.coordinator.listen_unit(self.id, member, _listener(self, cb))

    def unset_callback(self, member: str) -> None:
        self.coordinator.listen_unit(self.id, member, None)

    def __repr__(self) -> str:
        return f"WorkUnit({self.id!r})"


def _many(pjs: PilotJobService | Sequence[PilotJobService]) -> list[PilotJobService]:
    return [pjs] if isinstance(pjs, PilotJobService) else list(pjs)
