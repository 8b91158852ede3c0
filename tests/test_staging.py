"""A job's sandbox on this machine: staging in and out, results, peek, free, limits, and no
way out of the sandbox."""

from __future__ import annotations

import functools
import http.server
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from jobbridge import (
    Engine,
    EngineSettings,
    JobSpec,
    JobStateError,
    LimitExceededError,
    Phase,
    ResourcesNotSupportedError,
    SpecError,
    Store,
)
from jobbridge.backends.base import BackendContext
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.cli import cli


@pytest.fixture
def engine(isolated_data_dir: Path) -> Iterator[Engine]:
    backend = LocalBackend("local", LocalOptions(), BackendContext(isolated_data_dir / "jobs"))
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    engine = Engine(
        store,
        {"local": backend},
        settings=EngineSettings(refresh_interval=0.1, submit_in_background=False),
        results_dir=isolated_data_dir / "results",
    )
    yield engine
    engine.close()


def finish(engine: Engine, spec: JobSpec) -> str:
    job = engine.submit(spec)
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase is Phase.COMPLETED, (done.detail, done.message)
    return done.id


def test_files_go_in_before_and_come_out_after(
    engine: Engine, tmp_path: Path, isolated_data_dir: Path
) -> None:
    (tmp_path / "input.txt").write_text("41\n")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "flat.dat").write_text("flat\n")
    wanted = tmp_path / "answers" / "answer.txt"
    script = (
        "read n < data/input.txt; echo $((n + 1)) > out/answer.txt;"
        " cat calibration/flat.dat > copy.txt"
    )
    job_id = finish(
        engine,
        JobSpec(
            executable="sh",
            arguments=["-c", f"mkdir out; {script}"],
            stage_in=[f"{tmp_path / 'input.txt'} -> data/input.txt", str(tmp_path / "calibration")],
            stage_out=[f"out/answer.txt -> {wanted}", "copy.txt"],
        ),
    )
    assert wanted.read_text() == "42\n"
    assert (isolated_data_dir / "results" / job_id / "copy.txt").read_text() == "flat\n"


def test_urls_are_fetched_where_the_job_runs(engine: Engine, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "catalogue.csv").write_text("ra,dec\n1,2\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/catalogue.csv"
        job_id = finish(
            engine,
            JobSpec(executable="cat", arguments=["in/cat.csv"], stage_in=[f"{url} -> in/cat.csv"]),
        )
        assert engine.read_output(job_id) == b"ra,dec\n1,2\n"
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("source", "reason"),
    [("gsiftp://grid.example/file", "gsiftp"), ("/no/such/file/anywhere", "no such local file")],
)
def test_inputs_that_cannot_be_staged_are_refused_before_submission(
    engine: Engine, source: str, reason: str
) -> None:
    with pytest.raises(ResourcesNotSupportedError, match=reason):
        engine.submit(JobSpec(executable="true", stage_in=[f"{source} -> x"]))
    assert engine.store.count() == 0


@pytest.mark.parametrize("path", ["../escape.txt", "/tmp/escape.txt", "a/../../escape.txt"])
def test_specs_whose_files_lead_out_of_the_sandbox_are_refused(path: str) -> None:
    with pytest.raises(ValidationError, match="stage_in target"):
        JobSpec(executable="true", stage_in=[f"/etc/hostname -> {path}"])
    with pytest.raises(ValidationError, match="stage_out source"):
        JobSpec(executable="true", stage_out=[f"{path} -> here.txt"])


