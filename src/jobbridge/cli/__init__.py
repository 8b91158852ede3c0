"""The ``jobbridge`` command line: submit, status, list, wait, cancel, hold, release, logs,
results, peek, free, delete, backends, serve, user.

Each verb lives in a module of this package; the ``cli`` group loads a verb's module only
when that verb runs (or help lists it), so that one invocation imports only what it needs.
"""

from __future__ import annotations

from jobbridge.cli.app import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli.main(prog_name="jobbridge")
