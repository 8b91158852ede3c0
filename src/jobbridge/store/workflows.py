"""Workflows (their workspace and cache setting) and the job cache's lookups, in SQL."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.store.schema import jobs, workflows
from jobbridge.store.store import Store

__all__ = ["Workflow", "WorkflowStore"]


class Workflow(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    owner: str | None
    workspace: str | None
    cache: bool = False
    created: datetime


class WorkflowStore:
    """Reads and writes the ``workflows`` table and the jobs' cache columns."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str, owner: str | None) -> Workflow | None:
        query = sa.select(workflows).where(
            workflows.c.owner == (owner or ""), workflows.c.name == name
        )
        with self.store.reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else _workflow(row)

    def add(self, workflow: Workflow) -> Workflow:
        """Record a workflow; if one of its name and owner exists already, that one wins."""
        row = {**workflow.model_dump(), "owner": workflow.owner or ""}
        try:
            with self.store.writing() as conn:
                conn.execute(workflows.insert().values(**row))
        except sa.exc.IntegrityError:
            pass
        found = self.get(workflow.name, workflow.owner)
        assert found is not None
        return found

    def set_cache(self, name: str, owner: str | None, cache: bool) -> None:
        with self.store.writing() as conn:
            conn.execute(
                workflows.update()
                .where(workflows.c.owner == (owner or ""), workflows.c.name == name)
                .values(cache=cache)
            )

    def list(self, owner: str | None) -> list[Workflow]:
        query = sa.select(workflows).where(workflows.c.owner == (owner or ""))
        with self.store.reading() as conn:
            return [_workflow(row) for row in conn.execute(query.order_by(workflows.c.name))]

    # -- the job cache ----------------------------------------------------------------------

    def set_cache_key(self, job_id: str, key: str) -> None:
        with self.store.writing() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(cache_key=key, version=jobs.c.version + 1)
            )

    def cached(self, key: str, owner: str | None, exclude: str) -> Job | None:
        """The newest COMPLETED job of ``owner`` with this key, other than ``exclude``."""
        owned = jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner
        query = (
            sa.select(jobs.c.id)
            .where(
                jobs.c.cache_key == key,
                jobs.c.phase == Phase.COMPLETED.value,
                jobs.c.id != exclude,
                owned,
            )
            .order_by(jobs.c.ended.desc(), jobs.c.id)
            .limit(1)
        )
        with self.store.reading() as conn:
            found = conn.execute(query).scalar()
        return None if found is None else self.store.get(found)


def _workflow(row: sa.Row[object]) -> Workflow:
    return Workflow(
        name=row.name,
        owner=row.owner or None,
        workspace=row.workspace,
        cache=row.cache,
        created=row.created,
    )
