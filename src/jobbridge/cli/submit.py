"""``jobbridge submit``: a command line (and optionally a spec file) into one job or an array."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from jobbridge.backends.base import Backend
from jobbridge.cli.app import EXIT_FAILED, CliError, Session
from jobbridge.cli.output import (
    describe,
    display_name,
    job_json,
    phase_text,
    print_jobs,
    print_json_array,
    report_outcome,
    wait_with_progress,
)
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec, Launcher, PullPolicy
from jobbridge.transport.local import LocalTransport

__all__ = ["build_spec", "runs_here", "submit"]

# option name -> JobSpec field, for options that simply replace a field
_TOP_FIELDS = {
    "name": "name",
    "queue": "queue",
    "account": "account",
    "project": "project",
    "reservation": "reservation",
    "array": "array",
    "stdin": "stdin",
    "stdout": "stdout",
    "stderr": "stderr",
    "launcher": "launcher",
    "prologue": "prologue",
    "epilogue": "epilogue",
    "workflow": "workflow",
    "workspace": "workspace",
    "image": "image",
    "pull_policy": "pull_policy",
}
_RESOURCE_FIELDS = {
    "nodes": "nodes",
    "processes_per_node": "processes_per_node",
    "cores": "cores_per_process",
    "gpus": "gpus_per_process",
    "memory": "memory",
    "walltime": "walltime",
}


def _pairs(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx, param)
        pairs[key] = value
    return pairs


def _attribute_value(text: str) -> str | int | float | bool:
    """Numbers and true/false keep their type (``slurm.exclusive=true``); the rest is text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float) else text


def read_spec_document(path: str) -> dict[str, Any]:
    raw = Path(path).read_bytes()
    try:
        document = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise CliError(f"spec file {path} is not valid {kind}: {error}") from None
    if not isinstance(document, dict):
        raise CliError(f"spec file {path} must hold one object (a table of JobSpec fields)")
    return document


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise CliError(f"{key} in the spec file must be a table")
    return dict(value)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise CliError(f"{key} in the spec file must be a list")
    return list(value)


def build_spec(
    document: dict[str, Any],
    command: Sequence[str],
    options: dict[str, Any],
    *,
    here: bool = True,
) -> JobSpec:
    """The spec document with every option given on the command line laid over it: plain
    options replace fields, ``--env`` and ``--attribute`` add keys to the document's tables,
    ``--after`` and ``--after-any`` add dependencies to its list. ``here``: the job runs on
    this machine, so the current directory is its default one and a relative directory is
    taken from here; elsewhere a directory is passed as given, and without one the job runs
    in its own directory on the resource."""
    data = dict(document)
    if command:
        data["executable"], data["arguments"] = command[0], list(command[1:])
    elif "executable" not in data:
        raise CliError("no command to run: give it after --, e.g. jobbridge submit -- echo hello")
    for option, field in _TOP_FIELDS.items():
        if options.get(option) is not None:
            data[field] = options[option]
    resources = _table(data, "resources")
    for option, field in _RESOURCE_FIELDS.items():
        if options.get(option) is not None:
            resources[field] = options[option]
    data["resources"] = resources
    if options.get("environment"):
        data["environment"] = {**_table(data, "environment"), **options["environment"]}
    if options.get("attributes"):
        extra = {key: _attribute_value(value) for key, value in options["attributes"].items()}
        data["attributes"] = {**_table(data, "attributes"), **extra}
    if options.get("no_inherit_env"):
        data["inherit_environment"] = False
    if options.get("cache"):
        data["cache"] = True
    for option in ("inputs", "secrets"):
        if options.get(option):
            data[option] = [*_list(data, option), *options[option]]
    dependencies = [
        {"job_id": job_id, "condition": condition}
        for option, condition in (("after", "afterok"), ("after_any", "afterany"))
        for job_id in options.get(option, ())
    ]
    if dependencies:
        data["depends_on"] = [*_list(data, "depends_on"), *dependencies]
    directory = options.get("directory") or data.get("directory")
    if here:
        directory = directory or str(Path.cwd())
        if isinstance(directory, str):
            directory = os.path.abspath(directory)
    data["directory"] = directory
    if here and isinstance(data.get("workspace"), str):
        data["workspace"] = os.path.abspath(data["workspace"])
    return JobSpec.model_validate(data)


