"""IBM Spectrum LSF through fake bsub, bjobs, bkill, bstop and bresume (tests/fakes/bin/lsf),
which take the real tools' documented options and print their documented output over a small
real batch system; plus the backend's pure parts."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobbridge import Engine, JobSpec, Phase, ResourcesNotSupportedError
from jobbridge.backends.base import BackendContext, NativeDependency
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.lsf import LsfBackend, lsf_index_list, run_limit
from jobbridge.backends.batch.native import NativeState
from jobbridge.job import Job
from jobbridge.spec import ArraySpec
from tests.batch_support import (
    CASES,
    FIXED_TIME,
    BackendScenarios,
    BatchScenarios,
    CountingTransport,
    Outage,
    array_members,
    assert_refused,
    case_jobs,
    check_golden,
    commands_of_one_refresh,
    located_by_member,
    make_backend,
    make_engine,
    render_case,
    run_rendered_script,
    running_engine,
)

FAKE_BIN = Path(__file__).parent / "fakes" / "bin" / "lsf"


@pytest.fixture
def fake_lsf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh fake LSF cluster whose commands come first on PATH."""
    root = tmp_path / "fakesched"
    monkeypatch.setenv("FAKESCHED_DIR", str(root))
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    # Test-only knob of the fake: one minute of `bsub -W` lasts two seconds.
    monkeypatch.setenv("FAKESCHED_LSF_SECONDS_PER_MINUTE", "2")
    yield root
    _stop_leftovers(root)


def _stop_leftovers(root: Path) -> None:
    state = root / "state.json"
    if not state.exists():
        return
    for task in json.loads(state.read_text()):
        if task["state"] == "running" and task["pid"]:
            with contextlib.suppress(OSError):
                os.killpg(task["pid"], signal.SIGKILL)


def lsf_backend(data_dir: Path, **options: object) -> LsfBackend:
    return make_backend(LsfBackend, data_dir, **options)


@pytest.fixture
def engine(fake_lsf: Path, isolated_data_dir: Path) -> Iterator[Engine]:
    yield from running_engine(lsf_backend(isolated_data_dir), isolated_data_dir)


class TestLsf(BatchScenarios):
    timeout = 60
    walltime = 60  # `bsub -W 1`, which the fake's test-only knob makes two seconds
    walltime_timeout = 30


def test_jobs_bjobs_has_forgotten_are_resolved_from_their_exit_code_files(
    fake_lsf: Path, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESCHED_LSF_CLEAN_PERIOD", "0")  # a site that forgets at once
    backend = lsf_backend(isolated_data_dir)
    with make_engine(backend, isolated_data_dir) as engine:
        good = engine.submit(JobSpec(executable="true"))
        bad = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 6"]))
        done = engine.wait([good.id, bad.id], timeout=30)
        assert [(j.phase, j.exit_code) for j in done] == [(Phase.COMPLETED, 0), (Phase.ERROR, 6)]
        assert all(j.started is not None and j.ended is not None for j in done)
        backend.cancel(done[1])  # bkill of a forgotten job is not an error


def test_a_forgotten_job_without_an_exit_code_file_is_lost_not_completed(
    fake_lsf: Path, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESCHED_LSF_CLEAN_PERIOD", "0")
    backend = lsf_backend(isolated_data_dir, accounting_delay=1, lost_after=1, lost_after_misses=2)
    with make_engine(backend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="true", attributes={"lsf.H": True}))
        backend._run(["bkill", job.native_id or ""])  # killed behind jobbridge's back
        [done] = engine.wait([job.id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, "LOST")


def test_one_refresh_of_100_active_jobs_runs_one_status_command(
    fake_lsf: Path, isolated_data_dir: Path
) -> None:
    backend = lsf_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="true", attributes={"lsf.H": True})
        jobs = [engine.submit(spec) for _ in range(50)]
        jobs += engine.submit_array(spec.replace(array="0-49"))
        try:
            commands = commands_of_one_refresh(engine, counting)
            assert [c[0] for c in commands] == ["bjobs"], commands
            assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)
        finally:
            backend._run(["bkill", *{(job.native_id or "").split("[")[0] for job in jobs}])


