"""Where commands run and files move: this machine, or a remote host."""

from jobbridge.transport.base import CommandResult, Transport
from jobbridge.transport.local import LocalTransport

__all__ = ["CommandResult", "LocalTransport", "Transport"]
