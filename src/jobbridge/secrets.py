"""Users' secrets: kept encrypted at rest with the configured Fernet key, handed only to the
jobs of their owner that name them.

A job gets its secrets through a private directory in its sandbox (0700, each file 0600):
a file secret is the file ``$JOBBRIDGE_SECRETS/NAME``; an environment secret is read from
there into the variable ``NAME`` by a small wrapper just before the program starts, so that
no value is ever part of a job script, a plan, a spec, an event or a log. The directory is
removed when the job ends.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from jobbridge.config import SecretsSettings
from jobbridge.errors import JobbridgeError
from jobbridge.spec import JobSpec
from jobbridge.store.secrets import SecretStore
from jobbridge.store.store import Store
from jobbridge.transport.base import Transport

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = [
    "SECRETS_DIR",
    "Secret",
    "SecretError",
    "SecretKind",
    "SecretValues",
    "Secrets",
    "new_key",
    "remove_delivered",
    "wrap_with_secrets",
    "write_secrets",
]

log = logging.getLogger(__name__)

SECRETS_DIR = ".jobbridge-secrets"
"""The private directory in a job's sandbox that holds its secrets while it runs."""
_ENV_SUBDIR = "env"


class SecretError(JobbridgeError, ValueError):
    """A secret that cannot be stored or handed over (no key, unknown name, a bad value)."""


class SecretKind(StrEnum):
    ENV = "env"
    """Given to the job as an environment variable of the secret's name."""
    FILE = "file"
    """Given to the job as the file ``$JOBBRIDGE_SECRETS/NAME``."""


SecretValues = dict[str, tuple[SecretKind, bytes]]
"""A job's decrypted secrets by name: what is handed to it, never stored nor shown."""


class Secret(BaseModel):
    """What may be shown of a secret: never its value."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: SecretKind
    created: datetime


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


class Secrets:
    """Each owner's secrets. The key is read when first needed, so that a configuration
    without one works for everything else."""

    def __init__(self, store: Store, settings: SecretsSettings) -> None:
        self.rows = SecretStore(store)
        self.settings = settings
        self._fernet: Fernet | None = None

    def add(self, owner: str, name: str, kind: SecretKind, value: bytes) -> Secret:
        _check_name(name)
        if kind is SecretKind.ENV:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                raise SecretError(f"secret {name}: an environment value must be text") from None
            if "\0" in text:
                raise SecretError(f"secret {name}: an environment value cannot hold a NUL")
        self.rows.put(owner, name, kind.value, self.fernet().encrypt(value))
        return next(s for s in self.of(owner) if s.name == name)

    def of(self, owner: str) -> list[Secret]:
        return [
            Secret(name=name, kind=SecretKind(kind), created=created)
            for name, kind, _, created in self.rows.rows(owner)
        ]

    def remove(self, owner: str, name: str) -> None:
        if not self.rows.remove(owner, name):
            raise SecretError(f"there is no secret {name!r}")

    def check(self, owner: str | None, names: list[str]) -> None:
        """Refuse a job naming secrets its owner does not have (before it is recorded)."""
        if not names:
            return
        if owner is None:
            raise SecretError("a job without an owner cannot have secrets")
        self.fernet()
        known = {name for name, *_ in self.rows.rows(owner, names)}
        missing = [name for name in names if name not in known]
        if missing:
            raise SecretError(
                f"no secret named {missing[0]!r}; add it with `jobbridge secrets add`"
            )

    def values(self, owner: str | None, names: list[str]) -> SecretValues:
        """The decrypted secrets a job names, for handing them to it."""
        self.check(owner, names)
        assert owner is not None
        from cryptography.fernet import InvalidToken

        fernet = self.fernet()
        found = {}
        for name, kind, token, _ in self.rows.rows(owner, names):
            try:
                found[name] = (SecretKind(kind), fernet.decrypt(token))
            except InvalidToken:
                raise SecretError(
                    f"secret {name!r} cannot be decrypted with the configured key"
                ) from None
        return found

    def fernet(self) -> Fernet:
        # cryptography is loaded only where a secret is used: it is large (7 MiB)
        from cryptography.fernet import Fernet

        if self._fernet is None:
            self._fernet = Fernet(self._key())
        return self._fernet

    def _key(self) -> bytes:
        settings = self.settings
        if settings.key_file is not None:
            path = settings.key_file.expanduser()
            try:
                key = path.read_bytes().strip()
            except OSError as error:
                raise SecretError(f"secrets key file {path}: {error.strerror}") from None
        elif settings.key:
            key = settings.key.strip().encode()
        else:
            raise SecretError(
                "no secrets key is configured: set key_file under [secrets] in the"
                " configuration (`jobbridge secrets keygen FILE` makes a key)"
            )
        from cryptography.fernet import Fernet

        try:
            Fernet(key)
        except ValueError:
            raise SecretError("the configured secrets key is not a Fernet key") from None
        return key


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SecretError(
            f"{name!r} is not a valid secret name (letters, digits and _, not first a digit)"
        ) from None


# -- handing secrets to a job ----------------------------------------------------------------


def write_secrets(transport: Transport, sandbox: str, values: SecretValues) -> str:
    """Write a job's secrets into a private directory of its sandbox; return its path."""
    directory = posixpath.join(sandbox, SECRETS_DIR)
    env_dir = posixpath.join(directory, _ENV_SUBDIR)
    transport.run(
        ["sh", "-c", 'umask 077 && mkdir -p -- "$1" && chmod 700 -- "$2" "$1"', "sh",
         env_dir, directory],
        timeout=120, idempotent=True,
    )  # fmt: skip
    for name, (kind, value) in sorted(values.items()):
        where = env_dir if kind is SecretKind.ENV else directory
        transport.write_bytes(posixpath.join(where, name), value, mode=0o600)
    return directory


def wrap_with_secrets(spec: JobSpec, directory: str, values: SecretValues) -> JobSpec:
    """The spec with its program started by a wrapper that reads the environment secrets
    from their files (names only: no value is in the command line)."""
    lines = [f"JOBBRIDGE_SECRETS={shlex.quote(directory)}", "export JOBBRIDGE_SECRETS"]
    for name, (kind, _) in sorted(values.items()):
        if kind is not SecretKind.ENV:
            continue
        path = shlex.quote(posixpath.join(directory, _ENV_SUBDIR, name))
        lines += [
            f'jobbridge_v=$(PATH="${{PATH:-/usr/bin:/bin}}" cat -- {path} && printf x) || {{'
            f' echo "jobbridge: secret {name} is missing" >&2; exit 127; }}',
            f'{name}="${{jobbridge_v%x}}"',
            f"export {name}",
        ]
    lines += ["unset jobbridge_v", 'exec "$@"']
    script = "\n".join(lines)
    arguments = [script, "jobbridge-secrets", spec.executable, *spec.arguments]
    return spec.model_copy(update={"executable": "/bin/sh", "arguments": ["-c", *arguments]})


def remove_delivered(transport: Transport, sandbox: str) -> None:
    """Take an ended job's secrets out of its sandbox."""
    try:
        transport.remove_tree(posixpath.join(sandbox, SECRETS_DIR))
    except Exception:
        log.warning("could not remove the secrets of an ended job in %s", sandbox, exc_info=True)