def test_an_array_keeps_its_own_indices_and_its_concurrency_limit(
    engine: Engine, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    script = (
        f'echo "start $JOBBRIDGE_ARRAY_INDEX $(date +%s.%N)" >> {log}; sleep 0.6; '
        f'echo "end $JOBBRIDGE_ARRAY_INDEX $(date +%s.%N)" >> {log}'
    )
    members = engine.submit_array(
        JobSpec(executable="sh", arguments=["-c", script], array="1,3,5-7%2")
    )
    # The engine paces the members itself; each goes in as a one-element LSF array.
    done = engine.wait([m.id for m in members], timeout=60)
    assert [(m.native_id or "").split("[")[1] for m in done] == ["2]", "4]", "6]", "7]", "8]"]
    assert all(m.phase is Phase.COMPLETED for m in done)
    events = sorted(
        (float(t), kind, int(i)) for kind, i, t in map(str.split, log.read_text().splitlines())
    )
    assert sorted(i for _, kind, i in events if kind == "start") == [1, 3, 5, 6, 7]
    running = peak = 0
    for _, kind, _ in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak <= 2


def test_files_are_staged_in_before_bsub_and_out_after(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("41\n")
    wanted = tmp_path / "answer.txt"
    spec = JobSpec(
        executable="sh",
        arguments=["-c", "read n < data/input.txt; echo $((n + 1)) > answer.txt"],
        stage_in=[f"{tmp_path / 'input.txt'} -> data/input.txt"],
        stage_out=[f"answer.txt -> {wanted}"],
    )
    [done] = engine.wait([engine.submit(spec).id], timeout=30)
    assert done.phase is Phase.COMPLETED, engine.read_output(done.id, "stderr")
    assert wanted.read_text() == "42\n"


def test_scripts_match_the_golden_files(tmp_path: Path) -> None:
    backend = lsf_backend(tmp_path, work_dir="/scratch/jobbridge jobs")
    for case in CASES:
        check_golden("lsf", f"{case}.sh", render_case(backend, case))
    check_golden("lsf", "dependencies.sh", render_case(backend, "plain", dependencies=True))


def test_the_fake_bsub_reads_every_golden_script(fake_lsf: Path, tmp_path: Path) -> None:
    for golden in sorted((Path(__file__).parent / "golden" / "lsf").glob("*.sh")):
        held = subprocess.run(
            ["bsub", "-H"], input=golden.read_text(), capture_output=True, text=True, cwd=tmp_path
        )
        if golden.name == "dependencies.sh":  # parsed, but names jobs this cluster never had
            assert "1001: No matching job found" in held.stderr
        else:
            assert held.stdout.startswith("Job <"), (golden.name, held.stderr)


def test_the_generated_script_passes_everything_verbatim(tmp_path: Path) -> None:
    seen = run_rendered_script(
        lsf_backend(tmp_path),
        tmp_path,
        {"LSB_JOBID": "42", "LSB_SUB_HOST": "login", "LSB_MCPU_HOSTS": "node1 4 node2 4"},
    )
    assert seen["stdin"] == "from stdin\n"
    assert seen["cwd"].endswith("it's")


def test_array_elements_see_jobbridge_indices_and_lsf_variables(tmp_path: Path) -> None:
    backend = lsf_backend(tmp_path)
    program = 'echo "$JOBBRIDGE_ARRAY_INDEX|$JOBBRIDGE_JOB_ID|$JOBBRIDGE_NODELIST"'
    spec = JobSpec(executable="sh", arguments=["-c", program], array="0-3", directory=str(tmp_path))
    members = array_members(spec)
    Path(backend.job_dir(members[0])).mkdir(parents=True)
    script = tmp_path / "job.sh"
    script.write_text(backend.render_script(members[0], members))
    lsf = {"LSB_JOBID": "77", "LSB_JOBINDEX": "3", "LSB_MCPU_HOSTS": "node1 4 node2 2"}
    subprocess.run(["bash", str(script)], env={**os.environ, **lsf}, check=True, timeout=30)
    stdout = Path(backend.job_dir(members[0])) / "stdout.2"
    assert stdout.read_text() == "2|77[3]|node1,node2\n"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"queue": "long; rm -rf /"}, "queue"),
        ({"account": "a b"}, "project"),
        ({"account": "a", "project": "b"}, "project"),
        ({"reservation": "r\nx"}, "reservation"),
        ({"attributes": {"lsf.bad-name": "x"}}, "attributes.lsf.bad-name"),
        ({"attributes": {"lsf.G": "x\ny"}}, "attributes.lsf.G"),
        ({"attributes": {"lsf.q": "other"}}, "attributes.lsf.q"),
        ({"attributes": {"lsf.R": 'select[x] "quoted"'}}, "attributes.lsf.R"),
        ({"launcher": "srun"}, "launcher"),
    ],
)
def test_what_a_directive_cannot_carry_is_refused(
    tmp_path: Path, changes: dict, field: str
) -> None:
    assert_refused(lsf_backend(tmp_path), changes, field)