def test_stage_out_does_not_follow_a_link_out_of_the_sandbox(
    engine: Engine, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not copy")
    job = engine.submit(
        JobSpec(
            executable="ln",
            arguments=["-s", str(secret), "link"],
            stage_out=[f"link -> {tmp_path / 'leaked'}"],
        )
    )
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase is Phase.COMPLETED
    assert "stage-out failed" in (done.message or "") and "leads out" in (done.message or "")
    assert not (tmp_path / "leaked").exists()


def test_get_results_follows_gc3libs_rules(engine: Engine, tmp_path: Path) -> None:
    job_id = finish(
        engine,
        JobSpec(executable="sh", arguments=["-c", "echo a > a.txt; mkdir sub; echo b > sub/b.txt"]),
    )
    _, sandbox = engine.backend().sandbox(engine.get(job_id))
    download = tmp_path / "download"
    download.mkdir()
    first = engine.get_results(job_id, download)
    assert {"a.txt", "sub/b.txt", "stdout", "stderr"} <= set(first)
    assert (download / "sub" / "b.txt").read_text() == "b\n"
    assert engine.get_results(job_id, download) == []  # nothing new
    assert engine.get_results(job_id, download, overwrite=True) == []  # nothing changed

    (download / "a.txt").write_text("edited locally\n")
    (download / "mine.txt").write_text("local only\n")
    assert engine.get_results(job_id, download) == []  # existing files are left alone
    assert (download / "a.txt").read_text() == "edited locally\n"
    assert engine.get_results(job_id, download, overwrite=True) == ["a.txt"]  # size differs
    assert (download / "a.txt").read_text() == "a\n"

    Path(sandbox, "new.txt").write_text("late\n")
    assert engine.get_results(job_id, download) == ["new.txt"]  # new files always come
    every = engine.get_results(job_id, download, overwrite=True, changed_only=False)
    assert set(every) == set(first) | {"new.txt"}
    assert (download / "mine.txt").read_text() == "local only\n"


def test_get_results_never_follows_a_link_out_of_the_sandbox(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("x")
    job_id = finish(
        engine, JobSpec(executable="ln", arguments=["-s", str(tmp_path / "secret"), "link"])
    )
    download = tmp_path / "download"
    download.mkdir()
    assert "link" not in engine.get_results(job_id, download)
    assert not (download / "link").exists()


def test_peek_at_a_running_job(engine: Engine, tmp_path: Path) -> None:
    job = engine.submit(
        JobSpec(
            executable="sh",
            arguments=["-c", "printf '0123456789' > log.txt; echo started; sleep 30"],
        )
    )
    log_file = Path(engine.backend().sandbox(engine.get(job.id))[1]) / "log.txt"
    while not log_file.exists() or log_file.stat().st_size < 10:
        time.sleep(0.05)
    buffer = io.BytesIO()
    assert engine.peek(job.id, "log.txt", buffer, offset=2, size=3) == 3
    assert buffer.getvalue() == b"234"
    local = tmp_path / "tail.txt"
    engine.peek(job.id, "log.txt", str(local), offset=-4)
    assert local.read_bytes() == b"6789"
    for escape in ("../../etc/hostname", "/etc/hostname"):
        with pytest.raises(SpecError):
            engine.peek(job.id, escape, io.BytesIO())
    with pytest.raises(JobStateError, match="still in use"):
        engine.free(job.id)
    engine.cancel(job.id)


def test_peek_refuses_a_link_that_leads_out(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    job_id = finish(
        engine, JobSpec(executable="ln", arguments=["-s", str(tmp_path / "secret"), "link"])
    )
    with pytest.raises(SpecError, match="leads out"):
        engine.peek(job_id, "link", io.BytesIO())


def test_free_removes_the_sandbox_of_an_ended_job(engine: Engine) -> None:
    job_id = finish(engine, JobSpec(executable="true"))
    _, sandbox = engine.backend().sandbox(engine.get(job_id))
    assert os.path.isdir(sandbox)
    engine.free(job_id)
    assert not os.path.exists(sandbox)
    assert engine.get(job_id).phase is Phase.COMPLETED


@pytest.mark.parametrize(
    ("limits", "resources", "limit"),
    [
        ({"max_cores_per_job": 2}, {"cores_per_process": 3}, "max_cores_per_job"),
        (
            {"max_memory_per_core": "1G"},
            {"memory": "4G", "cores_per_process": 2},
            "max_memory_per_core",
        ),
        ({"max_walltime": "1:00:00"}, {"walltime": "2:00:00"}, "max_walltime"),
        ({"max_cores_in_flight": 1}, {"cores_per_process": 2}, "max_cores_in_flight"),
    ],
)
def test_limits_are_checked_before_anything_is_stored(
    isolated_data_dir: Path, limits: dict, resources: dict, limit: str
) -> None:
    options = LocalOptions.model_validate({"cores": 8, **limits})
    backend = LocalBackend("small", options, BackendContext(isolated_data_dir / "jobs"))
    with Engine(
        Store(f"sqlite:///{isolated_data_dir / 'l.db'}"),
        {"small": backend},
        default_backend="small",
    ) as engine:
        with pytest.raises(LimitExceededError, match=limit):
            engine.submit(JobSpec(executable="true", resources=resources))
        assert engine.store.count() == 0


def test_cores_in_flight_make_jobs_wait(isolated_data_dir: Path) -> None:
    options = LocalOptions(cores=8, max_cores_in_flight=3, min_refresh_interval=0.05)
    backend = LocalBackend("small", options, BackendContext(isolated_data_dir / "jobs"))
    with Engine(
        Store(f"sqlite:///{isolated_data_dir / 'l.db'}"),
        {"small": backend},
        default_backend="small",
        settings=EngineSettings(submit_in_background=False),
    ) as engine:
        spec = JobSpec(executable="sleep", arguments=["0.5"], resources={"cores_per_process": 2})
        jobs = [engine.submit(spec) for _ in range(3)]
        assert [job.is_submitted for job in jobs] == [True, False, False]
        done = engine.wait([job.id for job in jobs], timeout=30)
        assert all(job.phase is Phase.COMPLETED for job in done)
        starts = sorted(job.started for job in done if job.started)
        ends = sorted(job.ended for job in done if job.ended)
        assert starts[1] >= ends[0] and starts[2] >= ends[1]


def test_results_and_peek_on_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    submitted = runner.invoke(
        cli,
        [
            "submit",
            "-q",
            "--wait",
            "--directory",
            str(tmp_path),
            "--",
            "sh",
            "-c",
            "echo hello > greeting.txt; echo done",
        ],
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.split()[0]
    target = tmp_path / "here"
    fetched = runner.invoke(cli, ["results", job_id, str(target)])
    assert fetched.exit_code == 0, fetched.output
    assert (target / "stdout").read_text() == "done\n"
    peeked = runner.invoke(cli, ["peek", job_id, "stdout", "--offset", "-3"])
    assert peeked.exit_code == 0 and peeked.output == "ne\n"
