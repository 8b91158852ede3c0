"""The UWS service's own records, next to the jobs: what a job was created as (definition,
runId, parameters, execution duration) and who may use the service (users, hashed tokens).

It shares the store's database; rows are keyed by job id and never change the ``jobs`` table.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from jobbridge.job import utcnow
from jobbridge.phase import Phase
from jobbridge.store.schema import jobs, uws_jobs, uws_users
from jobbridge.store.store import Store

__all__ = [
    "ANONYMOUS_PREFIX",
    "JobRef",
    "ParameterValue",
    "User",
    "UserExistsError",
    "UserNameError",
    "UwsJobRecord",
    "UwsStore",
    "hash_token",
    "is_anonymous_owner",
]

ANONYMOUS_PREFIX = "anonymous:"
"""Owner of an anonymous client's jobs: this and the client's id. No user name has a ':'."""


def is_anonymous_owner(owner: str | None) -> bool:
    return owner is None or owner.startswith(ANONYMOUS_PREFIX)


class ParameterValue(BaseModel):
    """One UWS parameter as the client gave it; ``by_reference``: the value is a URL."""

    model_config = ConfigDict(frozen=True)

    id: str
    value: str
    by_reference: bool = False
    local_path: str | None = None
    """Where an uploaded or fetched file is kept by the service (never shown to clients)."""
    fetch_job: str | None = None
    """The job that fetches ``value`` (a URL) into ``local_path``."""


class UwsJobRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    definition: str
    owner: str | None
    run_id: str | None
    parameters: tuple[ParameterValue, ...]
    execution_duration: int
    quote: datetime | None
    created: datetime


class JobRef(BaseModel):
    """One line of a job list."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    phase: Phase
    run_id: str | None
    owner: str | None
    created: datetime


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    admin: bool = False
    anonymous: bool = False
    """A client without credentials; ``name`` is its owner name (``ANONYMOUS_PREFIX`` + id)."""


class UserExistsError(ValueError):
    pass


class UserNameError(ValueError):
    """A user name that cannot be used (Basic credentials end a name at its first ':')."""


_UNENDED = sorted(phase.value for phase in Phase if not phase.is_final)
_NOT_ENDED = jobs.c.phase.in_([sa.literal(phase) for phase in _UNENDED])
"""One bound value per phase (rather than a list expanded anew at each execution)."""
_SERVICE_JOBS = jobs.join(uws_jobs, uws_jobs.c.job_id == jobs.c.id)
_COUNT_OWN_ACTIVE = (
    sa.select(sa.func.count())
    .select_from(_SERVICE_JOBS)
    .where(jobs.c.owner == sa.bindparam("owner"), _NOT_ENDED)
)
"""A user's service jobs that have not ended, counted from the index of jobs by owner and
phase alone (the service writes a job's owner and its record's owner alike): as fast with
a long history of ended jobs as without, and whatever other users have running."""
_RECORD_OWNER = sa.func.coalesce(uws_jobs.c.owner, "")
_COUNT_ANONYMOUS_ACTIVE = (
    sa.select(sa.func.count())
    .select_from(_SERVICE_JOBS)
    .where(
        _NOT_ENDED,
        sa.or_(_RECORD_OWNER == "", _RECORD_OWNER.startswith(ANONYMOUS_PREFIX)),
    )
)
"""Every anonymous client's service jobs that have not ended: counted from the jobs that
have not ended, which are few, rather than from every record anonymous clients ever had (the
owner is matched through an expression, which no index answers, so that the database does
not choose the owner's index instead)."""


_INSERT_RECORDS = uws_jobs.insert()
_USER_FOR_TOKEN = sa.select(uws_users.c.name, uws_users.c.admin).where(
    uws_users.c.token_hash == sa.bindparam("token_hash")
)