def runs_here(backend: Backend) -> bool:
    """Whether the backend's jobs run on this machine (its transport is the local one)."""
    return isinstance(getattr(backend, "transport", None), LocalTransport)


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--backend", metavar="NAME", help="Backend name (default: the configured default).")
@click.option("--name", metavar="NAME", help="Job name (default: the program's name).")
@click.option("--nodes", type=int, metavar="N")
@click.option("--processes-per-node", type=int, metavar="N")
@click.option("--cores", type=int, metavar="N", help="Cores per process.")
@click.option("--gpus", type=int, metavar="N", help="GPUs per process.")
@click.option("--memory", metavar="SIZE", help="Memory for the whole job, e.g. 4G.")
@click.option(
    "--walltime", metavar="DURATION", help="Seconds, HH:MM:SS, D-HH:MM:SS or ISO 8601 (PT2H)."
)
@click.option("--queue", metavar="NAME")
@click.option("--account", metavar="NAME")
@click.option("--project", metavar="NAME")
@click.option("--reservation", metavar="NAME")
@click.option("--array", metavar="SPEC", help="Array indices, e.g. 0-9%2.")
@click.option("--after", multiple=True, metavar="ID", help="Run after job ID completed.")
@click.option("--after-any", multiple=True, metavar="ID", help="Run after job ID ended at all.")
@click.option(
    "--env",
    "environment",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="Set an environment variable (repeatable).",
)
@click.option("--no-inherit-env", is_flag=True, help="Start from an empty environment.")
@click.option(
    "--directory",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Working directory (default: the current one; on a remote resource, the job's own"
    " directory there).",
)
@click.option("--stdin", metavar="PATH", help="Input file (relative to --directory).")
@click.option("--stdout", metavar="PATH", help="Output file (default: kept by jobbridge).")
@click.option("--stderr", metavar="PATH", help="Error file (default: kept by jobbridge).")
@click.option("--launcher", type=click.Choice([launcher.value for launcher in Launcher]))
@click.option("--prologue", metavar="TEXT", help="Shell text run before the program.")
@click.option("--epilogue", metavar="TEXT", help="Shell text run after the program.")
@click.option(
    "--attribute",
    "attributes",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_pairs,
    help="Backend-specific option, e.g. slurm.constraint=haswell (repeatable).",
)
@click.option(
    "--image",
    metavar="IMAGE",
    help="Container image to run the job in (Kubernetes, or a configured container runtime).",
)
@click.option(
    "--pull-policy",
    type=click.Choice([policy.value for policy in PullPolicy]),
    help="When the image is fetched (default: the backend's).",
)
@click.option("--workflow", metavar="NAME", help="The workflow the job is part of.")
@click.option(
    "--workspace",
    metavar="DIR",
    help="The workflow's shared directory ($JOBBRIDGE_WORKSPACE; default: one of its own).",
)
@click.option("--cache", is_flag=True, help="Reuse an earlier identical job's outputs.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="PATH",
    help="A file the job reads, hashed for --cache (relative: in the workspace; repeatable).",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="NAME",
    help="One of your secrets to give the job (repeatable; see jobbridge secrets).",
)
@click.option(
    "--spec",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False),
    help="JobSpec document (JSON, or TOML if it ends in .toml); options override it.",
)
@click.option("--wait", is_flag=True, help="Wait for the job(s) to end; fail unless completed.")
@click.option(
    "--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="Give up waiting (exit 124)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the job(s) as a JSON array.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the job id(s), one per line.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def submit(
    session: Session,
    /,
    backend: str | None,
    spec_file: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
    command: tuple[str, ...],
    **options: Any,
) -> None:
    """Run COMMAND (everything after --, passed as is, no shell) as a job.

    \b
      jobbridge submit --cores 4 --walltime 1:00:00 -- python3 fit.py --steps 100
      jobbridge submit --array 0-9%2 --after ID -q -- ./part.sh
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only makes sense with --wait")
    if as_json and quiet:
        raise click.UsageError("--json and --quiet exclude each other")
    chosen = session.backend(backend)
    document = read_spec_document(spec_file) if spec_file else {}
    spec = build_spec(document, command, options, here=runs_here(chosen))
    engine = session.engine
    if spec.array is not None:
        jobs = engine.submit_array(spec, backend=chosen.name, owner=session.owner)
    else:
        # one job: its handover's answer is worth waiting for, to show it
        jobs = [engine.submit(spec, backend=chosen.name, owner=session.owner, background=False)]
    if wait:
        status = _wait(session, jobs, timeout, as_json=as_json, quiet=quiet)
    else:
        status = _report_submitted(session, jobs, as_json=as_json, quiet=quiet)
    click.get_current_context().exit(status)


def _report_submitted(session: Session, jobs: list[Job], *, as_json: bool, quiet: bool) -> int:
    if as_json:
        print_json_array(job_json(job) for job in jobs)
    elif quiet:
        for job in jobs:
            click.echo(job.id)
    else:
        for job in jobs:
            session.out.print(
                f"job {job.id} ({display_name(job)}) submitted to {job.backend}: ",
                phase_text(job.phase),
                sep="",
            )
    failed = [job for job in jobs if job.phase.is_final and job.phase is not Phase.COMPLETED]
    for job in failed:
        click.echo(describe(job), err=True)
    return EXIT_FAILED if failed else 0


def _wait(
    session: Session, jobs: list[Job], timeout: float | None, *, as_json: bool, quiet: bool
) -> int:
    ids = [job.id for job in jobs]
    if quiet:
        for job_id in ids:
            click.echo(job_id)
    elif not as_json:
        for job in jobs:
            session.out.print(f"job {job.id} ({display_name(job)}) submitted to {job.backend}")
    bar = None if quiet or as_json else session.out
    done = wait_with_progress(session.engine, ids, timeout, bar)
    if as_json:
        print_json_array(job_json(job) for job in done)
    elif not quiet:
        print_jobs(session.out, done)
    return report_outcome(done, timeout)
