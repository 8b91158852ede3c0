"""Jobs in a container image on the local and batch backends: the command line of a container
runtime wrapped around the job's own argv.

A backend whose configuration names a ``container_runtime`` runs a job that has an ``image``
as, for podman::

    podman run --rm --init --pull=missing --env NAME ... -v DIR:DIR ... --workdir DIR
        [--memory BYTES] [--cpus N] [--device nvidia.com/gpu=all] IMAGE PROGRAM ARGS...

and for apptainer (or singularity)::

    apptainer exec --cleanenv [--disable-cache] [--nv] --bind DIR ... --pwd DIR
        IMAGE PROGRAM ARGS...

Every word stays a word of an argv list. The job's environment reaches the container by
name only (podman ``--env NAME``; apptainer's ``APPTAINERENV_NAME`` variables), so values
never show in a command line, and nothing else of the host's environment goes in: the image
brings its own. The job's directory (sandbox, staged files) and its working directory are
bound at the same paths inside. The runtime's exit code is the program's, so the job's is
kept; a runtime that cannot start the program exits 125 to 127 (podman) and says why on
standard error, which is the job's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import Field

from jobbridge.backends.base import BackendOptions
from jobbridge.errors import ResourcesNotSupportedError
from jobbridge.job import Job
from jobbridge.spec import JobSpec, Launcher, PullPolicy

__all__ = [
    "ContainerOptions",
    "ContainerRuntime",
    "Wrapped",
    "check_image",
    "script_values",
    "wrap",
]


class ContainerRuntime(StrEnum):
    PODMAN = "podman"
    APPTAINER = "apptainer"
    SINGULARITY = "singularity"


class ContainerOptions(BackendOptions):
    """Options of a backend that may run jobs in a container image."""

    container_runtime: ContainerRuntime | None = Field(
        None,
        description="run jobs that name an image in this runtime; without one, such jobs"
        " are refused",
    )
    container_command: list[str] = Field(
        default_factory=list,
        description="the runtime's program and its global options, before run/exec"
        ' (e.g. ["podman", "--runtime", "runc"]); default: the runtime\'s name',
    )
    container_arguments: list[str] = Field(
        default_factory=list,
        description="more options of `podman run` / `apptainer exec`, before the image",
    )


_PODMAN_PULL = {
    PullPolicy.ALWAYS: "always",
    PullPolicy.IF_NOT_PRESENT: "missing",
    PullPolicy.NEVER: "never",
}
_BIND_UNSAFE = (":", ",")
"""Characters that split a bind specification (``-v SRC:DST``, ``--bind A,B``)."""


@dataclass(frozen=True)
class Wrapped:
    """The runtime's argv, and the variables its process needs on top of the job's:
    each name maps to the job variable whose value it carries."""

    argv: list[str]
    aliases: dict[str, str] = field(default_factory=dict)


def check_image(backend: str, options: ContainerOptions, spec: JobSpec) -> None:
    """Refuse, naming the backend and the field, a job in an image this backend cannot run."""
    if spec.image is None:
        return
    runtime = options.container_runtime
    if runtime is None:
        raise ResourcesNotSupportedError(
            backend, "image", "no container runtime configured (container_runtime)"
        )
    if spec.directory is not None and any(c in spec.directory for c in _BIND_UNSAFE):
        raise ResourcesNotSupportedError(
            backend, "directory", f"{runtime} cannot bind a directory whose path has ':' or ','"
        )
    if spec.directory is not None and not spec.directory.startswith("/"):
        raise ResourcesNotSupportedError(
            backend, "directory", f"{runtime} binds only an absolute path into the container"
        )
    remote = _apptainer_image(spec.image).startswith(("docker://", "oras://", "library://"))
    if runtime is not ContainerRuntime.PODMAN and spec.pull_policy is PullPolicy.NEVER and remote:
        raise ResourcesNotSupportedError(
            backend, "pull_policy", f"{runtime} always fetches {spec.image!r}: use a local file"
        )


def wrap(
    backend: str,
    options: ContainerOptions,
    spec: JobSpec,
    program: Sequence[str],
    *,
    variables: Iterable[str],
    directories: Iterable[str],
    workdir: str,
) -> Wrapped:
    """``program`` run in the job's image. ``variables`` are the names of the job's
    environment, ``directories`` those to bind (the working directory is bound too)."""
    assert spec.image is not None and options.container_runtime is not None
    runtime = options.container_runtime
    command = list(options.container_command) or [str(runtime)]
    binds = _distinct([*directories, workdir])
    for directory in binds:
        if any(c in directory for c in _BIND_UNSAFE):
            raise ResourcesNotSupportedError(
                backend, "directory", f"{runtime} cannot bind {directory!r}: it has ':' or ','"
            )
    names = _distinct(variables)
    if runtime is ContainerRuntime.PODMAN:
        return Wrapped([*command, *_podman(options, spec, names, binds, workdir), *program])
    prefix = "APPTAINERENV_" if runtime is ContainerRuntime.APPTAINER else "SINGULARITYENV_"
    return Wrapped(
        [*command, *_apptainer(options, spec, binds, workdir), *program],
        {prefix + name: name for name in names},
    )


def script_values(
    backend: str, options: ContainerOptions, job: Job, values: Mapping[str, Any]
) -> dict[str, Any]:
    """For a batch job script (its template's ``values``): the program's ``command`` run in
    the job's image, and the ``portable`` and ``environment`` variables to export, with
    those the runtime itself needs (apptainer's ``APPTAINERENV_NAME``) among them."""
    spec = job.spec
    portable: dict[str, str] = dict(values["portable"])
    known = {
        **spec.environment,
        "JOBBRIDGE_JOB_NAME": job.name,
        "JOBBRIDGE_WORKDIR": values["directory"],
    }
    wrapped = wrap(
        backend,
        options,
        spec,
        [spec.executable, *spec.arguments],
        variables=[*portable, *known],
        directories=[values["job_dir"]],
        workdir=values["directory"],
    )
    environment = dict(values["environment"])
    for alias, name in wrapped.aliases.items():
        if name in portable:  # exported above the alias: its value at run time
            portable[alias] = f'"${name}"'
        else:
            environment[alias] = known[name]
    return {"command": wrapped.argv, "portable": portable, "environment": environment}


def _podman(
    options: ContainerOptions, spec: JobSpec, names: list[str], binds: list[str], workdir: str
) -> list[str]:
    assert spec.image is not None
    # --init: the runtime's small init is process 1, so TERM from a cancel or a walltime
    # reaches the program (a process 1 ignores signals it has no handler for)
    words = ["run", "--rm", "--init"]
    if spec.pull_policy is not None:
        words.append(f"--pull={_PODMAN_PULL[spec.pull_policy]}")
    if spec.stdin is not None:
        words.append("--interactive")
    for name in names:
        words += ["--env", name]
    for directory in binds:
        words += ["--volume", f"{directory}:{directory}"]
    words += ["--workdir", workdir]
    resources = spec.resources
    if resources.memory and resources.nodes == 1 and spec.launcher is Launcher.SINGLE:
        words += ["--memory", str(resources.memory)]
    if resources.nodes == 1 and spec.launcher is Launcher.SINGLE:
        words += ["--cpus", str(resources.cores)]
    if resources.gpus_per_process:
        words += ["--device", "nvidia.com/gpu=all"]
    return [*words, *options.container_arguments, spec.image]


def _apptainer(
    options: ContainerOptions, spec: JobSpec, binds: list[str], workdir: str
) -> list[str]:
    assert spec.image is not None
    words = ["exec", "--cleanenv"]
    if spec.pull_policy is PullPolicy.ALWAYS:
        words.append("--disable-cache")
    if spec.resources.gpus_per_process:
        words.append("--nv")
    for directory in binds:
        words += ["--bind", directory]
    words += ["--pwd", workdir]
    return [*words, *options.container_arguments, _apptainer_image(spec.image)]


def _apptainer_image(image: str) -> str:
    """A registry reference (``python:3.12``) is a ``docker://`` URI to apptainer; a path to
    a file (an ``.sif``) or a URI stays as it is."""
    if "://" in image or image.startswith(("/", "./", "../")) or image.endswith((".sif", ".img")):
        return image
    return f"docker://{image}"


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
