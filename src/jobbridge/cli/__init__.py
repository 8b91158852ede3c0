"""The ``jobbridge`` command line: submit, status, list, wait, cancel, hold, release, logs,
results, peek, free, delete, backends, serve, user.

Each verb lives in a module of this package and is added to the ``cli`` group here.
"""

from __future__ import annotations

from jobbridge.cli.app import cli
from jobbridge.cli.files import free, peek, results
from jobbridge.cli.jobs import backends, cancel, delete, hold, list_jobs, release, status, wait
from jobbridge.cli.logs import logs
from jobbridge.cli.serve import serve
from jobbridge.cli.submit import submit
from jobbridge.cli.users import user

__all__ = ["cli", "main"]

for _verb in (
    submit, status, list_jobs, wait, cancel, hold, release, logs, results, peek, free, delete,
    backends, serve, user,
):  # fmt: skip
    cli.add_command(_verb)


def main() -> None:
    cli.main(prog_name="jobbridge")
