"""Web pages for people, next to the UWS API: see ``pages``."""

from jobbridge.uws.web.pages import PREFIX, add_web

__all__ = ["PREFIX", "add_web"]
