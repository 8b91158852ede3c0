"""The IVOA UWS 1.1 service: job definitions served as job lists on top of the engine."""

from jobbridge.uws.app import create_app

__all__ = ["create_app"]