def test_extra_bsub_options_pass_through(tmp_path: Path) -> None:
    spec = JobSpec(
        executable="x",
        attributes={"lsf.G": "physics", "lsf.x": True, "lsf.R": "select[mem>100]", "lsf.H": False},
    )
    job = Job(id="jb0attrs0000", spec=spec, backend="lsf", created=FIXED_TIME)
    lines = lsf_backend(tmp_path).directives(job, [job], [])
    assert lines[-3:] == ["#BSUB -G physics", '#BSUB -R "select[mem>100]"', "#BSUB -x"]


def test_dependencies_name_lsf_conditions_and_refuse_foreign_ids(tmp_path: Path) -> None:
    backend = lsf_backend(tmp_path)
    job = Job(id="jb0deps00000", spec=JobSpec(executable="x"), backend="lsf", created=FIXED_TIME)
    dependencies = [
        NativeDependency("12", "afterok"),
        NativeDependency("13[4]", "afterany"),
        NativeDependency("14", "afternotok"),
    ]
    lines = backend.directives(job, [job], dependencies)
    assert '#BSUB -w "done(12) && ended(13[4]) && exit(14)"' in lines
    with pytest.raises(ResourcesNotSupportedError, match="depends_on"):
        backend.directives(job, [job], [NativeDependency("12.server", "afterok")])


def test_lsf_index_lists_and_run_limits() -> None:
    assert lsf_index_list(range(10)) == "1-10"
    assert lsf_index_list([1, 3, 5, 6, 7]) == "2,4,6-8"
    assert lsf_index_list([0, 5, 10, 15, 20]) == "1-21:5"
    assert lsf_index_list([0]) == "1"
    assert lsf_index_list([0, 2]) == "1,3"
    assert [run_limit(s) for s in (1, 60, 61, 3600, 93784)] == ["1", "1", "2", "1:00", "26:04"]


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1))
def test_every_index_set_survives_the_lsf_index_list(indices: set[int]) -> None:
    listed = lsf_index_list(sorted(indices))
    assert ArraySpec.parse(listed).indices == tuple(sorted(i + 1 for i in indices))


def test_ids_of_arrays() -> None:
    backend = LsfBackend("lsf", LsfBackend.Options(), BackendContext(Path("/x")))
    members = array_members(JobSpec(executable="x", array="0,4"))
    assert backend.member_ids("31", members) == ["31[1]", "31[5]"]
    assert backend.query_ids(["31[1]", "31[5]", "40"]) == ["31", "40"]


