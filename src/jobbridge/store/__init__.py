"""Persistent store of jobs and their events."""

from jobbridge.store.store import Store

__all__ = ["Store"]
