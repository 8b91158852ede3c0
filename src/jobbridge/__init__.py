"""jobbridge: run jobs on any compute resource through one job model, kept in a database.

from jobbridge import Engine, JobSpec

with Engine.from_config() as engine:
    job = engine.submit(JobSpec(executable="echo", arguments=["hello"]))
    [job] = engine.wait([job.id])
    print(job.phase, engine.read_output(job.id).decode())
"""

from jobbridge.backends.base import Backend, BackendContext, BackendOptions
from jobbridge.config import BackendConfig, Config, EngineSettings, load_config
from jobbridge.engine import Engine
from jobbridge.errors import (
    BackendError,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    InvalidTransitionError,
    JobbridgeError,
    JobNotFoundError,
    JobStateError,
    LimitExceededError,
    ResourcesNotSupportedError,
    SpecError,
    TransportError,
    UnknownBackendError,
)
from jobbridge.hooks import Hooks
from jobbridge.job import Event, Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.secrets import SecretError, SecretKind
from jobbridge.spec import (
    ArraySpec,
    Dependency,
    FileTransfer,
    JobSpec,
    Launcher,
    PullPolicy,
    Resources,
)
from jobbridge.store import Store
from jobbridge.store.workflows import Workflow

__version__ = "0.1.0"

__all__ = [
    "ArraySpec",
    "Backend",
    "BackendConfig",
    "BackendContext",
    "BackendError",
    "BackendOptions",
    "CommandFailed",
    "CommandTimeout",
    "Config",
    "ConfigError",
    "Dependency",
    "Engine",
    "EngineSettings",
    "Event",
    "FileTransfer",
    "Hooks",
    "InvalidTransitionError",
    "Job",
    "JobNotFoundError",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "JobbridgeError",
    "Launcher",
    "LimitExceededError",
    "Phase",
    "PullPolicy",
    "Resources",
    "ResourcesNotSupportedError",
    "SecretError",
    "SecretKind",
    "SpecError",
    "Store",
    "TransportError",
    "UnknownBackendError",
    "Workflow",
    "load_config",
]
