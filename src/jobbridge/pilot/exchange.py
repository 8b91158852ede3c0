"""The mailbox exchange with the agents: one batch of units and cancels out, the agents' news
in; and what a pilot whose job ended, or whose agent went silent, leaves behind."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from jobbridge.errors import JobbridgeError
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.pilot import agent as agent_module
from jobbridge.pilot.binding import Binding
from jobbridge.pilot.mailbox import batch_name
from jobbridge.pilot.records import (
    PilotRecord,
)

__all__ = ["Exchange"]

log = logging.getLogger(__name__)


class Exchange(Binding):
    def _exchange(self, pilot: PilotRecord, now: float) -> None:
        job = pilot.job
        if job is None or not job.is_submitted or pilot.done:
            return
        mailbox = self._mailbox(pilot)
        if mailbox is None:
            return
        if not self._is_local(pilot) and now - pilot.last_exchange < self.settings.remote_interval:
            return
        pilot.last_exchange = now
        with self._lock:
            message: dict[str, Any] = {}
            if pilot.outgoing:
                message["units"] = pilot.outgoing
            if pilot.cancels:
                message["cancel"] = pilot.cancels
            if pilot.drain:
                message["drain"] = True
            sent_units, sent_cancels = pilot.outgoing, pilot.cancels
            pilot.outgoing, pilot.cancels = [], []
        name = batch = None
        if message and not job.phase.is_final:
            self._sequence += 1
            name = batch_name(self._sequence, self._token)
            batch = json.dumps(message, separators=(",", ":")).encode()
        try:
            files = mailbox.exchange(name, batch, pilot.acks)
        except (JobbridgeError, OSError) as error:
            log.warning("pilot %s: mailbox exchange failed: %s", pilot.id, error)
            with self._lock:
                pilot.outgoing = sent_units + pilot.outgoing
                pilot.cancels = sent_cancels + pilot.cancels
            return
        pilot.acks = []
        if not files:
            return
        with self._lock:
            self._apply(pilot, files)
            pilot.unrecorded.extend(name for name, _ in files)

    def _acknowledge(self, pilots: Iterable[PilotRecord]) -> None:
        """The agents' files whose news is in the store now are removed with the next
        exchange; while a write is pending or failed they stay (read again, they change
        nothing), so that no news is lost if this process dies."""
        with self._lock:
            if self._dirty or self._writing:
                return
            for pilot in pilots:
                pilot.acks.extend(pilot.unrecorded)
                pilot.unrecorded.clear()

    def _apply(self, pilot: PilotRecord, files: Iterable[tuple[str, bytes]]) -> None:
        finished = 0
        for name, content in files:
            try:
                message = json.loads(content)
            except ValueError:
                log.warning("pilot %s: unreadable message %s", pilot.id, name)
                continue
            status = message.get("agent")
            if isinstance(status, dict):
                if pilot.agent is None:
                    log.info("pilot %s: agent up on %s", pilot.id, status.get("hosts"))
                pilot.agent = status
                pilot.heard = time.monotonic()
                self._pace(pilot, status)
            for update in message.get("updates", ()):
                try:
                    finished += self._apply_update(pilot, update)
                except (TypeError, ValueError) as error:
                    log.warning("pilot %s: unreadable update %r: %s", pilot.id, update, error)
        if finished:
            pilot.finished.append((time.monotonic(), finished))

    def _apply_update(self, pilot: PilotRecord, update: list[Any]) -> int:
        unit_id, attempt, word, code, when, said, *extra = update
        unit = self._units.get(str(unit_id))
        if unit is None or unit.pilot_id != pilot.id or unit.attempts != attempt:
            return 0
        if unit.phase.is_final:
            return 0
        if extra and isinstance(extra[0], dict):
            unit.output = extra[0]
        moment = datetime.fromtimestamp(float(when), UTC)
        if word == agent_module.RUNNING:
            if unit.phase is Phase.QUEUED:
                unit.started = moment
                self._set(unit, Phase.EXECUTING, "RUNNING", None)
            return 0
        pilot.outstanding.pop(unit.id, None)
        if word == agent_module.RETURNED:
            self._hand_back(unit, f"pilot {pilot.id} handed it back: {said}")
            return 0
        unit.exit_code = code
        unit.started = unit.started or moment
        if word == agent_module.EXITED and code == 0:
            self._end(unit, Phase.COMPLETED, None, None, moment)
        elif word == agent_module.EXITED:
            self._end(unit, Phase.ERROR, "FAILED", said or f"exit code {code}", moment)
        elif word == agent_module.CANCELLED:
            self._end(unit, Phase.ABORTED, "CANCELLED", said or "cancelled", moment)
        else:  # EXEC_FAILED, TIMEOUT
            self._end(unit, Phase.ERROR, str(word), said or None, moment)
        return 1

    def _watch(self, pilot: PilotRecord, now: float) -> None:
        """A pilot whose job ended hands its units back once its last words are in; a pilot
        whose agent went silent is cancelled."""
        job = pilot.job
        if job is None:
            return
        if job.phase.is_final:
            settled = pilot.ended_at is not None and now - pilot.ended_at >= self.settings.settle
            if settled or pilot.mailbox is None:
                self._pilot_ended(pilot, job)
            return
        if (
            pilot.agent is not None
            and now - pilot.heard > self.settings.agent_timeout
            and job.phase is Phase.EXECUTING
        ):
            log.warning("pilot %s: its agent is silent; cancelling it", pilot.id)
            with contextlib.suppress(JobbridgeError):
                self.engine.cancel(job.id)

    def _pilot_ended(self, pilot: PilotRecord, job: Job) -> None:
        pilot.done = True
        how = f"{job.phase}" + (f" ({job.detail})" if job.detail else "")
        for unit in [u for u in self._units.values() if u.pilot_id == pilot.id]:
            if not unit.phase.is_final:
                self._hand_back(unit, f"pilot {pilot.id} ended {how}")
        pilot.outstanding.clear()
        try:
            self.records.update_pilot(pilot.id, done=True)
        except Exception:
            log.exception("pilot %s: could not record its end", pilot.id)
        if pilot.description.cleanup and job.is_submitted:
            with contextlib.suppress(Exception):
                self.engine.free(job.id)
        self._changed.notify_all()
