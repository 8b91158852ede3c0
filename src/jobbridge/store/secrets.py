"""Users' secrets in SQL: only encrypted values are stored (see ``jobbridge.secrets``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from jobbridge.job import utcnow
from jobbridge.store.schema import secrets
from jobbridge.store.store import Store

__all__ = ["SecretRow", "SecretStore"]

SecretRow = tuple[str, str, bytes, datetime]
"""Name, kind, encrypted value, when it was stored."""


class SecretStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, owner: str, name: str, kind: str, value: bytes) -> None:
        """Store a secret, replacing one of the same name."""
        with self.store.writing() as conn:
            conn.execute(secrets.delete().where(_of(owner), secrets.c.name == name))
            conn.execute(
                secrets.insert().values(
                    owner=owner, name=name, kind=kind, value=value, created=utcnow()
                )
            )

    def remove(self, owner: str, name: str) -> bool:
        with self.store.writing() as conn:
            done = conn.execute(secrets.delete().where(_of(owner), secrets.c.name == name))
            return done.rowcount == 1

    def rows(self, owner: str, names: Iterable[str] | None = None) -> list[SecretRow]:
        query = sa.select(secrets).where(_of(owner)).order_by(secrets.c.name)
        if names is not None:
            query = query.where(secrets.c.name.in_(list(names)))
        with self.store.reading() as conn:
            return [(r.name, r.kind, r.value, r.created) for r in conn.execute(query)]


def _of(owner: str) -> sa.ColumnElement[bool]:
    return secrets.c.owner == owner
