"""Verbs that look at and act on recorded jobs: status, list, wait, cancel, delete, backends."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from jobbridge.backends.registry import backend_kinds
from jobbridge.cli.app import Session, act_on_each
from jobbridge.cli.output import (
    display_name,
    events_table,
    job_json,
    print_jobs,
    print_json,
    print_json_array,
    report_outcome,
    wait_with_progress,
)
from jobbridge.job import utcnow
from jobbridge.phase import ACTIVE_PHASES, Phase

__all__ = ["backends", "cancel", "delete", "list_jobs", "parse_since", "status", "wait"]

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """An age (``90s``, ``30m``, ``2h``, ``1d``, ``1w``) or an ISO date/datetime (naive = UTC)."""
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        return now - timedelta(seconds=float(age[1]) * _UNIT_SECONDS[age[2].lower()])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age such as 90s, 30m, 2h, 1d nor an ISO date or datetime"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value, utcnow())
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _phases(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Phase]:
    try:
        return [Phase(value.strip().upper()) for value in values]
    except ValueError:
        known = ", ".join(phase.value for phase in Phase)
        bad = next(value for value in values if value.strip().upper() not in Phase.__members__)
        raise click.BadParameter(f"unknown phase {bad!r}; phases: {known}", ctx, param) from None


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--events", is_flag=True, help="Show each job's trail of phase changes.")
@click.pass_obj
def status(session: Session, job_ids: tuple[str, ...], as_json: bool, events: bool) -> None:
    """Show jobs as they are now (asks their backends first)."""
    engine = session.engine_for_jobs
    engine.refresh_jobs(job_ids)
    jobs = engine.store.get_many(job_ids)
    trails = {job.id: engine.store.events(job.id) for job in jobs} if events else {}
    if as_json:
        print_json_array(job_json(job, trails.get(job.id)) for job in jobs)
        return
    print_jobs(session.out, jobs, native_id=True)
    for job in jobs:
        if events:
            session.out.print(f"\n[bold]events of {job.id} ({display_name(job)})[/]")
            session.out.print(events_table(trails[job.id]))
    for job in jobs:
        if job.message:
            session.out.print(f"{job.id}: {job.message}")


@click.command("list")
@click.option(
    "--phase",
    "phases",
    multiple=True,
    metavar="PHASE",
    callback=_phases,
    help="Only this phase (repeatable).",
)
@click.option("--backend", metavar="NAME", help="Only jobs of this backend.")
@click.option("--name", metavar="NAME", help="Only jobs of this name.")
@click.option("--workflow", metavar="NAME", help="Only jobs of this workflow.")
@click.option(
    "--since",
    metavar="WHEN",
    callback=_since,
    help="Created since: 30m, 2h, 1d, 90s or an ISO date.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    metavar="N",
    help="At most N jobs.",
)
@click.option("--all", "show_all", is_flag=True, help="No limit.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--no-refresh", is_flag=True, help="Show the store as it is, without asking.")
@click.pass_obj
def list_jobs(
    session: Session,
    phases: list[Phase],
    backend: str | None,
    name: str | None,
    workflow: str | None,
    since: datetime | None,
    limit: int,
    show_all: bool,
    as_json: bool,
    no_refresh: bool,
) -> None:
    """List jobs, newest first."""
    engine = session.engine_for_jobs
    if not no_refresh:
        engine.refresh(hand_over=False)
    jobs = engine.store.find(
        phases=phases or None,
        backend=backend,
        name=name,
        workflow=workflow,
        since=since,
        limit=None if show_all else limit + 1,
    )
    more = not show_all and len(jobs) > limit
    jobs = jobs if show_all else jobs[:limit]
    if as_json:
        print_json_array(job_json(job) for job in jobs)
        return
    if not jobs:
        session.err.print("no jobs")
        return
    print_jobs(session.out, jobs)
    if more:
        session.err.print(f"(the newest {limit}; --all shows every job)", style="dim")


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up (exit 124)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress and no table.")
@click.pass_obj
def wait(session: Session, job_ids: tuple[str, ...], timeout: float | None, quiet: bool) -> None:
    """Wait until jobs end; exit 0 only if all completed."""
    jobs = wait_with_progress(
        session.engine_for_jobs, job_ids, timeout, None if quiet else session.out
    )
    if not quiet:
        print_jobs(session.out, jobs)
    click.get_current_context().exit(report_outcome(jobs, timeout))


@click.command()
@click.argument("job_ids", nargs=-1, metavar="ID...")
@click.option("--workflow", metavar="NAME", help="Every active job of your workflow NAME.")
@click.pass_obj
def cancel(session: Session, job_ids: tuple[str, ...], workflow: str | None) -> None:
    """Stop jobs; they end ABORTED."""
    if not job_ids and workflow is None:
        raise click.UsageError("name the jobs to cancel, or a --workflow")
    engine = session.engine
    engine.refresh()
    ids = list(job_ids)
    if workflow is not None:
        active = engine.store.find(workflow=workflow, phases=ACTIVE_PHASES, newest_first=False)
        ids += [job.id for job in active if job.owner == session.owner and job.id not in ids]
        if not ids:
            session.err.print(f"workflow {workflow} has no active jobs")
            return
    act_on_each(session, ids, engine.cancel)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_obj
def hold(session: Session, job_ids: tuple[str, ...]) -> None:
    """Keep queued jobs from starting (they show HELD) until released."""
    session.engine.refresh()
    act_on_each(session, job_ids, session.engine.hold)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.pass_obj
def release(session: Session, job_ids: tuple[str, ...]) -> None:
    """Let held jobs start."""
    act_on_each(session, job_ids, session.engine.release)


@click.command()
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--force", is_flag=True, help="Cancel an active job first.")
@click.pass_obj
def delete(session: Session, job_ids: tuple[str, ...], force: bool) -> None:
    """Forget jobs and remove what they left behind."""
    session.engine.refresh()
    act_on_each(
        session, job_ids, lambda job_id: session.engine.delete(job_id, force=force), "deleted"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_obj
def backends(session: Session, as_json: bool) -> None:
    """Show the configured backends and the kinds that can be configured."""
    config = session.config
    kinds = backend_kinds()
    if as_json:
        print_json(
            {
                "default": config.default_backend,
                "backends": [
                    {"name": name, "kind": backend.kind, "default": name == config.default_backend}
                    for name, backend in config.backends.items()
                ],
                "kinds": {
                    kind: f"{cls.__module__}:{cls.__qualname__}" for kind, cls in kinds.items()
                },
            }
        )
        return
    from rich.table import Table  # only this table needs it here

    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    table.add_column("NAME")
    table.add_column("KIND")
    table.add_column("DEFAULT")
    table.add_column("KIND AVAILABLE")
    for name, backend in sorted(config.backends.items()):
        table.add_row(
            name,
            backend.kind,
            "yes" if name == config.default_backend else "",
            "yes" if backend.kind in kinds else "[red]no[/]",
        )
    session.out.print(table)
    listing = ", ".join(
        f"{kind} ({cls.__module__}:{cls.__qualname__})" for kind, cls in sorted(kinds.items())
    )
    session.out.print(f"\nkinds available: {listing or 'none'}")
    session.out.print("(--backend KIND needs no configuration: that kind with its default options)")
