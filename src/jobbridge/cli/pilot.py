"""``jobbridge pilot``: start, list and cancel pilots, and run a file of commands through them.

Pilots are jobs, so they outlive the command that started them; ``pilot run --service ID``
sends units to the pilots of an existing pilot job service.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobbridge.cli.app import EXIT_FAILED, CliError, Session
from jobbridge.cli.output import phase_text, short_time
from jobbridge.errors import JobbridgeError, JobNotFoundError, JobStateError
from jobbridge.phase import Phase
from jobbridge.pilot import (
    Coordinator,
    PilotJob,
    PilotJobDescription,
    PilotJobService,
    WorkUnit,
    WorkUnitDescription,
    WorkUnitService,
)
from jobbridge.store.pilots import PilotStore

__all__ = ["parse_commands", "pilot"]


@click.group()
def pilot() -> None:
    """Pilot jobs: one allocation runs many small tasks (work units)."""


def _description_options(function: Any) -> Any:
    options = [
        click.option("--cores", type=click.IntRange(1), default=1, show_default=True,
                     help="Cores of each pilot."),
        click.option("--per-node", type=click.IntRange(1),
                     help="Cores per node (a pilot of more cores spans nodes)."),
        click.option("--walltime", metavar="DURATION",
                     help="Seconds, HH:MM:SS, D-HH:MM:SS or ISO 8601 (PT2H)."),
        click.option("--memory", metavar="SIZE", help="Memory of each pilot, e.g. 4G."),
        click.option("--queue", help="Queue or partition."),
        click.option("--project", help="Project or account."),
        click.option("--python", help="The interpreter on the resource (default: python3)."),
    ]  # fmt: skip
    for option in reversed(options):
        function = option(function)
    return function


def _description(
    cores: int,
    per_node: int | None,
    walltime: str | None,
    memory: str | None,
    queue: str | None,
    project: str | None,
    python: str | None,
) -> PilotJobDescription:
    return PilotJobDescription.model_validate(
        {
            "total_cpu_count": cores,
            "processes_per_host": per_node,
            "wall_time_limit": walltime,
            "total_physical_memory": memory,
            "queue": queue,
            "project": project,
            "python": python,
        }
    )


@pilot.command("start")
@click.option(
    "--backend",
    "-b",
    "rm",
    default=None,
    help="A configured backend or a URL (slurm://, sge+ssh://user@login).",
)
@click.option(
    "--count", "-n", type=click.IntRange(1), default=1, show_default=True, help="How many pilots."
)
@click.option("--service", "service_id", metavar="ID", help="Add to this pilot job service.")
@click.option("--wait/--no-wait", default=False, help="Wait until the agents run.")
@click.option("--json", "as_json", is_flag=True, help="Print the ids as JSON.")
@_description_options
@click.pass_obj
def start(
    session: Session, /, rm: str | None, count: int, service_id: str | None, wait: bool,
    as_json: bool, **fields: Any,
) -> None:  # fmt: skip
    """Start pilots (they run on after this command ends)."""
    description = _description(**fields)
    with Coordinator(session.engine) as coordinator:
        pjs = PilotJobService(service_id, coordinator=coordinator)
        pilots = [
            pjs.create(rm or session.engine.default_backend, description) for _ in range(count)
        ]
        if wait:
            for started in pilots:
                started.wait_active()
        if as_json:
            click.echo(json.dumps({"service": pjs.id, "pilots": [p.id for p in pilots]}))
            return
        session.out.print(f"pilot job service {pjs.id}")
        for started in pilots:
            session.out.print(
                f"pilot {started.id} (job {started.job_id}): {started.state}"
                f" {started.state_detail or ''}".rstrip()
            )


@pilot.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also pilots that have ended.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_pilots(session: Session, show_all: bool, as_json: bool) -> None:
    """Show pilots and their jobs' phases (asks their backends first)."""
    engine = session.engine
    engine.refresh(hand_over=False)
    rows = PilotStore(engine.store).pilots(done=None if show_all else False)
    shown = []
    for row in rows:
        try:
            job = engine.get(row["job_id"])
        except JobNotFoundError:
            continue
        if job.phase.is_final and not show_all:
            continue
        shown.append((row, job))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": row["id"],
                        "service": row["service_id"],
                        "job": job.id,
                        "backend": row["backend"],
                        "cores": row["nodes"] * row["cores_per_node"],
                        "phase": job.phase.value,
                        "detail": job.detail,
                        "created": row["created"].isoformat(),
                    }
                    for row, job in shown
                ]
            )
        )
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in ("PILOT", "SERVICE", "JOB", "BACKEND", "CORES", "PHASE", "DETAIL", "CREATED"):
        table.add_column(header)
    for row, job in shown:
        table.add_row(
            row["id"], row["service_id"], job.id, row["backend"],
            str(row["nodes"] * row["cores_per_node"]), phase_text(job.phase), job.detail or "",
            short_time(row["created"]),
        )  # fmt: skip
    session.out.print(table)