def _count_active_query(owner: str) -> tuple[sa.Select[int], dict[str, str]]:
    if is_anonymous_owner(owner):
        return _COUNT_ANONYMOUS_ACTIVE, {}
    return _COUNT_OWN_ACTIVE, {"owner": owner}


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 is enough to keep them unreadable."""
    return hashlib.sha256(token.encode()).hexdigest()


class UwsStore:
    """Reads and writes the ``uws_*`` tables of the store's database."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def close(self) -> None:
        """The connections belong to the store, which closes them."""

    def _write(self) -> AbstractContextManager[sa.Connection]:
        return self._store.writing()

    def _read(self) -> AbstractContextManager[sa.Connection]:
        return self._store.reading()

    # -- jobs ----------------------------------------------------------------------------------

    def add_job(self, record: UwsJobRecord) -> None:
        self.add_jobs([record])

    def add_jobs(self, records: Sequence[UwsJobRecord]) -> None:
        with self._write() as conn:
            conn.execute(_INSERT_RECORDS, [_record_row(record) for record in records])

    def add_job_within(self, conn: sa.Connection, record: UwsJobRecord) -> None:
        """Insert ``record`` in a transaction the caller holds: the one that inserts its job,
        so that the two rows exist together or not at all."""
        conn.execute(_INSERT_RECORDS, _record_row(record))

    def get_job(self, job_id: str) -> UwsJobRecord | None:
        with self._read() as conn:
            row = conn.execute(sa.select(uws_jobs).where(uws_jobs.c.job_id == job_id)).first()
        return None if row is None else _record_from_row(row)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "parameters" in fields:
            fields["parameters"] = _parameters_json(fields["parameters"])
        with self._write() as conn:
            conn.execute(uws_jobs.update().where(uws_jobs.c.job_id == job_id).values(**fields))

    def delete_job(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute(uws_jobs.delete().where(uws_jobs.c.job_id == job_id))

    def orphans(self) -> list[str]:
        """Ids of records whose job is gone (destroyed while the service was down)."""
        query = (
            sa.select(uws_jobs.c.job_id)
            .outerjoin(jobs, jobs.c.id == uws_jobs.c.job_id)
            .where(jobs.c.id.is_(None))
        )
        with self._read() as conn:
            return [row.job_id for row in conn.execute(query)]

    def job_list(
        self,
        definition: str,
        *,
        owner: str | None = None,
        every_owner: bool = False,
        phases: Iterable[Phase] | None = None,
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[JobRef]:
        """The jobs of one definition: newest first with ``last``, else oldest first.
        ARCHIVED jobs only when ``phases`` names ARCHIVED."""
        query = (
            sa.select(
                uws_jobs.c.job_id, jobs.c.phase, uws_jobs.c.run_id, uws_jobs.c.owner,
                uws_jobs.c.created,
            )
            .join(jobs, jobs.c.id == uws_jobs.c.job_id)
            .where(uws_jobs.c.definition == definition)
        )  # fmt: skip
        if not every_owner:
            query = query.where(
                uws_jobs.c.owner.is_(None) if owner is None else uws_jobs.c.owner == owner
            )
        wanted = set(phases or ())
        if wanted:
            query = query.where(jobs.c.phase.in_(sorted(p.value for p in wanted)))
        else:
            query = query.where(jobs.c.phase != Phase.ARCHIVED.value)
        if after is not None:
            query = query.where(uws_jobs.c.created > after)
        if last is not None:
            query = query.order_by(uws_jobs.c.created.desc(), uws_jobs.c.job_id.desc()).limit(last)
        else:
            query = query.order_by(uws_jobs.c.created, uws_jobs.c.job_id)
        with self._read() as conn:
            return [
                JobRef(
                    job_id=row.job_id, phase=Phase(row.phase), run_id=row.run_id,
                    owner=row.owner, created=row.created,
                )
                for row in conn.execute(query)
            ]  # fmt: skip

    def _owned_by(self, owner: str) -> sa.ColumnElement[bool]:
        """The records of ``owner``; for an anonymous client, those of every anonymous client
        (limits cannot be escaped by dropping a cookie)."""
        if is_anonymous_owner(owner):
            return sa.or_(uws_jobs.c.owner.is_(None), uws_jobs.c.owner.startswith(ANONYMOUS_PREFIX))
        return uws_jobs.c.owner == owner

    def count_active(self, owner: str, conn: sa.Connection | None = None) -> int:
        """Jobs of ``owner`` (see ``_owned_by``) that have not ended (within ``conn``'s
        transaction if given)."""
        query, values = _count_active_query(owner)
        if conn is not None:  # within the caller's transaction
            return int(conn.execute(query, values).scalar_one())
        with self._read() as reading:
            return int(reading.execute(query, values).scalar_one())

    def kept_files(self, owner: str) -> list[str]:
        """Paths of the files kept for the jobs of ``owner`` (see ``_owned_by``)."""
        query = sa.select(uws_jobs.c.parameters).where(self._owned_by(owner))
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [str(p["local_path"]) for row in rows for p in row.parameters if p.get("local_path")]

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False) -> str:
        """Record a user; returns the token, which is shown this once and kept only hashed."""
        if not name or ":" in name or name != name.strip():
            raise UserNameError(f"user name {name!r}: not empty, no ':', no surrounding blanks")
        token = secrets.token_urlsafe(32)
        row = {"name": name, "token_hash": hash_token(token), "admin": admin, "created": utcnow()}
        with self._write() as conn:
            if conn.execute(sa.select(uws_users.c.name).where(uws_users.c.name == name)).first():
                raise UserExistsError(f"user {name!r} exists already")
            conn.execute(uws_users.insert(), row)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The service remembers a token confirmed here for a minute (``KnownTokens``):
        users and tokens are only ever added."""
        with self._read() as conn:
            row = conn.execute(_USER_FOR_TOKEN, {"token_hash": hash_token(token)}).first()
        return None if row is None else User(name=row.name, admin=row.admin)

    def users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(sa.select(uws_users).order_by(uws_users.c.name))
            return [User(name=row.name, admin=row.admin) for row in rows]


def _parameters_json(parameters: Sequence[ParameterValue]) -> list[dict[str, Any]]:
    return [parameter.model_dump() for parameter in parameters]


def _record_row(record: UwsJobRecord) -> dict[str, Any]:
    row = record.model_dump()
    row["parameters"] = _parameters_json(record.parameters)
    return row


def _record_from_row(row: sa.Row[Any]) -> UwsJobRecord:
    data = row._asdict()
    data["parameters"] = tuple(ParameterValue.model_validate(p) for p in data["parameters"])
    return UwsJobRecord.model_validate(data)
