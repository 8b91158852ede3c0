"""Configuration: a TOML file named by ``JOBBRIDGE_CONFIG``, environment overrides, defaults.

data_dir = "/scratch/me/jobbridge"          # job directories and the SQLite file
database_url = "postgresql+psycopg://..."   # JOBBRIDGE_DATABASE_URL wins over this
default_backend = "local"

[engine]
refresh_interval = 1.0

[backends.local]
kind = "local"
max_jobs_in_flight = 8
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobbridge.errors import ConfigError
from jobbridge.spec import format_validation_error

__all__ = [
    "BackendConfig",
    "Config",
    "EngineSettings",
    "SecretsSettings",
    "ServiceSettings",
    "load_config",
]

CONFIG_ENV = "JOBBRIDGE_CONFIG"
DATABASE_ENV = "JOBBRIDGE_DATABASE_URL"
DATA_DIR_ENV = "JOBBRIDGE_DATA_DIR"


class EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refresh_interval: float = Field(1.0, gt=0, description="seconds between refresh cycles")
    status_failure_threshold: int = Field(
        3, ge=1, description="failed status queries in a row before jobs show UNKNOWN"
    )
    max_backoff: float = Field(60.0, gt=0, description="longest pause after failed queries")
    claim_timeout: float = Field(
        30.0,
        gt=0,
        description="a submission whose process has not shown life for this long is taken"
        " to be dead, and what it did is looked for on the backend",
    )
    max_submit_attempts: int = Field(
        3,
        ge=1,
        description="submissions of one job whose outcome stayed unknown and that the backend"
        " did not know, before the job ends SUBMIT_FAILED",
    )
    retry_delay: float = Field(
        2.0,
        gt=0,
        description="first pause before a submission that failed for a passing"
        " reason is tried again; it doubles up to max_backoff",
    )
    submit_in_background: bool = Field(
        True,
        description="submit() returns once the job is recorded and claimed (durable, found"
        " again after any crash); at most max_concurrent_submissions workers per backend hand"
        " jobs over meanwhile, many at once where the backend allows",
    )
    idle_refresh_interval: float = Field(
        2.0,
        gt=0,
        description="running in the background, the longest pause between two refresh"
        " cycles of a backend that has no active job; work started in the process (or heard"
        " of from another replica on PostgreSQL) wakes it at once",
    )
    lease_duration: float = Field(
        30.0,
        gt=0,
        description="running in the background (a service), a process polls a backend, and"
        " destroys expired jobs, only under a lease in the store, renewed every third of this;"
        " when its process dies, another takes the lease over this long after the last renewal",
    )


class ServiceSettings(BaseModel):
    """The ``[service]`` table: the UWS service (``jobbridge serve``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    base_url: str | None = Field(
        None, description="the URL clients reach the service at; default http://host:port"
    )
    definitions_dir: Path | None = Field(None, description="directory of job definition YAMLs")
    anonymous: bool = Field(False, description="serve requests that carry no credentials")
    max_wait: float = Field(600.0, gt=0, description="longest a WAIT request blocks, seconds")
    default_destruction_days: float = Field(
        7.0, gt=0, description="a new job is destroyed this many days after its creation"
    )
    anonymous_job_urls: bool = Field(
        False,
        description="with anonymous: an anonymous job's URL alone lets a client use it (for"
        " clients that keep no cookies); the job list still shows each client its own jobs",
    )
    cookie_secret: str | None = Field(
        None,
        min_length=16,
        description="signs the cookies that tell anonymous clients apart; default: a random"
        " one kept in the data directory (replicas of one service must share it)",
    )
    max_upload_bytes: int = Field(
        100 * 1024**2, ge=1, description="largest request body, and largest file fetched"
    )
    max_stored_bytes: int = Field(
        1024**3, ge=0, description="bytes of uploaded and fetched files one user may keep"
    )
    max_active_jobs: int = Field(
        100, ge=1, description="jobs one user may have that have not ended (PENDING included)"
    )
    fetch_timeout: float = Field(300.0, gt=0, description="seconds a file URL may take to fetch")
    fetch_max_redirects: int = Field(5, ge=0, description="redirects followed when fetching")
    fetch_allowed_networks: list[str] = Field(
        default_factory=list,
        description="non-public networks (CIDR) file URLs may be fetched from; loopback,"
        " private, link-local and metadata addresses are refused unless listed here",
    )
    fetch_backend: str = Field(
        "local", description="the backend (on this host) that runs the fetches of file URLs"
    )
    push: bool = Field(
        True,
        description="jobs tell the service when they start and end, so that a WAIT wakes at"
        " once; polling finds the jobs whose push does not arrive",
    )
    push_url: str | None = Field(
        None,
        description="where jobs reach the service's push endpoint; default: base_url, else"
        " http://host:port (127.0.0.1 for a wildcard host), followed by /push",
    )

    @model_validator(mode="after")
    def _networks(self) -> ServiceSettings:
        if self.push_url is not None and not self.push_url.startswith(("http://", "https://")):
            raise ValueError(f"push_url: {self.push_url!r} is not an http or https URL")
        for text in self.fetch_allowed_networks:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"fetch_allowed_networks: {text!r} is not a network") from None
        return self


class SecretsSettings(BaseModel):
    """The ``[secrets]`` table: the Fernet key that encrypts users' secrets at rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_file: Path | None = Field(
        None, description="a file holding the key (``jobbridge secrets keygen FILE`` makes one)"
    )
    key: str | None = Field(None, description="the key itself, if no key_file is named")


class BackendConfig(BaseModel):
    """``kind`` picks the backend class; every other key is one of that class's options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    database_url: str
    default_backend: str = "local"
    engine: EngineSettings = Field(default_factory=EngineSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    backends: dict[str, BackendConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_backend_exists(self) -> Config:
        if self.default_backend not in self.backends:
            known = ", ".join(sorted(self.backends))
            raise ValueError(
                f"default_backend {self.default_backend!r} is not among the backends: {known}"
            )
        return self

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    raw = _read_toml(Path(path)) if path else {}
    data_dir = Path(
        environ.get(DATA_DIR_ENV)
        or raw.pop("data_dir", None)
        or platformdirs.user_data_dir("jobbridge")
    ).expanduser()
    raw.pop("data_dir", None)
    database_url = (
        environ.get(DATABASE_ENV)
        or raw.pop("database_url", None)
        or f"sqlite:///{data_dir / 'jobbridge.db'}"
    )
    raw.pop("database_url", None)
    backends = {"local": {"kind": "local"}, **raw.pop("backends", {})}
    try:
        return Config(data_dir=data_dir, database_url=database_url, backends=backends, **raw)
    except ValidationError as error:
        where = f" in {path}" if path else ""
        raise ConfigError(f"bad configuration{where}:\n{format_validation_error(error)}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None
