"""What to run and what it needs: ``JobSpec`` and ``Resources``."""

from __future__ import annotations

import posixpath
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

__all__ = [
    "ArraySpec",
    "Dependency",
    "FileTransfer",
    "JobSpec",
    "Launcher",
    "Memory",
    "Resources",
    "Walltime",
    "format_validation_error",
    "parse_memory",
    "parse_walltime",
]

_CLOCK = re.compile(r"^(?:(?P<days>\d+)-)?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})$")
_ISO_DURATION = TypeAdapter(timedelta)


def parse_walltime(value: Any) -> timedelta:
    """Seconds (number or digits), ``HH:MM:SS``, ``D-HH:MM:SS`` or an ISO-8601 duration."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError("walltime must be a duration, not a boolean")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _walltime_seconds(value.strip())
    else:
        raise ValueError(f"walltime must be a duration, got {type(value).__name__}")
    if seconds <= 0:
        raise ValueError("walltime must be longer than zero")
    return timedelta(seconds=seconds)


def _walltime_seconds(text: str) -> float:
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    clock = _CLOCK.match(text)
    if clock:
        minutes, secs = int(clock["m"]), int(clock["s"])
        if minutes >= 60 or secs >= 60:
            raise ValueError(f"walltime {text!r}: minutes and seconds must be below 60")
        days = int(clock["days"] or 0)
        return float(((days * 24 + int(clock["h"])) * 60 + minutes) * 60 + secs)
    if text.upper().startswith("P"):
        try:
            return _ISO_DURATION.validate_python(text.upper()).total_seconds()
        except ValidationError:
            pass
    raise ValueError(
        f"walltime {text!r} is not seconds, HH:MM:SS, D-HH:MM:SS or an ISO-8601 duration"
    )


_BINARY_SUFFIX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP])\s*$", re.IGNORECASE)
_BINARY_POWER = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_memory(value: Any) -> int:
    """Bytes. A bare K/M/G/T suffix is binary, as schedulers read it (``4G`` = 4 GiB)."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size, not a boolean")
    if isinstance(value, str):
        bare = _BINARY_SUFFIX.match(value)
        if bare:
            value = int(float(bare[1]) * 1024 ** _BINARY_POWER[bare[2].upper()])
    try:
        size = int(TypeAdapter(ByteSize).validate_python(value))
    except ValidationError:
        raise ValueError(f"memory {value!r} is not a size such as 512M, 4G or 2GiB") from None
    if size <= 0:
        raise ValueError("memory must be more than zero bytes")
    return size


class ArraySpec:
    """An index set such as ``0-99%10``, ``1,3,5-7`` or ``0-20:5``; ``%N`` caps how many run."""

    __slots__ = ("indices", "max_concurrent")

    def __init__(self, indices: tuple[int, ...], max_concurrent: int | None = None) -> None:
        self.indices = indices
        self.max_concurrent = max_concurrent

    @classmethod
    def parse(cls, text: str) -> ArraySpec:
        body, _, limit = str(text).strip().partition("%")
        indices: list[int] = []
        for part in body.split(","):
            indices.extend(_array_range(part.strip(), text))
        if len(set(indices)) != len(indices):
            raise ValueError(f"array {text!r} names an index twice")
        max_concurrent = None
        if limit:
            if not limit.isdigit() or int(limit) < 1:
                raise ValueError(f"array {text!r}: the part after % must be a count of 1 or more")
            max_concurrent = int(limit)
        return cls(tuple(sorted(indices)), max_concurrent)

    def __str__(self) -> str:
        ranges = _compress(self.indices)
        limit = f"%{self.max_concurrent}" if self.max_concurrent else ""
        return ",".join(ranges) + limit

    def __repr__(self) -> str:
        return f"ArraySpec({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArraySpec) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _to_array,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


def _array_range(part: str, whole: str) -> range:
    match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
    if not match:
        raise ValueError(f"array {whole!r}: {part!r} is not N, N-M or N-M:STEP")
    start = int(match[1])
    stop = int(match[2]) if match[2] is not None else start
    step = int(match[3]) if match[3] is not None else 1
    if stop < start or step < 1:
        raise ValueError(f"array {whole!r}: {part!r} is an empty range")
    return range(start, stop + 1, step)


def _compress(indices: tuple[int, ...]) -> list[str]:
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return [str(a) if a == b else f"{a}-{b}" for a, b in runs]


def _to_array(value: Any) -> ArraySpec:
    if isinstance(value, ArraySpec):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"0-{value - 1}"
    if not isinstance(value, str):
        raise ValueError("array must be a string such as '0-99%10'")
    return ArraySpec.parse(value)


Walltime = Annotated[
    timedelta,
    BeforeValidator(parse_walltime),
    PlainSerializer(lambda d: d.total_seconds(), return_type=float),
]
Memory = Annotated[int, BeforeValidator(parse_memory)]


class Launcher(StrEnum):
    SINGLE = "single"
    SRUN = "srun"
    MPIRUN = "mpirun"


