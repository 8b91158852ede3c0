"""The service's refusals, each with the HTTP status that fits it."""

from __future__ import annotations

__all__ = [
    "Forbidden",
    "LimitReached",
    "NotFound",
    "TooLarge",
    "UnsupportedMediaType",
    "UwsError",
]


class UwsError(Exception):
    status = 400


class NotFound(UwsError):
    status = 404


class Forbidden(UwsError):
    status = 403


class TooLarge(UwsError):
    """A request body or the files a user keeps would exceed a limit."""

    status = 413


class LimitReached(UwsError):
    """A user has as many jobs that have not ended as a limit allows."""

    status = 429


class UnsupportedMediaType(UwsError):
    status = 415
