"""The pilot coordinator's records, next to the jobs: pilot job services and their pilots (each
pilot is an ordinary job, named by ``job_id``), work unit services, which pilot job services
each one uses, and every work unit with its state. Unit states are written in batches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.phase import FINAL_PHASES
from jobbridge.store.schema import JSONDocument, UTCDateTime, metadata
from jobbridge.store.store import Store

__all__ = [
    "PilotStore",
    "pilot_services",
    "pilots",
    "unit_service_links",
    "unit_services",
    "work_units",
]

pilot_services = sa.Table(
    "pilot_services",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("created", UTCDateTime, nullable=False),
)

pilots = sa.Table(
    "pilots",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("service_id", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("rm", sa.String(512), nullable=False),
    sa.Column("backend", sa.String(128), nullable=False),
    sa.Column("description", JSONDocument, nullable=False),
    sa.Column("context", JSONDocument),
    sa.Column("nodes", sa.Integer, nullable=False),
    sa.Column("cores_per_node", sa.Integer, nullable=False),
    sa.Column("walltime", sa.Float),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_pilots_service", "service_id"),
    sa.Index("ix_pilots_done", "done"),
)

unit_services = sa.Table(
    "work_unit_services",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("retries", sa.Integer, nullable=False),
    sa.Column("pool", sa.String(128)),
    sa.Column("created", UTCDateTime, nullable=False),
)

unit_service_links = sa.Table(
    "work_unit_service_pilot_services",
    metadata,
    sa.Column("unit_service_id", sa.String(32), primary_key=True),
    sa.Column("pilot_service_id", sa.String(32), primary_key=True),
)

work_units = sa.Table(
    "work_units",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("service_id", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("description", JSONDocument, nullable=False),
    sa.Column("cores", sa.Integer, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("pilot_id", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("retried", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("started", UTCDateTime),
    sa.Column("ended", UTCDateTime),
    sa.Column("cancel_asked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("output", JSONDocument),
    sa.Index("ix_work_units_service_seq", "service_id", "seq"),
    sa.Index("ix_work_units_phase", "phase"),
)

UNIT_STATE_FIELDS = (
    "phase", "detail", "message", "exit_code", "pilot_id", "attempts", "retried", "started",
    "ended", "output",
)  # fmt: skip
"""What a batch of unit changes writes."""

_FINAL = [phase.value for phase in FINAL_PHASES]


class PilotStore:
    """The pilot tables, on the job store's database and connections."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- pilot job services and pilots ---------------------------------------------------

    def add_pilot_service(self, service_id: str, state: str, created: datetime) -> None:
        with self.store.writing() as conn:
            conn.execute(
                pilot_services.insert().values(id=service_id, state=state, created=created)
            )

    def pilot_service(self, service_id: str) -> dict[str, Any] | None:
        return self._one(pilot_services, service_id)

    def set_pilot_service_state(self, service_id: str, state: str) -> None:
        with self.store.writing() as conn:
            conn.execute(
                pilot_services.update().where(pilot_services.c.id == service_id).values(state=state)
            )

    def add_pilot(self, row: Mapping[str, Any]) -> None:
        with self.store.writing() as conn:
            conn.execute(pilots.insert().values(**row))

    def update_pilot(self, pilot_id: str, **fields: Any) -> None:
        with self.store.writing() as conn:
            conn.execute(pilots.update().where(pilots.c.id == pilot_id).values(**fields))

    def pilots(
        self, *, service_ids: Iterable[str] | None = None, done: bool | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(pilots).order_by(pilots.c.created, pilots.c.id)
        if service_ids is not None:
            query = query.where(pilots.c.service_id.in_(list(service_ids)))
        if done is not None:
            query = query.where(pilots.c.done == done)
        with self.store.reading() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def pilot(self, pilot_id: str) -> dict[str, Any] | None:
        return self._one(pilots, pilot_id)

    # -- work unit services ----------------------------------------------------------------

    def add_unit_service(
        self, service_id: str, state: str, retries: int, created: datetime, pool: str | None
    ) -> None:
        with self.store.writing() as conn:
            conn.execute(
                unit_services.insert().values(
                    id=service_id, state=state, retries=retries, created=created, pool=pool
                )
            )

    def unit_service(self, service_id: str) -> dict[str, Any] | None:
        return self._one(unit_services, service_id)

    def unit_service_ids(self) -> list[str]:
        with self.store.reading() as conn:
            return list(conn.execute(sa.select(unit_services.c.id)).scalars())

    def set_unit_service_state(self, service_id: str, state: str) -> None:
        with self.store.writing() as conn:
            conn.execute(
                unit_services.update().where(unit_services.c.id == service_id).values(state=state)
            )

    def link(self, unit_service_id: str, pilot_service_id: str) -> None:
        with self.store.writing() as conn:
            exists = conn.execute(
                sa.select(unit_service_links).where(
                    unit_service_links.c.unit_service_id == unit_service_id,
                    unit_service_links.c.pilot_service_id == pilot_service_id,
                )
            ).first()
            if exists is None:
                conn.execute(
                    unit_service_links.insert().values(
                        unit_service_id=unit_service_id, pilot_service_id=pilot_service_id
                    )
                )

    def unlink(self, unit_service_id: str, pilot_service_id: str) -> None:
        with self.store.writing() as conn:
            conn.execute(
                unit_service_links.delete().where(
                    unit_service_links.c.unit_service_id == unit_service_id,
                    unit_service_links.c.pilot_service_id == pilot_service_id,
                )
            )

    def links(self, unit_service_id: str) -> list[str]:
        query = sa.select(unit_service_links.c.pilot_service_id).where(
            unit_service_links.c.unit_service_id == unit_service_id
        )
        with self.store.reading() as conn:
            return sorted(conn.execute(query).scalars())

    # -- work units --------------------------------------------------------------------------

    def next_seq(self, unit_service_id: str) -> int:
        query = sa.select(sa.func.max(work_units.c.seq)).where(
            work_units.c.service_id == unit_service_id
        )
        with self.store.reading() as conn:
            return int(conn.execute(query).scalar_one() or 0) + 1

    def add_units(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Many units in one transaction."""
        if not rows:
            return
        with self.store.writing() as conn:
            conn.execute(work_units.insert(), list(rows))

    def update_units(self, changes: Sequence[Mapping[str, Any]]) -> None:
        """Many units' states in one transaction: each change has ``id`` and every field of
        ``UNIT_STATE_FIELDS``."""
        if not changes:
            return
        statement = (
            work_units.update()
            .where(work_units.c.id == sa.bindparam("unit_id"))
            .values({field: sa.bindparam(f"new_{field}") for field in UNIT_STATE_FIELDS})
        )
        rows = [
            {"unit_id": change["id"], **{f"new_{f}": change[f] for f in UNIT_STATE_FIELDS}}
            for change in changes
        ]
        with self.store.writing() as conn:
            conn.execute(statement, rows)

    def add_unit_once(self, row: Mapping[str, Any]) -> None:
        """One unit whose id its submitter chose: recorded once, however often it is sent."""
        try:
            with self.store.writing() as conn:
                conn.execute(work_units.insert().values(**row))
        except sa.exc.IntegrityError:
            if self.units_by_id([row["id"]]) == {}:
                raise

    def units_by_id(self, unit_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        query = sa.select(work_units).where(work_units.c.id.in_(list(unit_ids)))
        with self.store.reading() as conn:
            return {row.id: row._asdict() for row in conn.execute(query)}

    def ask_cancel(self, unit_id: str) -> None:
        """Ask the coordinating process to cancel a unit (it looks for such asks)."""
        with self.store.writing() as conn:
            conn.execute(
                work_units.update().where(work_units.c.id == unit_id).values(cancel_asked=True)
            )

    def news(self, service_ids: Sequence[str], submitted: str) -> list[dict[str, Any]]:
        """Units of these services that another process recorded (detail ``submitted``) or
        asked to cancel, and that have not ended."""
        query = sa.select(work_units).where(
            work_units.c.service_id.in_(list(service_ids)),
            work_units.c.phase.not_in(_FINAL),
            sa.or_(work_units.c.detail == submitted, work_units.c.cancel_asked.is_(True)),
        )
        with self.store.reading() as conn:
            return [row._asdict() for row in conn.execute(query.order_by(work_units.c.seq))]

    def ensure_pool(
        self,
        name: str,
        unit_service_id: str,
        pilot_service_id: str,
        retries: int,
        created: datetime,
    ) -> None:
        """The work unit service and the pilot job service of a pilot pool, linked: made by
        whichever process comes first (their ids follow from the pool's name)."""
        if self.unit_service(unit_service_id) is not None:
            return
        try:
            with self.store.writing() as conn:
                conn.execute(
                    pilot_services.insert().values(
                        id=pilot_service_id, state="ACTIVE", created=created
                    )
                )
                conn.execute(
                    unit_services.insert().values(
                        id=unit_service_id, state="ACTIVE", retries=retries, created=created,
                        pool=name,
                    )
                )  # fmt: skip
                conn.execute(
                    unit_service_links.insert().values(
                        unit_service_id=unit_service_id, pilot_service_id=pilot_service_id
                    )
                )
        except sa.exc.IntegrityError:
            if self.unit_service(unit_service_id) is None:
                raise

    def units(
        self, *, service_id: str | None = None, active_only: bool = False
    ) -> list[dict[str, Any]]:
        query = sa.select(work_units).order_by(work_units.c.service_id, work_units.c.seq)
        if service_id is not None:
            query = query.where(work_units.c.service_id == service_id)
        if active_only:
            query = query.where(work_units.c.phase.not_in(_FINAL))
        with self.store.reading() as conn:
            return [row._asdict() for row in conn.execute(query)]

    def _one(self, table: sa.Table, key: str) -> dict[str, Any] | None:
        with self.store.reading() as conn:
            row = conn.execute(sa.select(table).where(table.c.id == key)).first()
        return None if row is None else row._asdict()
