"""Pilot jobs, the P* model with TROY's API: a pilot is an ordinary jobbridge job running the
jobbridge agent, on any backend; work units are bound late to whichever pilot has room.

The ``Coordinator`` (one per engine) does the binding and the bookkeeping; the API objects
are handles on it. The agent (``agent.py``) needs only the cluster's Python 3.8+.
"""

from jobbridge.pilot.api import (
    PILOTJOB_TYPE,
    Callback,
    PilotJob,
    PilotJobService,
    WorkUnit,
    WorkUnitService,
)
from jobbridge.pilot.coordinator import Coordinator, CoordinatorSettings
from jobbridge.pilot.description import (
    PilotDescriptionError,
    PilotJobDescription,
    WorkUnitDescription,
)
from jobbridge.pilot.lease import CoordinatorBusyError

__all__ = [
    "PILOTJOB_TYPE",
    "Callback",
    "Coordinator",
    "CoordinatorBusyError",
    "CoordinatorSettings",
    "PilotDescriptionError",
    "PilotJob",
    "PilotJobDescription",
    "PilotJobService",
    "WorkUnit",
    "WorkUnitDescription",
    "WorkUnitService",
]
