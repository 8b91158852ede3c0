"""Job scripts from Jinja2 templates kept as package data. Every value that reaches the shell
goes through ``shell`` (POSIX quoting); values that must sit in a scheduler directive go
through ``directive_value``, which refuses what the directive cannot carry."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

from jobbridge.errors import ResourcesNotSupportedError

if TYPE_CHECKING:
    import jinja2

__all__ = ["directive_value", "render", "scheduler_name", "shell", "shell_join", "walltime_parts"]

_SAFE_DIRECTIVE = re.compile(r"^[A-Za-z0-9_.,:@%+=/-]+$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def shell(value: object) -> str:
    return shlex.quote(str(value))


def shell_join(values: Iterable[object]) -> str:
    return " ".join(shell(value) for value in values)


def directive_value(scheduler: str, field: str, value: object) -> str:
    """A value for a ``#SBATCH``-style line; such lines have no quoting we can rely on."""
    text = str(value)
    if not _SAFE_DIRECTIVE.match(text):
        raise ResourcesNotSupportedError(
            scheduler, field, f"{text!r} has characters a {scheduler} directive cannot carry"
        )
    return text


def scheduler_name(name: str, limit: int = 64) -> str:
    """The job's name as the scheduler shows it; jobbridge keeps the real one."""
    return (_NAME_UNSAFE.sub("_", name).strip("_") or "job")[:limit]


@cache
def _environment() -> jinja2.Environment:
    # only a submission renders a script: status queries and listings need no Jinja2
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("jobbridge.backends.batch", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML: the `sh` filter quotes values
    )
    environment.filters["sh"] = shell
    environment.filters["sh_join"] = shell_join
    return environment


def render(template: str, **values: object) -> str:
    return _environment().get_template(template).render(**values)


def walltime_parts(seconds: float) -> tuple[int, int, int, int]:
    """Days, hours, minutes, seconds, rounded up to the whole second."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return days, hours, minutes, secs
