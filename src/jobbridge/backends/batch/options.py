"""The options every batch scheduler backend takes, and the transport they select: this
machine, or a login node over SSH."""

from __future__ import annotations

from pydantic import Field

from jobbridge.backends.containers import ContainerOptions
from jobbridge.transport.base import Transport
from jobbridge.transport.local import LocalTransport
from jobbridge.transport.ssh import SshTransport

__all__ = ["BatchOptions", "connect"]


class BatchOptions(ContainerOptions):
    min_refresh_interval: float = Field(5.0, ge=0)
    work_dir: str | None = Field(
        None, description="root of the job directories on the cluster (default: jobbridge's)"
    )
    accounting: bool = Field(True, description="ask the accounting database about ended jobs")
    accounting_delay: float = Field(
        15.0, ge=0, description="seconds an ended job may take to reach the accounting"
    )
    command_timeout: float = Field(60.0, gt=0)
    requeue_grace: float = Field(
        300.0,
        ge=0,
        description="seconds a job may show a requeueable state (preempted, node failure)"
        " in the queue before jobbridge takes that state as its end",
    )
    max_ids_per_query: int = Field(
        1000,
        ge=1,
        description="jobs named in one status query; for more, one listing of the user's jobs"
        " where the scheduler has one, else one query per so many",
    )
    submit_arguments: list[str] = Field(
        default_factory=list, description="extra arguments for every submission command"
    )
    host: str | None = Field(
        None, description="reach the scheduler over SSH at this destination (user@login)"
    )
    port: int | None = Field(None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = Field(None, description="pin host keys to this file")
    ssh_config: str | None = Field(None, description="an ssh_config file other than ~/.ssh/config")
    ssh_options: list[str] = Field(default_factory=list, description="more ssh -o options")


def connect(options: BatchOptions, *, control_dir: str | None = None) -> Transport:
    """How the backend reaches its scheduler: here, or over SSH at ``host`` (with its master
    connection in ``control_dir`` if given)."""
    if options.host is None:
        return LocalTransport()
    return SshTransport(
        options.host,
        port=options.port,
        identity_file=options.identity_file,
        known_hosts=options.known_hosts,
        config_file=options.ssh_config,
        options=options.ssh_options,
        connect_timeout=min(30.0, options.command_timeout),
        control_dir=control_dir,
    )