class PullPolicy(StrEnum):
    """When a container runtime fetches the job's image (Kubernetes' words)."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class Dependency(BaseModel):
    """Start only after ``job_id`` ended: ``afterok`` completed, ``afterany`` any ending."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str = Field(min_length=1)
    condition: Literal["afterok", "afterany", "afternotok"] = "afterok"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            condition, sep, job_id = value.partition(":")
            return {"job_id": job_id, "condition": condition} if sep else {"job_id": value}
        return value


class FileTransfer(BaseModel):
    """A file copied into a job's directory before it runs, or out of it after it ends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1)
    target: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            source, sep, target = value.partition("->")
            source, target = source.strip(), target.strip()
            return {"source": source, "target": target if sep else source.rsplit("/", 1)[-1]}
        return value


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: int = Field(1, ge=1)
    processes_per_node: int = Field(1, ge=1)
    cores_per_process: int = Field(1, ge=1)
    gpus_per_process: int = Field(0, ge=0)
    memory: Memory | None = Field(None, description="bytes for the whole job")
    walltime: Walltime | None = None

    @property
    def processes(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def cores(self) -> int:
        return self.processes * self.cores_per_process


_NO_RESOURCES = Resources()
"""What a spec that asks for nothing gets: one instance (it is frozen) rather than one each."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ATTRIBUTE_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_.-]+$")


def _in_sandbox(path: str, what: str) -> None:
    normal = posixpath.normpath(path)
    if posixpath.isabs(path) or normal == ".." or normal.startswith("../"):
        raise ValueError(f"{what} {path!r} must be a relative path inside the job's directory")


def _no_nul(value: str, what: str) -> str:
    if "\0" in value:
        raise ValueError(f"{what} must not contain a NUL character")
    return value


class JobSpec(BaseModel):
    """Everything a backend needs to run one job (or one array of jobs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    executable: str = Field(min_length=1)
    arguments: list[str] = Field(default_factory=list)
    name: str | None = Field(None, max_length=256)
    environment: dict[str, str] = Field(default_factory=dict)
    inherit_environment: bool = True
    directory: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    resources: Resources = _NO_RESOURCES
    queue: str | None = None
    account: str | None = None
    project: str | None = None
    reservation: str | None = None
    array: ArraySpec | None = None
    depends_on: list[Dependency] = Field(default_factory=list)
    prologue: str | None = None
    epilogue: str | None = None
    stage_in: list[FileTransfer] = Field(default_factory=list)
    stage_out: list[FileTransfer] = Field(default_factory=list)
    launcher: Launcher = Launcher.SINGLE
    image: str | None = Field(
        None, min_length=1, description="a container image to run the program in"
    )
    pull_policy: PullPolicy | None = None
    workflow: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="the workflow it is part of",
    )
    workspace: str | None = Field(
        None, description="the workflow's shared directory (absolute, on the resource)"
    )
    cache: bool = Field(False, description="reuse an earlier identical job's outputs")
    inputs: list[str] = Field(
        default_factory=list,
        description="files the job reads, hashed for the cache; relative to the workspace",
    )
    secrets: list[str] = Field(default_factory=list, description="the owner's secrets it gets")
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("executable")
    @classmethod
    def _executable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("executable must not be blank")
        return _no_nul(value, "executable")

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, value: list[str]) -> list[str]:
        return [_no_nul(arg, "an argument") for arg in value]

    @field_validator("name", "directory", "stdin", "stdout", "stderr")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else _no_nul(value, "the value")

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            _no_nul(item, f"environment value of {key}")
        return value

    @field_validator("stage_in")
    @classmethod
    def _stage_in_targets(cls, value: list[FileTransfer]) -> list[FileTransfer]:
        for transfer in value:
            _in_sandbox(transfer.target, "stage_in target")
        return value

    @field_validator("stage_out")
    @classmethod
    def _stage_out_sources(cls, value: list[FileTransfer]) -> list[FileTransfer]:
        for transfer in value:
            _in_sandbox(transfer.source, "stage_out source")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str | None) -> str | None:
        if value is not None and not posixpath.isabs(_no_nul(value, "workspace")):
            raise ValueError(f"workspace {value!r} must be an absolute path")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[str]) -> list[str]:
        return [_no_nul(path, "an input") for path in value]

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"secret {name!r} is not a valid secret name")
        if len(set(value)) != len(value):
            raise ValueError("a secret is named twice")
        return value

    @model_validator(mode="after")
    def _single_job_features(self) -> JobSpec:
        if self.array is not None and (self.cache or self.secrets):
            raise ValueError("cache and secrets are for single jobs, not arrays")
        if self.workspace is not None and self.workflow is None:
            raise ValueError("a workspace belongs to a workflow: name the workflow too")
        return self

    @field_validator("attributes")
    @classmethod
    def _attributes(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for key in value:
            if not _ATTRIBUTE_KEY.match(key):
                raise ValueError(f"attribute {key!r} must look like 'scheduler.option'")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.executable.rsplit("/", 1)[-1]

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed, validated as a new spec would be."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def attributes_for(self, scheduler: str) -> dict[str, str | int | float | bool]:
        prefix = f"{scheduler}."
        return {k[len(prefix) :]: v for k, v in self.attributes.items() if k.startswith(prefix)}


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field and the rule it broke."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "spec"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "\n".join(lines)
