"""Jobs in a container image on the local and batch backends: the wrapped command lines
(golden files, for podman and apptainer alike), refusals, and real podman runs through the
engine on the local backend and on the real SLURM cluster. Apptainer is not packaged for
Debian 12, so its command lines are checked against golden files only."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, Phase, Resources, ResourcesNotSupportedError
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.backends.containers import ContainerOptions, wrap
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.backends.registry import create_backend
from jobbridge.config import load_config
from jobbridge.errors import ConfigError
from jobbridge.spec import FileTransfer
from tests.batch_support import (
    CASES,
    check_golden,
    make_backend,
    make_engine,
    render_case,
    running_engine,
)
from tests.conftest import cluster_env
from tests.test_batch_htcondor import condor, condor_backend

__all__ = ["condor"]  # the fake HTCondor pool's fixture, used by name

IMAGE_SPEC = CASES["awkward"].replace(image="registry.example/tools:1.0", pull_policy="Always")


def podman_settings() -> dict[str, object]:
    """How podman runs here, as scripts/test-tools.sh found out (skip, or fail under CI,
    when it did not run)."""
    facts = cluster_env("podman")
    return {
        "container_runtime": "podman",
        "container_command": shlex.split(facts["JOBBRIDGE_TEST_PODMAN_COMMAND"]),
        "container_arguments": shlex.split(facts["JOBBRIDGE_TEST_PODMAN_ARGUMENTS"]),
    }


def podman_image() -> str:
    return cluster_env("podman")["JOBBRIDGE_TEST_PODMAN_IMAGE"]


# -- command lines --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["podman", "apptainer", "singularity"])
def test_wrapped_command_lines_match_the_golden_files(runtime: str) -> None:
    options = ContainerOptions(container_runtime=runtime, container_arguments=["--extra"])
    spec = IMAGE_SPEC.replace(
        resources=Resources(cores_per_process=2, memory="1G", gpus_per_process=1)
    )
    wrapped = wrap(
        "cluster",
        options,
        spec,
        [spec.executable, *spec.arguments],
        variables=["TRICKY", "JOBBRIDGE_JOB_ID", "TRICKY"],
        directories=["/jobs/jb0case0awkw"],
        workdir="/data/my dir/it's",
    )
    lines = [*wrapped.argv, "--", *(f"{a}={n}" for a, n in wrapped.aliases.items())]
    check_golden("containers", f"{runtime}.argv", "".join(f"{line!r}\n" for line in lines))


@pytest.mark.parametrize("runtime", ["podman", "apptainer"])
def test_batch_scripts_wrap_the_command_and_pass_the_environment(
    runtime: str, tmp_path: Path
) -> None:
    backend = make_backend(
        SlurmBackend, tmp_path, container_runtime=runtime, work_dir="/cluster/jobs"
    )
    CASES["image"] = IMAGE_SPEC
    try:
        script = render_case(backend, "image")
    finally:
        del CASES["image"]
    check_golden("containers", f"slurm-{runtime}.sh", script)


def test_a_backend_without_a_runtime_refuses_an_image_naming_backend_and_field(
    tmp_path: Path,
) -> None:
    spec = JobSpec(executable="true", image="busybox")
    local = LocalBackend("laptop", LocalOptions(), BackendContext(tmp_path))
    slurm = make_backend(SlurmBackend, tmp_path)
    for backend, name in ((local, "laptop"), (slurm, "slurm")):
        with pytest.raises(ResourcesNotSupportedError, match="container runtime") as refused:
            backend.check(spec)
        assert (refused.value.backend, refused.value.field) == (name, "image")
    local.close()


def test_apptainer_cannot_promise_never_to_pull_a_registry_image(tmp_path: Path) -> None:
    backend = make_backend(SlurmBackend, tmp_path, container_runtime="apptainer")
    never = JobSpec(executable="true", image="busybox", pull_policy="Never")
    with pytest.raises(ResourcesNotSupportedError, match="pull_policy"):
        backend.check(never)
    backend.check(never.replace(image="/images/busybox.sif"))


def test_a_directory_that_cannot_be_bound_is_refused(tmp_path: Path) -> None:
    backend = make_backend(SlurmBackend, tmp_path, container_runtime="podman")
    with pytest.raises(ResourcesNotSupportedError, match="directory"):
        backend.check(JobSpec(executable="true", image="busybox", directory="/data/a:b"))
    with pytest.raises(ResourcesNotSupportedError, match="absolute"):
        backend.check(JobSpec(executable="true", image="busybox", directory="data"))


def test_an_unknown_runtime_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="container_runtime"):
        LocalOptions.model_validate({"container_runtime": "docker"})


# -- real podman ----------------------------------------------------------------------------

SHOW = (  # where it runs: the busybox image has no /etc/debian_version, this machine has
    'printf "%s|%s|%s|%s|%s|%s\\n" "$GREETING" "$JOBBRIDGE_JOB_ID" "$(pwd)" "$(cat data.txt)"'
    ' "$HOST_ONLY" "$(test -e /etc/debian_version && echo host || echo image)"'
)


@pytest.fixture
def podman_engine(isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("HOST_ONLY", "from the host")
    backend = LocalBackend(
        "local",
        LocalOptions(grace_period=2.0, **podman_settings()),  # type: ignore[arg-type]
        BackendContext(isolated_data_dir / "jobs"),
    )
    engine = make_engine(backend, isolated_data_dir)  # type: ignore[arg-type]
    yield engine
    engine.close()


def in_image(script: str, **changes: object) -> JobSpec:
    return JobSpec(
        executable="/bin/sh",
        arguments=["-c", script],
        image=podman_image(),
        pull_policy="Never",
        **changes,  # type: ignore[arg-type]
    )


def test_podman_runs_a_local_job_in_its_image(podman_engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "source.txt").write_text("staged")
    spec = in_image(
        SHOW + "; echo done",
        environment={"GREETING": "hello 'there' $(x)"},
        stage_in=[FileTransfer(source=str(tmp_path / "source.txt"), target="data.txt")],
        inherit_environment=True,
    )
    job = podman_engine.submit(spec)
    [done] = podman_engine.wait([job.id], timeout=120)
    output = podman_engine.read_output(done.id).decode()
    assert (done.phase, done.exit_code) == (Phase.COMPLETED, 0), (output, done.message)
    workdir = str(podman_engine.backend().context.jobs_dir / job.id)
    # the job's variables, not the host's
    assert output == f"hello 'there' $(x)|{job.id}|{workdir}|staged||image\ndone\n"


def test_podman_keeps_a_failing_jobs_exit_code(podman_engine: Engine, tmp_path: Path) -> None:
    workdir = tmp_path / "my work"
    workdir.mkdir()
    job = podman_engine.submit(
        in_image("pwd; echo out > result.txt; echo bad >&2; exit 7", directory=str(workdir))
    )
    [done] = podman_engine.wait([job.id], timeout=120)
    assert (done.phase, done.exit_code) == (Phase.ERROR, 7)
    assert podman_engine.read_output(done.id) == f"{workdir}\n".encode()
    assert podman_engine.read_output(done.id, "stderr") == b"bad\n"
    assert (workdir / "result.txt").read_text() == "out\n"


def test_podman_jobs_are_cancelled_while_running(podman_engine: Engine) -> None:
    job = podman_engine.submit(in_image("echo started; sleep 300"))
    deadline = time.monotonic() + 60
    while podman_engine.get(job.id).phase is not Phase.EXECUTING:
        assert time.monotonic() < deadline, "the job never started"
        podman_engine.refresh()
        time.sleep(0.2)
    time.sleep(1.0)  # the container is up
    podman_engine.cancel(job.id)
    [done] = podman_engine.wait([job.id], timeout=60)
    assert done.phase is Phase.ABORTED


def test_podman_with_an_image_that_is_not_there(podman_engine: Engine) -> None:
    job = podman_engine.submit(in_image("true").replace(image="localhost/jobbridge-no-such-image"))
    [done] = podman_engine.wait([job.id], timeout=120)
    assert done.phase is Phase.ERROR and done.exit_code == 125
    assert b"image not known" in podman_engine.read_output(done.id, "stderr")


@pytest.fixture
def slurm_podman_engine(isolated_data_dir: Path) -> Iterator[Engine]:
    cluster_env("slurm")
    backend = make_backend(SlurmBackend, isolated_data_dir, **podman_settings())
    yield from running_engine(backend, isolated_data_dir)


@pytest.mark.slurm
def test_podman_runs_slurm_jobs_in_their_image(slurm_podman_engine: Engine, tmp_path: Path) -> None:
    engine = slurm_podman_engine
    workdir = tmp_path / "slurm work"
    workdir.mkdir()
    (workdir / "data.txt").write_text("on shared disk")
    good = engine.submit(
        in_image(SHOW, environment={"GREETING": "it's $HOME"}, directory=str(workdir))
    )
    bad = engine.submit(in_image("echo failing >&2; exit 9"))
    done = engine.wait([good.id, bad.id], timeout=180)
    [good_done, bad_done] = done
    output = engine.read_output(good.id).decode()
    assert (good_done.phase, good_done.exit_code) == (Phase.COMPLETED, 0), output
    native = good_done.native_id
    assert output == f"it's $HOME|{native}|{workdir}|on shared disk||image\n"
    assert (bad_done.phase, bad_done.exit_code) == (Phase.ERROR, 9)
    assert engine.read_output(bad.id, "stderr") == b"failing\n"


# -- apptainer, through a fake (it is not packaged for Debian 12) ----------------------------

FAKE_APPTAINER = Path(__file__).parent / "fakes" / "bin" / "apptainer" / "apptainer"


@pytest.mark.parametrize("code", [0, 6])
def test_apptainer_gets_the_job_environment_by_name_only(
    code: int, condor: Path, isolated_data_dir: Path, tmp_path: Path
) -> None:
    """Through the fake HTCondor pool, whose jobs carry HTCondor's own variables
    (_CONDOR_SCRATCH_DIR...): inside the container only the job's variables show."""
    log = tmp_path / "apptainer.log"
    backend = condor_backend(
        isolated_data_dir, container_runtime="apptainer", container_command=[str(FAKE_APPTAINER)]
    )
    script = (
        'printf "%s|%s|%s|%s\\n" "$GREETING" "$JOBBRIDGE_JOB_ID" "$(pwd)" "${_CONDOR_SLOT-unset}"'
        f"; exit {code}"
    )
    spec = JobSpec(
        executable="sh",
        arguments=["-c", script],
        image="busybox:1.36",
        environment={"GREETING": "it's $(not) run", "FAKE_APPTAINER_LOG": str(log)},
    )
    with make_engine(backend, isolated_data_dir) as engine:
        job = engine.submit(spec)
        [done] = engine.wait([job.id], timeout=60)
        output = engine.read_output(done.id).decode()
    expected = Phase.COMPLETED if code == 0 else Phase.ERROR
    assert (done.phase, done.exit_code) == (expected, code), output
    job_dir = str(isolated_data_dir / "jobs" / job.id)
    assert output == f"it's $(not) run|{done.native_id}|{job_dir}|unset\n"
    [argv] = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:2] == ["exec", "--cleanenv"]
    assert argv[argv.index("--pwd") + 1] == job_dir
    assert argv[argv.index("docker://busybox:1.36") + 1 :] == ["sh", "-c", script]


