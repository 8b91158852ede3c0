"""What every batch scheduler backend shares, put together from its parts:

- ``core``: the hooks a scheduler fills in, and how its commands are run;
- ``jobfiles``: the files a job leaves (exit-code file, ``.term``, output);
- ``submission``: the job script, the submission and what a failed one may have done;
- ``settling``: the status of many jobs from the queue, the exit-code files and the
  accounting, with the walltime and requeue heuristics;
- ``locating``: finding what a submission with an unknown outcome created.

A scheduler's backend subclasses ``BatchBackend`` and fills in the hooks of ``BatchCore``."""

from __future__ import annotations

from jobbridge.backends.batch.locating import Locating
from jobbridge.backends.batch.settling import Settling
from jobbridge.backends.batch.submission import Submission

__all__ = ["BatchBackend"]


class BatchBackend(Settling, Submission, Locating):
    """A batch scheduler's backend; a subclass fills in the hooks of ``BatchCore``."""
