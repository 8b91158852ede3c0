"""``jobbridge results``, ``peek`` and ``free``: the files of a job's directory, wherever the
job ran (this machine, or a cluster reached over SSH)."""

from __future__ import annotations

import os
import sys

import click

from jobbridge.cli.app import Session, act_on_each

__all__ = ["free", "peek", "results"]


@click.command()
@click.argument("job_id", metavar="ID")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace local files that changed remotely.")
@click.option(
    "--all", "every_file", is_flag=True, help="With --overwrite: replace files even if unchanged."
)
@click.pass_obj
def results(
    session: Session, job_id: str, directory: str | None, overwrite: bool, every_file: bool
) -> None:
    """Copy the files of a job's directory into DIRECTORY (default: ./ID).

    Files missing locally are always copied; existing ones only with --overwrite.
    """
    target = directory or os.path.join(os.getcwd(), job_id)
    os.makedirs(target, exist_ok=True)
    copied = session.engine.get_results(
        job_id, target, overwrite=overwrite, changed_only=not every_file
    )
    for path in copied:
        session.out.print(path, highlight=False)
    session.out.print(f"{len(copied)} file(s) copied to {target}", highlight=False)


@click.command()
@click.argument("job_id", metavar="ID")
@click.argument("path")
@click.option("--offset", type=int, default=0, help="Where to start; negative counts from the end.")
@click.option("--size", type=click.IntRange(min=0), help="How many bytes (default: to the end).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file.")
@click.pass_obj
def peek(
    session: Session, job_id: str, path: str, offset: int, size: int | None, output: str | None
) -> None:
    """Print part of PATH (relative to the job's directory), e.g. --offset -2048 for its end."""
    session.engine.peek(job_id, path, output or sys.stdout.buffer, offset, size)
    sys.stdout.flush()


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_obj
def free(session: Session, job_ids: tuple[str, ...]) -> None:
    """Remove ended jobs' directories from the resource; the jobs stay on record."""
    act_on_each(session, job_ids, session.engine.free, "directory removed")