def test_a_runtime_is_configured_per_backend_in_the_toml_file(tmp_path: Path) -> None:
    config_file = tmp_path / "jobbridge.toml"
    config_file.write_text(
        '[backends.boxed]\nkind = "local"\ncontainer_runtime = "podman"\n'
        'container_command = ["podman", "--runtime", "runc"]\n'
        '[backends.cluster]\nkind = "slurm"\ncontainer_runtime = "apptainer"\n'
        '[backends.bad]\nkind = "local"\ncontainer_runtime = "docker"\n'
    )
    config = load_config(config_file, environ={"JOBBRIDGE_DATA_DIR": str(tmp_path)})
    context = BackendContext(tmp_path / "jobs")
    boxed = create_backend("boxed", config.backends["boxed"], context)
    assert boxed.options.container_command == ["podman", "--runtime", "runc"]  # type: ignore[attr-defined]
    boxed.check(JobSpec(executable="true", image="busybox"))
    plain = create_backend("local", config.backends["local"], context)
    with pytest.raises(ResourcesNotSupportedError, match="'local' cannot encode image"):
        plain.check(JobSpec(executable="true", image="busybox"))
    cluster = create_backend("cluster", config.backends["cluster"], context)
    cluster.check(JobSpec(executable="true", image="busybox"))
    with pytest.raises(ConfigError, match="container_runtime"):
        create_backend("bad", config.backends["bad"], context)
    for backend in (boxed, plain, cluster):
        backend.close()


