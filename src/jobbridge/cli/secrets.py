"""``jobbridge secrets``: the user's secrets, kept encrypted, handed to the jobs naming them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import click
from rich.table import Table

from jobbridge.cli.app import CliError, Session
from jobbridge.cli.output import print_json
from jobbridge.secrets import SecretKind, Secrets, new_key

__all__ = ["secrets"]


def _store(session: Session) -> tuple[Secrets, str]:
    owner = session.owner
    if owner is None:
        raise CliError("secrets belong to a user, and this process has no user name")
    return session.engine.secrets, owner


@click.group()
def secrets() -> None:
    """Your secrets: given to your jobs that name them (--secret), never shown."""


@secrets.command()
@click.option(
    "--env",
    "envs",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="An environment variable for the job; without =VALUE, taken from yours.",
)
@click.option(
    "--file", "files", multiple=True, metavar="NAME=PATH", help="A file, $JOBBRIDGE_SECRETS/NAME."
)
@click.pass_obj
def add(session: Session, envs: Sequence[str], files: Sequence[str]) -> None:
    """Store secrets (replacing any of the same name)."""
    if not envs and not files:
        raise click.UsageError("give at least one --env or --file")
    wanted = [(SecretKind.ENV, *_env_value(item)) for item in envs]
    wanted += [(SecretKind.FILE, *_file_value(item)) for item in files]
    store, owner = _store(session)
    for kind, name, value in wanted:
        store.add(owner, name, kind, value)
        session.out.print(f"secret {name} ({kind.value}) stored")


def _env_value(item: str) -> tuple[str, bytes]:
    name, sep, value = item.partition("=")
    if not sep:
        if name not in os.environ:
            raise CliError(f"--env {name}: no =VALUE, and no such variable in your environment")
        value = os.environ[name]
    return name, value.encode()


def _file_value(item: str) -> tuple[str, bytes]:
    name, sep, path = item.partition("=")
    if not sep or not path:
        raise CliError(f"--file {item!r} is not NAME=PATH")
    try:
        return name, Path(path).expanduser().read_bytes()
    except OSError as error:
        raise CliError(f"--file {name}: {path}: {error.strerror}") from None


@secrets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_secrets(session: Session, as_json: bool) -> None:
    """Show the names and kinds of your secrets (never their values)."""
    store, owner = _store(session)
    found = store.of(owner)
    if as_json:
        print_json([secret.model_dump(mode="json") for secret in found])
        return
    if not found:
        session.err.print("no secrets")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "KIND", "STORED"):
        table.add_column(column)
    for secret in found:
        table.add_row(secret.name, secret.kind.value, secret.created.strftime("%Y-%m-%d %H:%M"))
    session.out.print(table)


@secrets.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.pass_obj
def remove(session: Session, names: Sequence[str]) -> None:
    """Forget secrets."""
    store, owner = _store(session)
    for name in names:
        store.remove(owner, name)
        session.out.print(f"secret {name} removed")


@secrets.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new key to PATH (readable by you only), for key_file under [secrets]."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(
            f"{path} exists already; a new key would make its secrets unreadable"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(new_key() + "\n")
    click.echo(f"key written to {path}; name it as key_file under [secrets]", err=True)
