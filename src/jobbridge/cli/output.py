"""How jobs look on a terminal and in JSON, and how a wait on them ends."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from jobbridge.cli.app import EXIT_FAILED, EXIT_TIMEOUT
from jobbridge.job import Event, Job
from jobbridge.phase import Phase

if TYPE_CHECKING:
    from rich.console import Console, OverflowMethod
    from rich.table import Table
    from rich.text import Text

    from jobbridge.engine import Engine

__all__ = [
    "describe",
    "display_name",
    "events_table",
    "job_json",
    "jobs_tables",
    "phase_text",
    "print_jobs",
    "print_json",
    "print_json_array",
    "report_outcome",
    "short_time",
    "wait_with_progress",
]

PHASE_STYLES: dict[Phase, str] = {
    Phase.PENDING: "white",
    Phase.QUEUED: "cyan",
    Phase.EXECUTING: "blue",
    Phase.COMPLETED: "green",
    Phase.ERROR: "red",
    Phase.ABORTED: "yellow",
    Phase.UNKNOWN: "magenta",
    Phase.HELD: "bright_cyan",
    Phase.SUSPENDED: "bright_magenta",
    Phase.ARCHIVED: "dim",
}


def phase_text(phase: Phase) -> Text:
    # rich is loaded where output is drawn, not by verbs that print only JSON or ids
    from rich.text import Text

    return Text(phase.value, style=PHASE_STYLES[phase])


def short_time(moment: datetime | None) -> str:
    """Local time: the clock alone for today, the date as well otherwise."""
    if moment is None:
        return ""
    local = moment.astimezone()
    now = datetime.now().astimezone()
    if local.date() == now.date():
        return local.strftime("%H:%M:%S")
    if local.year == now.year:
        return local.strftime("%b %d %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def display_name(job: Job) -> str:
    return job.name if job.array_index is None else f"{job.name}[{job.array_index}]"


@dataclass(frozen=True)
class _Column:
    header: str
    cell: Callable[[Job], str | Text]
    gives_way: int = 0  # on a narrow terminal, columns with 1, 2, ... are left out in turn
    shrinks_to: int | None = None  # cut short (NAME, DETAIL) or folded (NATIVE ID) down to this


_JOB_COLUMNS = [
    _Column("ID", lambda job: job.id),
    _Column("NAME", display_name, shrinks_to=10),
    _Column("BACKEND", lambda job: job.backend, gives_way=2),
    _Column("PHASE", lambda job: phase_text(job.phase)),
    _Column("DETAIL", lambda job: job.detail or "", shrinks_to=8),
    _Column("EXIT", lambda job: "" if job.exit_code is None else str(job.exit_code)),
    _Column("CREATED", lambda job: short_time(job.created), gives_way=1),
    _Column("STARTED", lambda job: short_time(job.started), gives_way=3),
    _Column("ENDED", lambda job: short_time(job.ended)),
]
_NATIVE_ID = _Column("NATIVE ID", lambda job: job.native_id or "", gives_way=4, shrinks_to=16)
_GAP = 2  # between columns
_ROWS_PER_TABLE = 100


def print_jobs(console: Console, jobs: Sequence[Job], *, native_id: bool = False) -> None:
    """The jobs as a table (see ``jobs_tables``) on ``console``."""
    for table in jobs_tables(jobs, width=console.width, native_id=native_id):
        console.print(table)


def jobs_tables(jobs: Sequence[Job], *, width: int, native_id: bool = False) -> Iterator[Table]:
    """One row per job; on a narrow terminal the least telling columns are left out, then
    names, details and native ids are cut short. A long listing comes as tables of
    ``_ROWS_PER_TABLE`` rows, drawn one after another with the same columns: rich holds all
    the lines of a table until it is drawn."""
    columns = [*_JOB_COLUMNS, _NATIVE_ID] if native_id else list(_JOB_COLUMNS)
    rows = {column.header: [column.cell(job) for job in jobs] for column in columns}
    full = {
        header: max([len(header)] + [len(cell) for cell in cells]) for header, cells in rows.items()
    }
    least = {c.header: min(full[c.header], c.shrinks_to or full[c.header]) for c in columns}
    shown = list(columns)
    for column in sorted((c for c in columns if c.gives_way), key=lambda c: c.gives_way):
        if sum(least[c.header] for c in shown) + _GAP * (len(shown) - 1) <= width:
            break
        shown.remove(column)
    widths = _fit(shown, full, least, width - _GAP * (len(shown) - 1))
    for start in range(0, max(len(jobs), 1), _ROWS_PER_TABLE):
        table = _table(show_header=start == 0)
        for column in shown:
            cut: OverflowMethod = "fold" if column is _NATIVE_ID else "ellipsis"
            table.add_column(
                column.header,
                no_wrap=column is not _NATIVE_ID,
                overflow=cut,
                justify="right" if column.header == "EXIT" else "left",
                width=widths[column.header],
            )
        for index in range(start, min(start + _ROWS_PER_TABLE, len(jobs))):
            table.add_row(*(rows[column.header][index] for column in shown))
        yield table


def _fit(
    shown: list[_Column], full: dict[str, int], least: dict[str, int], room: int
) -> dict[str, int]:
    """Widths within ``room``: what does not shrink gets all it needs, the rest shares."""
    widths = {column.header: full[column.header] for column in shown}
    shrinking = [column.header for column in shown if column.shrinks_to is not None]
    spare = room - sum(width for header, width in widths.items() if header not in shrinking)
    wanted = sum(full[header] for header in shrinking)
    if wanted <= spare:
        return widths
    for header in shrinking:
        widths[header] = max(least[header], full[header] * spare // wanted)
    for header in sorted(shrinking, key=lambda h: widths[h] - least[h], reverse=True):
        over = sum(widths[h] for h in shrinking) - spare
        if over > 0:
            widths[header] -= min(over, widths[header] - least[header])
    return widths


def _table(*, show_header: bool = True) -> Table:
    from rich.table import Table

    return Table(box=None, header_style="bold", pad_edge=False, show_header=show_header)


def events_table(events: Sequence[Event]) -> Table:
    table = _table()
    table.add_column("TIME", no_wrap=True)
    table.add_column("FROM", no_wrap=True)
    table.add_column("TO", no_wrap=True)
    table.add_column("DETAIL", no_wrap=True)
    table.add_column("MESSAGE", overflow="fold")
    for event in events:
        table.add_row(
            event.time.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "" if event.old_phase is None else phase_text(event.old_phase),
            phase_text(event.new_phase),
            event.detail or "",
            event.message or "",
        )
    return table


def job_json(job: Job, events: Sequence[Event] | None = None) -> dict[str, Any]:
    data = job.model_dump(mode="json")
    data["workflow"] = job.spec.workflow
    if events is not None:
        data["events"] = [event.model_dump(mode="json") for event in events]
    return data


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def print_json_array(items: Iterable[object]) -> None:
    """What ``print_json`` prints for a list, written an element at a time, so that a long
    listing is never held in memory as one document."""
    written = False
    for item in items:
        text = json.dumps(item, indent=2).replace("\n", "\n  ")
        click.echo((",\n  " if written else "[\n  ") + text, nl=False)
        written = True
    click.echo("\n]" if written else "[]")


def describe(job: Job) -> str:
    """``job abc123 (sh) ended ERROR with exit code 3 (TIMEOUT): message``"""
    verb = "ended" if job.phase.is_final else "is"
    words = f"job {job.id} ({display_name(job)}) {verb} {job.phase.value}"
    if job.exit_code is not None:
        words += f" with exit code {job.exit_code}"
    if job.detail:
        words += f" ({job.detail})"
    if job.message:
        words += f": {job.message}"
    return words


def phase_counts(jobs: Sequence[Job]) -> str:
    counts = Counter(job.phase for job in jobs)
    return "  ".join(
        f"[{PHASE_STYLES[phase]}]{phase.value} {counts[phase]}[/]"
        for phase in Phase
        if counts[phase]
    )


def wait_with_progress(
    engine: Engine, job_ids: Sequence[str], timeout: float | None, console: Console | None
) -> list[Job]:
    """``engine.wait``, with a live bar on ``console`` if it is a terminal (None: no bar)."""
    if console is None or not console.is_terminal:
        return engine.wait(job_ids, timeout)
    # only a live bar needs it (and it is large)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("waiting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[phases]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("waiting", total=len(set(job_ids)), phases="")

        def on_progress(jobs: list[Job]) -> None:
            done = sum(not job.phase.is_active for job in jobs)
            progress.update(task, completed=done, phases=phase_counts(jobs))

        return engine.wait(job_ids, timeout, on_progress=on_progress)


def report_outcome(jobs: Sequence[Job], timeout: float | None) -> int:
    """Say on stderr which jobs did not complete and why; return the exit status."""
    active = [job for job in jobs if job.phase.is_active]
    if active:
        still = ", ".join(f"{job.id} ({display_name(job)}) {job.phase.value}" for job in active)
        after = "" if timeout is None else f" after {timeout:g} s"
        click.echo(f"error: timed out{after}; still active: {still}", err=True)
        return EXIT_TIMEOUT
    unfinished = [job for job in jobs if job.phase is not Phase.COMPLETED]
    for job in unfinished:
        click.echo(describe(job), err=True)
    return EXIT_FAILED if unfinished else 0