def test_a_job_in_an_image_gets_its_secrets(
    isolated_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secrets' private directory lies in the sandbox, which the runtime binds, so a
    program in its image reads them as on the host."""
    from jobbridge import EngineSettings, Store
    from jobbridge.config import SecretsSettings
    from jobbridge.secrets import SecretKind, new_key

    key = tmp_path / "secrets.key"
    key.write_text(new_key())
    backend = LocalBackend(
        "local",
        LocalOptions(grace_period=2.0, **podman_settings()),  # type: ignore[arg-type]
        BackendContext(isolated_data_dir / "jobs"),
    )
    engine = Engine(
        Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}"),
        {"local": backend},
        settings=EngineSettings(refresh_interval=0.2),
        secrets=SecretsSettings(key_file=key),
    )
    try:
        engine.secrets.add("alice", "TOKEN", SecretKind.ENV, b"in-the-image-4471")
        engine.secrets.add("alice", "KEYTAB", SecretKind.FILE, b"keytab-4471")
        spec = in_image(
            'printf "%s|%s|%s\\n" "$TOKEN" "$(cat "$JOBBRIDGE_SECRETS/KEYTAB")"'
            ' "$(test -e /etc/debian_version && echo host || echo image)"',
            secrets=["TOKEN", "KEYTAB"],
        )
        job = engine.submit(spec, owner="alice")
        [done] = engine.wait([job.id], timeout=120)
        output = engine.read_output(done.id).decode()
        assert (done.phase, done.exit_code) == (Phase.COMPLETED, 0), (output, done.message)
        assert output == "in-the-image-4471|keytab-4471|image\n"
    finally:
        engine.close()
