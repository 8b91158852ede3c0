"""The ``jobbridge`` command group: global options, the engine built on demand, errors.

Every verb reports a problem with the request as ``error: ...`` on stderr and exit status 2,
a job that did not complete (or an action refused for some job) with status 1, and a wait
that ran out of time with status 124, as timeout(1) does.
"""

from __future__ import annotations

import getpass
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from jobbridge import __version__
from jobbridge.backends.base import Backend, BackendContext
from jobbridge.backends.registry import backend_kinds, create_backend, kind_defaults
from jobbridge.config import BackendConfig, Config, load_config
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError
from jobbridge.job import Job
from jobbridge.spec import format_validation_error

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_FAILED", "EXIT_TIMEOUT", "EXIT_USAGE", "CliError", "Session", "cli"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124

log = logging.getLogger(__name__)

_PIPE_WIDTH = 200  # tables written to a pipe or file keep whole ids and times on one line


class CliError(click.ClickException):
    """Shown as ``error: <line>`` for each line of the message, on stderr; exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.message.splitlines() or [""]:
            click.echo(f"error: {line}", err=True, file=file)


class Session:
    """What the verbs of one invocation share: configuration, engine and consoles."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._engine: Engine | None = None

    @cached_property
    def out(self) -> Console:
        return _console(stderr=False)

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def engine(self) -> Engine:
        """The engine on the configured store and backends, and on the backends named after
        a kind that jobs of earlier invocations were sent to."""
        engine = self.engine_for_jobs
        for name, config in self.config.backends.items():
            if name not in engine.backends:
                self._add_backend(engine, name, config)
        return engine

    @property
    def engine_for_jobs(self) -> Engine:
        """The engine on the configured store and only the backends that recorded jobs were
        sent to: enough for verbs that look at jobs, and lighter (see ``Engine.from_config``)."""
        if self._engine is None:
            engine = Engine.from_config(self.config, recorded_only=True)
            try:
                self._add_recorded_kinds(engine)
            except BaseException:
                engine.close()
                raise
            self._engine = engine
        return self._engine

    def backend(self, name: str | None = None) -> Backend:
        """The backend a new job goes to: a configured one (default: the configured default),
        or, for the name of a kind that is not configured, that kind with its default
        options, as ``local`` is."""
        engine = self.engine
        name = name or engine.default_backend
        if name not in engine.backends:
            defaults = kind_defaults(name)
            if defaults is None:
                raise CliError(_unknown_backend(name, engine.backends))
            self._add_backend(engine, name, defaults)
        return engine.backend(name)

    def _add_recorded_kinds(self, engine: Engine) -> None:
        for name in engine.store.backend_names():
            defaults = None if name in engine.backends else kind_defaults(name)
            if defaults is None:
                continue
            try:
                self._add_backend(engine, name, defaults)
            except Exception:
                log.warning("backend %r of recorded jobs cannot be made", name, exc_info=True)

    def _add_backend(self, engine: Engine, name: str, config: BackendConfig) -> None:
        context = BackendContext(jobs_dir=self.config.jobs_dir)
        engine.add_backend(create_backend(name, config, context))

    @property
    def owner(self) -> str | None:
        try:
            return getpass.getuser()
        except (OSError, KeyError):  # no login name and no passwd entry
            return None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _unknown_backend(name: str, configured: Iterable[str]) -> str:
    known = ", ".join(sorted(configured)) or "none"
    kinds = ", ".join(sorted(backend_kinds())) or "none"
    return (
        f"unknown backend {name!r}; known backends: {known};"
        f" kinds, usable by name without configuration: {kinds}"
    )


def _console(*, stderr: bool) -> Console:
    # made when something is drawn: verbs that print only JSON or ids need no rich
    from rich.console import Console

    # no emoji codes: a job named ":fire:" is shown as named (and rich's table of codes is large)
    console = Console(stderr=stderr, highlight=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, emoji=False, width=_PIPE_WIDTH)
    return console


_VERBS = {
    "submit": ("jobbridge.cli.submit", "submit"),
    "status": ("jobbridge.cli.jobs", "status"),
    "list": ("jobbridge.cli.jobs", "list_jobs"),
    "wait": ("jobbridge.cli.jobs", "wait"),
    "cancel": ("jobbridge.cli.jobs", "cancel"),
    "hold": ("jobbridge.cli.jobs", "hold"),
    "release": ("jobbridge.cli.jobs", "release"),
    "logs": ("jobbridge.cli.logs", "logs"),
    "results": ("jobbridge.cli.files", "results"),
    "peek": ("jobbridge.cli.files", "peek"),
    "free": ("jobbridge.cli.files", "free"),
    "delete": ("jobbridge.cli.jobs", "delete"),
    "backends": ("jobbridge.cli.jobs", "backends"),
    "serve": ("jobbridge.cli.serve", "serve"),
    "user": ("jobbridge.cli.users", "user"),
    "secrets": ("jobbridge.cli.secrets", "secrets"),
    "pilot": ("jobbridge.cli.pilot", "pilot"),
}
"""Verb -> (module, attribute): a verb's module is imported when the verb is wanted."""


class _Group(click.Group):
    """Loads verbs on demand; turns jobbridge's own errors into ``error: ...`` lines and
    exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*_VERBS, *(name for name in super().list_commands(ctx) if name not in _VERBS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        known = super().get_command(ctx, cmd_name)
        if known is not None or cmd_name not in _VERBS:
            return known
        module_name, attribute = _VERBS[cmd_name]
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as error:
            raise CliError(format_validation_error(error)) from None
        except JobbridgeError as error:
            raise CliError(str(error)) from None


class _StderrHandler(logging.Handler):
    """Log records on whatever stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def _log_to_stderr(ctx: click.Context, verbosity: int) -> None:
    """Show jobbridge's warnings (with -v: info, -vv: debug) for this invocation only."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("jobbridge")
    handler = _StderrHandler(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    previous = logger.level
    if verbosity:
        logger.setLevel(level)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    ctx.call_on_close(restore)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (overrides JOBBRIDGE_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="Log more on stderr (-vv: debug).")
@click.version_option(__version__, prog_name="jobbridge")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """Run jobs on any compute resource through one job model, and keep track of them."""
    _log_to_stderr(ctx, verbose)
    session = Session(config_path)
    ctx.obj = session
    ctx.call_on_close(session.close)


def act_on_each(
    session: Session,
    job_ids: Sequence[str],
    action: Callable[[str], Job | None],
    done: str = "done",
) -> None:
    """Do ``action`` to every job, saying how each went (``done`` where the action returns
    nothing); exit 1 if any was refused."""
    failed = False
    for job_id in job_ids:
        try:
            job = action(job_id)
        except JobbridgeError as error:
            click.echo(f"error: {error}", err=True)
            failed = True
            continue
        if job is None:
            session.out.print(f"job {job_id}: {done}", highlight=False)
        else:
            session.out.print(f"job {job.id} ({job.name}): {job.phase}", highlight=False)
    click.get_current_context().exit(EXIT_FAILED if failed else 0)
