"""Prometheus metrics at ``/metrics``, in a registry of the service's own.

- ``jobbridge_jobs{phase,backend}``: jobs in the store, counted when scraped.
- ``jobbridge_status_query_seconds{backend}`` and
  ``jobbridge_status_query_failures_total{backend}``: the batched status queries the engine
  makes, as its status-query hook reports them.
- ``jobbridge_submission_attempts_total{backend}`` and
  ``jobbridge_submission_outcomes_total{backend,outcome}`` (``submitted`` or ``failed``): from
  the engine's hooks around submission and its phase changes to ERROR SUBMIT_FAILED. An
  attempt whose outcome is not known yet, or that is retried later, has no outcome (yet).
- ``jobbridge_uws_waits_in_flight``: UWS ``WAIT`` requests being answered.
- ``jobbridge_push_messages_received_total{event}``: verified messages jobs pushed to the
  service (``started``, ``ended``); ``jobbridge_push_messages_refused_total``: pushes
  refused (a wrong token, an unknown job, a malformed message).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from jobbridge.engine import Engine
from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.store import Store
from jobbridge.store.schema import jobs

__all__ = ["CONTENT_TYPE", "ServiceMetrics", "WaitCounter", "add_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SUBMIT_FAILED = "SUBMIT_FAILED"
_JOB_PATH = re.compile(r"^/jobs/[^/]+/[^/]+/?$")
_STATUS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class JobsByPhase(Collector):
    """Counts the store's jobs by phase and backend at each scrape; every phase of every
    configured backend is shown, 0 included."""

    def __init__(self, store: Store, backends: Sequence[str]) -> None:
        self._store = store
        self._backends = list(backends)

    def collect(self) -> Iterator[Metric]:
        query = sa.select(jobs.c.backend, jobs.c.phase, sa.func.count()).group_by(
            jobs.c.backend, jobs.c.phase
        )
        counts: dict[tuple[str, str], int] = {}
        with self._store.reading() as conn:
            for backend, phase, count in conn.execute(query):
                counts[(str(backend), str(phase))] = int(count)
        family = GaugeMetricFamily(
            "jobbridge_jobs", "Jobs in the store, by phase and backend", labels=["phase", "backend"]
        )
        backends = sorted({*self._backends, *(backend for backend, _ in counts)})
        for backend in backends:
            for phase in Phase:
                family.add_metric([phase.value, backend], counts.get((backend, phase.value), 0))
        yield family


class ServiceMetrics:
    """The service's metrics and what feeds them; ``attach`` starts listening to the engine,
    ``detach`` stops (the engine may outlive the service)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = registry = CollectorRegistry()
        self.status_seconds = Histogram(
            "jobbridge_status_query_seconds", "Time a batched status query took, by backend",
            ["backend"], buckets=_STATUS_BUCKETS, registry=registry,
        )  # fmt: skip
        self.status_failures = Counter(
            "jobbridge_status_query_failures", "Status queries that failed, by backend",
            ["backend"], registry=registry,
        )  # fmt: skip
        self.submission_attempts = Counter(
            "jobbridge_submission_attempts", "Jobs about to be handed to a backend",
            ["backend"], registry=registry,
        )  # fmt: skip
        self.submission_outcomes = Counter(
            "jobbridge_submission_outcomes",
            "Submissions by outcome: submitted (the backend took the job) or failed",
            ["backend", "outcome"], registry=registry,
        )  # fmt: skip
        self.waits_in_flight = Gauge(
            "jobbridge_uws_waits_in_flight", "UWS WAIT requests being answered", registry=registry
        )
        self.push_messages = Counter(
            "jobbridge_push_messages_received",
            "Verified messages jobs pushed to the service, by event (started, ended)",
            ["event"], registry=registry,
        )  # fmt: skip
        self.push_refused = Counter(
            "jobbridge_push_messages_refused",
            "Pushes refused: a wrong token, an unknown job or a malformed message",
            registry=registry,
        )
        registry.register(JobsByPhase(engine.store, list(engine.backends)))

    # -- listening to the engine ---------------------------------------------------------------

    def attach(self) -> None:
        hooks = self.engine.hooks
        hooks.on_before_submit(self._before_submit)
        hooks.on_after_submit(self._after_submit)
        hooks.on_phase_change(self._phase_changed)
        hooks.on_status_query(self._status_queried)

    def detach(self) -> None:
        hooks = self.engine.hooks
        for callbacks, callback in (
            (hooks.before_submit, self._before_submit),
            (hooks.after_submit, self._after_submit),
            (hooks.phase_change, self._phase_changed),
            (hooks.status_query, self._status_queried),
        ):
            if callback in callbacks:
                callbacks.remove(callback)  # type: ignore[arg-type]

    def _before_submit(self, job: Job) -> None:
        self.submission_attempts.labels(job.backend).inc()

    def _after_submit(self, job: Job) -> None:
        self.submission_outcomes.labels(job.backend, "submitted").inc()

    def _phase_changed(self, job: Job, _old: Phase) -> None:
        if job.phase is Phase.ERROR and job.detail == _SUBMIT_FAILED:
            self.submission_outcomes.labels(job.backend, "failed").inc()

    def _status_queried(self, backend: str, seconds: float, failed: bool) -> None:
        self.status_seconds.labels(backend).observe(seconds)
        if failed:
            self.status_failures.labels(backend).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WaitCounter:
    """ASGI middleware: counts the UWS job requests that carry a WAIT while they are served."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self._gauge = metrics.waits_in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_wait(scope):
            await self.app(scope, receive, send)
            return
        self._gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self._gauge.dec()


def _is_wait(scope: Scope) -> bool:
    if scope["method"] != "GET" or not _JOB_PATH.match(scope["path"]):
        return False
    query: bytes = scope.get("query_string", b"")
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key.lower() == b"wait" and value not in (b"", b"0"):
            return True
    return False


def add_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    app.add_middleware(WaitCounter, metrics=metrics)

    @app.get("/metrics", summary="Prometheus metrics", tags=["metrics"], include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)