@pilot.command("cancel")
@click.argument("pilot_ids", nargs=-1, metavar="[PILOT_ID...]")
@click.option("--service", "service_id", metavar="ID", help="Every pilot of this service.")
@click.pass_obj
def cancel(session: Session, pilot_ids: tuple[str, ...], service_id: str | None) -> None:
    """Cancel pilots; their unfinished units go to other pilots when a coordinator runs."""
    records = PilotStore(session.engine.store)
    wanted = list(pilot_ids)
    if service_id is not None:
        if records.pilot_service(service_id) is None:
            raise CliError(f"no pilot job service {service_id!r}")
        records.set_pilot_service_state(service_id, "CANCELED")
        wanted += [row["id"] for row in records.pilots(service_ids=[service_id])]
    if not wanted:
        raise CliError("name pilots, or a service with --service")
    failed = False
    for pilot_id in wanted:
        row = records.pilot(pilot_id)
        if row is None:
            click.echo(f"error: no pilot {pilot_id!r}", err=True)
            failed = True
            continue
        try:
            job = session.engine.cancel(row["job_id"])
        except JobStateError as error:
            if service_id is None:
                click.echo(f"error: pilot {pilot_id}: {error}", err=True)
                failed = True
            continue
        session.out.print(f"pilot {pilot_id} (job {job.id}): {job.phase}")
    click.get_current_context().exit(EXIT_FAILED if failed else 0)


@pilot.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--service",
    "service_id",
    metavar="ID",
    help="Use the pilots of this pilot job service (else start --pilots new ones).",
)
@click.option(
    "--backend",
    "-b",
    "rm",
    default=None,
    help="Where new pilots go: a configured backend or a URL.",
)
@click.option(
    "--pilots", type=click.IntRange(1), default=1, show_default=True, help="How many new pilots."
)
@click.option("--keep", is_flag=True, help="Leave new pilots running afterwards.")
@click.option(
    "--retries",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="How often a unit whose pilot ended while it ran starts again.",
)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 124).")
@_description_options
@click.pass_obj
def run(
    session: Session, /, file: Path, service_id: str | None, rm: str | None, pilots: int,
    keep: bool, retries: int, timeout: float | None, **fields: Any,
) -> None:  # fmt: skip
    """Run FILE's commands, one per line, through pilots, with a progress bar; then list
    the failures. A line is split as a shell would split it, but never run by a shell
    (write `sh -c '...'` for pipes); blank lines and lines starting with # are skipped.
    Exits 0 only if every command completed."""
    commands = parse_commands(file.read_text())
    if not commands:
        raise CliError(f"{file} has no commands")
    with Coordinator(session.engine) as coordinator:
        pjs = PilotJobService(service_id, coordinator=coordinator)
        started: list[PilotJob] = []
        if service_id is None:
            description = _description(**fields)
            backend = rm or session.engine.default_backend
            started = [pjs.create(backend, description) for _ in range(pilots)]
        wus = WorkUnitService(coordinator=coordinator, retries=retries)
        wus.add(pjs)
        try:
            units = wus.submit_many(
                [
                    WorkUnitDescription(executable=argv[0], arguments=argv[1:])
                    for _, argv in commands
                ]
            )
            finished = _follow(session, wus, units, timeout)
        except KeyboardInterrupt:
            wus.cancel()
            raise
        finally:
            if not keep:
                for new in started:
                    with contextlib.suppress(JobbridgeError):
                        new.cancel()
        status = _summary(session, commands, units, finished, timeout)
    click.get_current_context().exit(status)


def parse_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line number, argument list) of each command line."""
    commands = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            argv = shlex.split(stripped)
        except ValueError as error:
            raise CliError(f"line {number}: {error}") from None
        commands.append((number, argv))
    return commands


def _follow(
    session: Session, wus: WorkUnitService, units: Sequence[WorkUnit], timeout: float | None
) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = Progress(
        TextColumn("units"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        console=session.err,
        disable=not session.err.is_terminal,
    )
    with progress:
        task = progress.add_task("units", total=len(units), states="")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            done = wus.wait(0.25 if left is None else max(0.0, min(0.25, left)))
            counts = Counter(unit.state for unit in units)
            ended = sum(n for phase, n in counts.items() if phase.is_final)
            states = "  ".join(f"{phase.value.lower()} {n}" for phase, n in sorted(counts.items()))
            progress.update(task, completed=ended, states=states)
            if done:
                return True
            if left is not None and left <= 0:
                return False


def _summary(
    session: Session,
    commands: Sequence[tuple[int, list[str]]],
    units: Sequence[WorkUnit],
    finished: bool,
    timeout: float | None,
) -> int:
    failed = [
        (number, argv, unit)
        for (number, argv), unit in zip(commands, units, strict=True)
        if unit.state is not Phase.COMPLETED
    ]
    completed = len(units) - len(failed)
    session.out.print(f"{completed} of {len(units)} commands completed")
    if failed:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for header in ("LINE", "COMMAND", "STATE", "DETAIL", "EXIT", "SAID"):
            table.add_column(header, overflow="ellipsis")
        for number, argv, unit in failed:
            said = unit.stderr.decode(errors="replace").strip().splitlines()
            table.add_row(
                str(number), shlex.join(argv), phase_text(unit.state), unit.state_detail or "",
                "" if unit.exit_code is None else str(unit.exit_code),
                said[-1] if said else unit.message or "",
            )  # fmt: skip
        session.out.print(table)
    if not finished:
        click.echo(f"error: timed out after {timeout:g} s", err=True)
        return 124
    return EXIT_FAILED if failed else 0
