"""``jobbridge user add NAME [--admin]`` and ``jobbridge user list``: the service's users.

A token is printed once, when the user is added; the store keeps only its hash."""

from __future__ import annotations

import click

from jobbridge.cli.app import CliError, Session
from jobbridge.store.uws import UserExistsError, UserNameError, UwsStore

__all__ = ["user"]


@click.group()
def user() -> None:
    """Users of the UWS service and their tokens."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="The user sees and acts on every job.")
@click.pass_obj
def add_user(session: Session, name: str, admin: bool) -> None:
    """Add a user and print their token (shown this once)."""
    users = UwsStore(session.engine.store)
    try:
        token = users.add_user(name, admin=admin)
    except (UserExistsError, UserNameError) as error:
        raise CliError(str(error)) from None
    finally:
        users.close()
    click.echo(token)


@user.command("list")
@click.pass_obj
def list_users(session: Session) -> None:
    """The users, admins marked."""
    users = UwsStore(session.engine.store)
    try:
        for known in users.users():
            click.echo(f"{known.name}{' (admin)' if known.admin else ''}")
    finally:
        users.close()
