"""Job specs: parsing, validation messages, JSON round trips."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from jobbridge import ArraySpec, Dependency, FileTransfer, JobSpec, Launcher, Resources
from jobbridge.spec import format_validation_error, parse_memory, parse_walltime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90),
        (1.5, 1.5),
        ("3600", 3600),
        ("01:30:00", 5400),
        ("100:00:00", 360000),
        ("2-00:00:10", 172810),
        ("PT1H30M", 5400),
        ("P1DT2H", 93600),
        ("pt45s", 45),
        (timedelta(minutes=2), 120),
    ],
)
def test_walltime_formats(text: object, seconds: float) -> None:
    assert parse_walltime(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["1:60:00", "0", -5, "soon", "1-2", "PT", True, "1:2:3:4"])
def test_bad_walltimes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(bad)


@given(st.integers(min_value=1, max_value=10**7))
def test_walltime_clock_form_round_trips(seconds: int) -> None:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{days}-{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    assert parse_walltime(text).total_seconds() == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4G", 4 * 1024**3),
        ("512M", 512 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1.5 GB", 1_500_000_000),
        (1000, 1000),
        ("16k", 16384),
    ],
)
def test_memory_sizes(text: object, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["lots", "0", -1, "4 parsecs", False])
def test_bad_memory_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(bad)


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("0-3", (0, 1, 2, 3), None),
        ("0-99%10", tuple(range(100)), 10),
        ("1,3,5-7", (1, 3, 5, 6, 7), None),
        ("0-20:5", (0, 5, 10, 15, 20), None),
        ("7", (7,), None),
    ],
)
def test_array_expressions(text: str, indices: tuple[int, ...], limit: int | None) -> None:
    array = ArraySpec.parse(text)
    assert (array.indices, array.max_concurrent) == (indices, limit)


@pytest.mark.parametrize("bad", ["5-1", "a-b", "1,1", "0-9%0", "0-9%x", "", "1-", "0-10:0"])
def test_bad_arrays_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="array"):
        ArraySpec.parse(bad)


@given(
    st.sets(st.integers(min_value=0, max_value=5000), min_size=1, max_size=200),
    st.none() | st.integers(min_value=1, max_value=50),
)
def test_array_text_round_trips(indices: set[int], limit: int | None) -> None:
    array = ArraySpec(tuple(sorted(indices)), limit)
    assert ArraySpec.parse(str(array)) == array


def test_validation_errors_name_the_field_and_the_rule() -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec(
            executable=" ",
            resources={"cores_per_process": -1, "walltime": "3:99:00"},
            array="9-1",
            environment={"1BAD": "x"},
        )
    lines = format_validation_error(caught.value).splitlines()
    assert any(line.startswith("executable:") and "blank" in line for line in lines)
    assert any(
        line.startswith("resources.cores_per_process:") and "greater than or equal to 1" in line
        for line in lines
    )
    assert any(line.startswith("resources.walltime:") for line in lines)
    assert any(line.startswith("array:") and "empty range" in line for line in lines)
    assert any(line.startswith("environment:") and "1BAD" in line for line in lines)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="cpus"):
        JobSpec.model_validate({"executable": "x", "cpus": 4})


def test_attribute_keys_name_their_scheduler() -> None:
    with pytest.raises(ValidationError, match=r"scheduler\.option"):
        JobSpec(executable="x", attributes={"constraint": "haswell"})
    spec = JobSpec(executable="x", attributes={"slurm.constraint": "haswell", "sge.binding": "x"})
    assert spec.attributes_for("slurm") == {"constraint": "haswell"}


def test_nul_characters_are_refused() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        JobSpec(executable="echo", arguments=["a\0b"])


def test_short_forms_of_dependencies_and_transfers() -> None:
    spec = JobSpec(
        executable="x",
        depends_on=["abc", "afterany:def"],
        stage_in=["data/in.fits", "/tmp/a -> b.txt"],
    )
    assert spec.depends_on == [
        Dependency(job_id="abc"),
        Dependency(job_id="def", condition="afterany"),
    ]
    assert spec.stage_in == [
        FileTransfer(source="data/in.fits", target="in.fits"),
        FileTransfer(source="/tmp/a", target="b.txt"),
    ]


def test_json_round_trip_keeps_everything() -> None:
    spec = JobSpec(
        executable="mpi_app",
        arguments=["-n", "it's"],
        name="run 1",
        environment={"A": "1"},
        inherit_environment=False,
        directory="/scratch",
        stdin="in",
        stdout="out",
        stderr="err",
        resources=Resources(
            nodes=2,
            processes_per_node=4,
            cores_per_process=2,
            gpus_per_process=1,
            memory="8G",
            walltime="2:00:00",
        ),
        queue="batch",
        account="astro",
        project="p1",
        reservation="r1",
        array="0-9%2",
        depends_on=["afterok:x"],
        prologue="module load mpi",
        epilogue="echo done",
        stage_in=["a"],
        stage_out=["b"],
        launcher=Launcher.MPIRUN,
        attributes={"slurm.constraint": "haswell", "slurm.exclusive": True},
    )
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
    assert spec.resources.cores == 16 and spec.resources.processes == 8


def test_replace_validates() -> None:
    with pytest.raises(ValidationError):
        JobSpec(executable="x").replace(array="bad")
    assert JobSpec(executable="x").replace(array="0-1").array == ArraySpec((0, 1))