def test_parsing_bsub_and_bjobs_output() -> None:
    backend = LsfBackend("lsf", LsfBackend.Options(), BackendContext(Path("/x")))
    # bsub's documented confirmation lines, with and without -q, after a site notice
    assert backend.parse_job_id("Job <4711> is submitted to queue <regress>.\n") == "4711"
    notice = "Warning: your project quota is nearly used.\n"
    assert backend.parse_job_id(notice + "Job <12> is submitted to default queue <normal>.\n")
    with pytest.raises(ValueError):
        backend.parse_job_id("Bad job name. Job not submitted.\n")
    # The shape IBM documents for `bjobs -o "..." -json`: COMMAND, JOBS and one RECORDS entry
    # per job or array element, keyed by the field names in capitals, "" for empty values;
    # a job bjobs does not know comes back as an ERROR entry.
    BY_USER = "The job was suspended by the user"
    RUNLIMIT = "TERM_RUNLIMIT: job killed after reaching LSF run time limit."
    MEMLIMIT = "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit."
    output = json.dumps(
        {
            "COMMAND": "bjobs",
            "JOBS": 11,
            "RECORDS": [
                _record("20", "0", "PEND", pend="New job is waiting for scheduling;"),
                _record("21", "0", "PSUSP", pend=f"{BY_USER} while pending;"),
                _record("22", "0", "PEND", pend="Dependency condition invalid or never satisfied;"),
                _record("23", "1", "RUN"),
                _record("23", "2", "DONE"),
                _record("24", "0", "EXIT", code="3"),
                _record("25", "0", "EXIT", code="140", reason=RUNLIMIT),
                _record("26", "0", "EXIT", code="", reason="TERM_OWNER: job killed by owner."),
                _record("27", "0", "EXIT", code="137", reason=MEMLIMIT),
                _record("28", "0", "USUSP"),
                _record("29", "0", "UNKWN"),
                {"JOBID": "30", "ERROR": "Job <30> is not found"},
            ],
        },
        indent=2,
    )  # fmt: skip
    states = backend.parse_status("Cannot connect to LSF. Please wait ...\n" + output)
    summary = {
        native: (status.phase, status.detail, status.exit_code)
        for native, status in ((k, backend.to_status(v)) for k, v in states.items())
    }
    assert summary == {
        "20": (Phase.QUEUED, None, None),
        "21": (Phase.HELD, None, None),
        "22": (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED", None),
        "23[1]": (Phase.EXECUTING, None, None),
        "23[2]": (Phase.COMPLETED, None, 0),
        "24": (Phase.ERROR, None, 3),
        "25": (Phase.ERROR, "TIMEOUT", 140),
        "26": (Phase.ABORTED, "CANCELLED", None),
        "27": (Phase.ERROR, "OUT_OF_MEMORY", 137),
        "28": (Phase.SUSPENDED, None, None),
        "29": (Phase.UNKNOWN, "UNKWN", None),
    }
    # Ended jobs without a termination reason wait for their exit-code files (exact times).
    assert states["23[2]"].exit_code is None and states["24"].exit_code is None
    assert states["25"].exit_code == 140
    assert backend.to_status(NativeState("BRAND_NEW")).phase is Phase.UNKNOWN
    assert backend.parse_status("") == {}
    assert backend.parse_status('{"COMMAND":"bjobs","JOBS":0,"RECORDS":[]}') == {}
    # Some versions name array elements in the JOBID field itself.
    assert "31[4]" in backend.parse_status(json.dumps({"RECORDS": [_record("31[4]", "", "RUN")]}))


def _record(job_id: str, index: str, stat: str, *, code: str = "", reason: str = "",
            pend: str = "") -> dict[str, str]:  # fmt: skip
    return {
        "JOBID": job_id,
        "JOBINDEX": index,
        "STAT": stat,
        "EXIT_CODE": code,
        "EXIT_REASON": reason,
        "PEND_REASON": pend,
    }


def test_the_fake_refuses_what_lsf_refuses_and_caps_arrays(fake_lsf: Path, tmp_path: Path) -> None:
    def bsub(*args: str, script: str = "true\n") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bsub", *args], input=script, capture_output=True, text=True, cwd=tmp_path
        )

    assert "Bad job name" in bsub("-J", "a[0-3]").stderr  # LSF indices start at 1
    assert "No matching job" in bsub("-w", "done(999)").stderr
    assert "RUNLIMIT" in bsub("-W", "1.5").stderr
    limited = bsub(script='#!/bin/bash\n#BSUB -J "capped[1-3]%1"\nsleep 30\n')
    assert limited.stdout == "Job <100> is submitted to default queue <normal>.\n"
    listing = subprocess.run(
        ["bjobs", "-a", "-o", "jobid jobindex stat pend_reason", "-json", "100"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    records = json.loads(listing.stdout)["RECORDS"]
    assert [(r["JOBINDEX"], r["STAT"]) for r in records] == [
        ("1", "RUN"),
        ("2", "PEND"),
        ("3", "PEND"),
    ]
    assert "job slot limit" in records[1]["PEND_REASON"]
    assert subprocess.run(["bkill", "100"], capture_output=True, text=True).returncode == 0


# -- finding submissions by their mark (locate), through the fake tools ----------------------


class TestLsfBackend(BackendScenarios):
    hold_attribute = "lsf.H"
    queue_down = Outage("bjobs", "LSF is down. Please wait ...", returncode=255)
    accounting_down = Outage("bhist", "LSF is down. Please wait ...", returncode=255)
    whole_array = "0-3"
    last_member_id = r"\[4\]$"  # LSF numbers elements from 1

    @pytest.fixture
    def backend(self, fake_lsf: Path, isolated_data_dir: Path) -> LsfBackend:
        return lsf_backend(isolated_data_dir)

    def check_ended_later(self, backend: BatchBackend, job: Job) -> None:
        # once bjobs has forgotten the ended job, the event log still has it
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FAKESCHED_LSF_CLEAN_PERIOD", "0")
            listing = backend._run(backend.locate_queue_command(["x"]))
            assert job.native_id not in listing.stdout
            assert backend.locate([job]).found == {job.id: [job.native_id]}


def test_the_scheduler_output_paths(tmp_path: Path) -> None:
    backend = lsf_backend(tmp_path, work_dir="/w")
    [job, member] = case_jobs("plain")[0], case_jobs("array")[4]
    plain = job.model_copy(update={"native_id": "7"})
    member = member.model_copy(update={"native_id": "8[5]"})
    assert backend.scheduler_output_path(plain, "stderr") == "/w/jb0case0plai/lsf-7.err"
    assert backend.scheduler_output_path(member, "stdout") == "/w/jb0array0000/lsf-8_5.out"
    assert backend.scheduler_output_path(job, "stdout") is None  # not submitted


def test_the_fake_bhist_answers_as_documented(fake_lsf: Path, tmp_path: Path) -> None:
    def run(*argv: str, script: str = "true\n") -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input=script, capture_output=True, text=True, cwd=tmp_path)

    assert run("bhist", "-a").stderr == "No matching job found\n"
    run("bsub", "-J", "a_rather_long_name.jb-abc", "-H")
    run("bsub", "-J", "arr[1-2]", "-H")
    wide = run("bhist", "-a", "-w").stdout.splitlines()
    assert wide[0] == "Summary of time in seconds spent in various states:"
    assert wide[1].split() == ["JOBID", "USER", "JOB_NAME", "PEND", "PSUSP", "RUN", "USUSP",
                               "SSUSP", "UNKWN", "TOTAL"]  # fmt: skip
    assert [line.split()[:3:2] for line in wide[2:]] == [
        ["100", "a_rather_long_name.jb-abc"], ["101[1]", "arr[1]"], ["101[2]", "arr[2]"]
    ]  # fmt: skip
    narrow = run("bhist", "-a").stdout.splitlines()
    assert narrow[2].split()[2] == "*me.jb-abc"  # cut to ten characters
    assert run("bhist", "-d").returncode == 255  # nothing has finished
    assert run("bhist", "-a", "-S", "2000/1/1/00:00,2000/1/2/00:00").returncode == 255
    assert run("bhist", "-a", "-S", "2000/1/1/00:00,").returncode == 0


# -- one unreadable record is no news for its job only -----------------------------------------

# bjobs -json prints one record per job, each "{" on a line of its own; an exit reason it did
# not escape breaks one of them
BJOBS_GARBLED = """{
  "COMMAND":"bjobs",
  "JOBS":5,
  "RECORDS":[
    {
      "JOBID":"40",
      "JOBINDEX":"0",
      "STAT":"RUN",
      "EXIT_CODE":"",
      "EXIT_REASON":"",
      "PEND_REASON":""
    },
    {
      "JOBID":"41",
      "JOBINDEX":"0",
      "STAT":"EXIT",
      "EXIT_CODE":"1",
      "EXIT_REASON":"said "no"",
      "PEND_REASON":""
    },
    {
      "JOBID":"42",
      "JOBINDEX":"0",
      "STAT":"EXIT",
      "EXIT_CODE":"7",
      "EXIT_REASON":"",
      "PEND_REASON":""
    },
    {
      "JOBID":"43",
      "JOBINDEX":"0",
      "STAT":"EXIT",
      "EXIT_CODE":"x",
      "EXIT_REASON":"",
      "PEND_REASON":""
    },
    {
      "JOBID":"44",
      "JOBINDEX":"0",
      "EXIT_CODE":""
    }
  ]
}
"""


def test_an_unreadable_job_record_leaves_out_that_job_only(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    backend = lsf_backend(tmp_path)
    with caplog.at_level(logging.WARNING):
        states = backend.parse_status(BJOBS_GARBLED)
        backend.parse_status(BJOBS_GARBLED)
    assert {native: backend.to_status(s).phase for native, s in states.items()} == {
        "40": Phase.EXECUTING,
        "42": Phase.ERROR,
    }
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 3, warned
    with pytest.raises(ValueError):
        backend.parse_status(BJOBS_GARBLED[:300])  # cut short
    with pytest.raises(ValueError):
        backend.parse_status("LSF is down. Please wait ...\n")


def test_located_names_are_read_from_bjobs_and_bhist(tmp_path: Path) -> None:
    backend = lsf_backend(tmp_path)
    records = [
        {"JOBID": "5", "JOBINDEX": "0", "JOB_NAME": "run.jb-aaaa"},
        {"JOBID": "6", "JOBINDEX": "1", "JOB_NAME": "work.jb-bbbb[1]"},
        {"JOBID": "6", "JOBINDEX": "2", "JOB_NAME": "work.jb-bbbb[2]"},
        {"JOBID": "7", "JOBINDEX": "4", "JOB_NAME": "work.jb-bbbb.3[4]"},
        {"JOBID": "8", "JOBINDEX": "0", "JOB_NAME": "someone else's"},
    ]
    assert backend.parse_located(json.dumps({"COMMAND": "bjobs", "RECORDS": records})) == {
        "jb-aaaa": ["5"],
        "jb-bbbb": ["6", "7#3"],
    }
    history = (
        "Summary of time in seconds spent in various states:\n"
        "JOBID  USER   JOB_NAME        PEND   PSUSP  RUN    USUSP  SSUSP  UNKWN  TOTAL\n"
        "9      alice  my job.jb-cccc  1      0      5      0      0      0      6\n"
        "10[2]  alice  arr.jb-dddd[2]  0      0      1      0      0      0      1\n"
    )
    assert backend.parse_located_accounting(history) == {"jb-cccc": ["9"], "jb-dddd": ["10"]}
    assert located_by_member(backend, "6", "0-4")[1] == ["6[2]"]
    assert located_by_member(backend, "7#3", "0-4") == {3: ["7[4]"]}
    since = datetime(2026, 11, 29, 18, 16, 59, tzinfo=UTC)
    assert backend.locate_accounting_command(["jb-x"], since)[-2:] == ["-S", "2026/11/29/18:16,"]
    assert backend.status_environment() == {"TZ": "UTC"}
