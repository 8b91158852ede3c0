"""Job definitions: one YAML file each, one UWS job list each (``{base}/jobs/{name}``).

    name: sum
    description: Adds up the numbers in a file
    parameters:
      numbers: {type: file, required: true, description: one number per line}
      scale: {type: float, default: 1.0}
    command: [python3, -c, "import sys; ...", "${numbers}", "${scale}"]
    backend: local
    resources: {cores_per_process: 1, memory: 1G}
    execution_duration: {default: 600, max: 3600}
    results:
      - {glob: total.txt, name: total, media_type: text/plain}

Each element of ``command`` becomes one argument; ``${name}`` inside it is replaced by the
parameter's value, so a value always reaches the program as (part of) one argument and
never as shell text. A ``file`` parameter is staged into the job's directory as
``inputs/<name>`` and its placeholder becomes that relative path. The job's standard output
and error land in ``stdout.txt`` and ``stderr.txt`` of its directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from string import Template
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobbridge.errors import ConfigError
from jobbridge.spec import FileTransfer, JobSpec, Resources, format_validation_error

__all__ = [
    "Definitions",
    "ExecutionDuration",
    "JobDefinition",
    "ParameterDefinition",
    "ParameterError",
    "ParameterType",
    "ResultDefinition",
    "load_definitions",
]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
_PARAMETER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_RESERVED = frozenset({"phase", "action", "runid", "executionduration", "destruction", "wait"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # cannot travel in XML
INPUTS_DIR = "inputs"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"


class ParameterError(ValueError):
    """A parameter value that the definition does not accept; the message says why."""


class ParameterType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    FILE = "file"


class ParameterDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParameterType = ParameterType.STRING
    description: str = ""
    required: bool = False
    default: str | int | float | bool | None = None
    allowed: list[str | int | float | bool] | None = None

    def parse(self, name: str, text: str) -> str:
        """The value as the job will get it, in canonical text; refuses what does not fit."""
        canonical = self._canonical(name, text)
        if self.allowed is not None:
            choices = [self._canonical(name, str(value)) for value in self.allowed]
            if canonical not in choices:
                raise ParameterError(
                    f"parameter {name}: {text!r} is not one of {', '.join(choices)}"
                )
        return canonical

    def _canonical(self, name: str, text: str) -> str:
        kind = self.type
        try:
            if kind is ParameterType.INT:
                canonical = str(int(text.strip()))
            elif kind is ParameterType.FLOAT:
                canonical = repr(float(text.strip()))
            elif kind is ParameterType.BOOL:
                canonical = _parse_bool(text)
            else:
                canonical = text
        except ValueError:
            raise ParameterError(f"parameter {name}: {text!r} is not a valid {kind}") from None
        if _CONTROL.search(canonical):
            raise ParameterError(f"parameter {name}: control characters are not allowed")
        return canonical

    @property
    def default_text(self) -> str | None:
        if self.default is None:
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def _parse_bool(text: str) -> str:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return "true"
    if lowered in ("false", "0", "no", "off"):
        return "false"
    raise ValueError(text)


class ResultDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    glob: str = Field(min_length=1)
    name: str | None = None
    media_type: str = "application/octet-stream"


class ExecutionDuration(BaseModel):
    """Seconds; 0 means unlimited (then ``max``, if one is set, applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: int = Field(600, ge=0)
    max: int | None = Field(None, ge=1)

    def clamp(self, seconds: int) -> int:
        if self.max is None:
            return seconds
        return self.max if seconds == 0 else min(seconds, self.max)


class JobDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, ParameterDefinition] = Field(default_factory=dict)
    command: list[str] = Field(min_length=1)
    environment: dict[str, str] = Field(default_factory=dict)
    backend: str | None = None
    resources: Resources = Field(default_factory=Resources)
    queue: str | None = None
    account: str | None = None
    attributes: dict[str, str | int | float | bool] = Field(default_factory=dict)
    execution_duration: ExecutionDuration = Field(default_factory=ExecutionDuration)
    results: list[ResultDefinition] = Field(default_factory=list)
    secrets: list[str] = Field(
        default_factory=list, description="the user's secrets that each job gets"
    )

    @model_validator(mode="after")
    def _names(self) -> JobDefinition:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: letters, digits, '_', '.', '-' only")
        for name in self.parameters:
            if not _PARAMETER.match(name) or name.lower() in _RESERVED:
                raise ValueError(f"parameter name {name!r} is not allowed")
        for argument in self.command:
            for placeholder in Template(argument).get_identifiers():
                if placeholder not in self.parameters:
                    raise ValueError(f"command uses ${{{placeholder}}}, which is no parameter")
        return self

    def parameter(self, name: str) -> tuple[str, ParameterDefinition] | None:
        """The parameter called ``name`` (UWS parameter names are case-insensitive)."""
        for known, definition in self.parameters.items():
            if known.lower() == name.lower():
                return known, definition
        return None

    def check_complete(self, values: Mapping[str, str]) -> None:
        missing = [
            name
            for name, parameter in self.parameters.items()
            if parameter.required and name not in values and parameter.default is None
        ]
        if missing:
            raise ParameterError(f"missing required parameter(s): {', '.join(missing)}")

    def job_spec(
        self, values: Mapping[str, str], files: Mapping[str, str], execution_duration: int
    ) -> JobSpec:
        """The spec that runs this definition with ``values`` (by parameter name) and
        ``files`` (file parameters: a local path or a URL, staged into ``inputs/``)."""
        substitutions: dict[str, str] = {}
        stage_in = []
        for name, parameter in self.parameters.items():
            if parameter.type is ParameterType.FILE and name in files:
                target = f"{INPUTS_DIR}/{name}"
                stage_in.append(FileTransfer(source=files[name], target=target))
                substitutions[name] = target
            elif name in values:
                substitutions[name] = values[name]
            else:
                substitutions[name] = parameter.default_text or ""
        arguments = [Template(part).safe_substitute(substitutions) for part in self.command]
        resources = self.resources.model_dump()
        resources["walltime"] = execution_duration or None
        return JobSpec(
            name=self.name,
            executable=arguments[0],
            arguments=arguments[1:],
            environment=self.environment,
            resources=resources,
            queue=self.queue,
            account=self.account,
            attributes=self.attributes,
            stage_in=stage_in,
            stdout=STDOUT,
            stderr=STDERR,
            secrets=self.secrets,
        )


class Definitions:
    """Every job definition the service offers, by name."""

    def __init__(self, definitions: Mapping[str, JobDefinition]) -> None:
        self._by_name = dict(definitions)

    def __getitem__(self, name: str) -> JobDefinition:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name))

    def values(self) -> list[JobDefinition]:
        return [self._by_name[name] for name in sorted(self._by_name)]


def load_definitions(directory: Path) -> Definitions:
    """Read every ``*.yaml``/``*.yml`` file of ``directory``; a bad one is an error naming it."""
    found: dict[str, JobDefinition] = {}
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    for path in files:
        definition = load_definition(path)
        if definition.name in found:
            raise ConfigError(f"{path}: a job definition named {definition.name!r} exists already")
        found[definition.name] = definition
    return Definitions(found)


def load_definition(path: Path) -> JobDefinition:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read job definition: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a job definition must be a mapping")
    raw.setdefault("name", path.stem)
    try:
        return JobDefinition.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(
            f"{path}: bad job definition:\n{format_validation_error(error)}"
        ) from None
