"""Reading PBS Pro's and Torque's job records into states.

State words are ``job_state`` letters, refined where the letter alone does not tell the story
(see ``_story``): ``DEPNHOLD`` (PBS's name for the system hold on a job waiting for its
dependencies: it is queued, not held by anyone), ``TERMINATED`` (deleted, PBS's name again),
``DEPENDENCY_DELETED`` (deleted by the server because a dependency can never be met), and the
``JOB_EXEC_*`` names of the negative exit statuses PBS and Torque use for their own kills.

Exit codes are the script's; PBS's own negative codes are kept as they are (e.g. -29 for a
walltime kill) and a job PBS killed with signal N (shown as 256+N) gets 128+N, as a shell
would report it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.native import UNTOLD, NativeState
from jobbridge.backends.batch.pbs_records import Record, exit_status, shell_exit_code
from jobbridge.backends.batch.records import UnreadableRecord
from jobbridge.job import JobStatus
from jobbridge.phase import Phase

__all__ = ["COMMON_EXIT_WORDS", "COMMON_STATES", "PbsStates"]

COMMON_STATES: dict[str, tuple[Phase, str | None]] = {
    "Q": (Phase.QUEUED, None),
    "W": (Phase.QUEUED, None),  # waiting for the start time it was given
    "T": (Phase.QUEUED, None),  # being moved between queues or servers
    "DEPNHOLD": (Phase.QUEUED, None),
    "H": (Phase.HELD, None),
    "R": (Phase.EXECUTING, None),
    "E": (Phase.EXECUTING, None),  # exiting: PBS is cleaning up after the script ended
    "S": (Phase.SUSPENDED, None),
    "TERMINATED": (Phase.ABORTED, "CANCELLED"),
    "DEPENDENCY_DELETED": (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED"),
}
COMMON_EXIT_WORDS: dict[int, str] = {
    -1: "JOB_EXEC_FAIL1",
    -2: "JOB_EXEC_FAIL2",
    -3: "JOB_EXEC_RETRY",
    -4: "JOB_EXEC_INITABT",
    -5: "JOB_EXEC_INITRST",
    -6: "JOB_EXEC_INITRMG",
    -7: "JOB_EXEC_BADRESRT",
}
"""The negative exit statuses that PBS Pro and Torque both kept from PBS (job.h)."""


class PbsStates(BatchBackend):
    """The PBS family's job records as native states: ``job_state`` letters refined into
    the story the record tells."""

    exit_attribute: ClassVar[str]
    ended_letters: ClassVar[frozenset[str]]
    """States whose exit status tells how the job ended."""
    exit_words: ClassVar[Mapping[int, str]]
    """The scheduler's own negative exit statuses, by name."""

    @abstractmethod
    def job_records(self, output: str) -> Iterable[Record]:
        """Each job of a full qstat answer, or why it could not be read."""

    def parse_status(self, output: str) -> dict[str, NativeState]:
        return dict(self.read_each(self.job_records(output), self._job_state))

    def _job_state(self, record: tuple[str, Mapping[str, Any]]) -> tuple[str, NativeState]:
        job_id, attributes = record
        try:
            return job_id, self.native_state(attributes)
        except ValueError as error:
            raise UnreadableRecord(job_id, str(error)) from error

    @abstractmethod
    def times(self, attributes: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
        """When the job started and when it ended, as its record says."""

    def native_state(self, attributes: Mapping[str, Any]) -> NativeState:
        """One job's state; ``ValueError`` if its record cannot be read."""
        letter = str(attributes.get("job_state") or "").strip()
        if not letter:
            raise ValueError("no job_state")
        started, ended = self.times(attributes)
        raw_exit = exit_status(attributes, self.exit_attribute)
        word = self._story(letter, attributes, raw_exit, started is not None)
        exit_code = raw_exit if word in self.exit_words.values() else shell_exit_code(raw_exit)
        comment = attributes.get("comment")
        return NativeState(
            word=word,
            reason=str(comment) if comment else None,
            exit_code=exit_code,
            started=started,
            ended=ended if letter in self.ended_letters else None,
        )

    def _story(
        self, letter: str, attributes: Mapping[str, Any], exit_status: int | None, ran: bool
    ) -> str:
        if letter == "H" and _waits_for_dependencies(attributes):
            return "DEPNHOLD"
        if letter not in self.ended_letters:
            return letter
        if exit_status is not None and exit_status in self.exit_words:
            return self.exit_words[exit_status]
        if not ran:
            return "DEPENDENCY_DELETED" if self.deleted_for_dependency(attributes) else "TERMINATED"
        if self.was_deleted(attributes):
            return "TERMINATED"
        return letter

    def deleted_for_dependency(self, attributes: Mapping[str, Any]) -> bool:
        return "dependency" in str(attributes.get("comment", "")).lower()

    def was_deleted(self, attributes: Mapping[str, Any]) -> bool:
        return False

    def to_status(self, state: NativeState) -> JobStatus:
        status = super().to_status(state)
        if state.word not in self.ended_letters:
            return status
        if state.exit_code is None:
            return status.model_copy(
                update={
                    "phase": Phase.ERROR,
                    "detail": UNTOLD,
                    "message": f"{self.scheduler} says the job finished but not how, and it"
                    " left no exit code",
                }
            )
        if state.exit_code != 0:
            return status.model_copy(update={"phase": Phase.ERROR})
        return status


def _waits_for_dependencies(attributes: Mapping[str, Any]) -> bool:
    holds = str(attributes.get("Hold_Types", "")).replace("n", "")
    return bool(attributes.get("depend")) and holds == "s"
