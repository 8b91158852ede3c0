"""Grid Engine against the real test cluster (sge_qmaster, sge_execd), plus its pure parts."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, Job, JobSpec, JobStatus, Phase, ResourcesNotSupportedError
from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.sge import SgeBackend
from tests.batch_support import (
    CASES,
    FIXED_TIME,
    BackendScenarios,
    BatchScenarios,
    CountingTransport,
    Outage,
    ScriptedTransport,
    array_members,
    assert_refused,
    check_golden,
    commands_of_one_refresh,
    located_by_member,
    make_backend,
    make_engine,
    render_case,
    run_rendered_script,
    running_engine,
)
from tests.conftest import cluster_env

STATUS_COMMANDS = ("qstat", "qacct")


def sge_backend(data_dir: Path, **options: object) -> SgeBackend:
    return make_backend(SgeBackend, data_dir, **options)


def live_backend(data_dir: Path, **options: object) -> SgeBackend:
    facts = cluster_env("sge")
    return sge_backend(data_dir, sge_root=facts["SGE_ROOT"], sge_cell=facts["SGE_CELL"], **options)


@pytest.fixture
def engine(isolated_data_dir: Path) -> Iterator[Engine]:
    yield from running_engine(live_backend(isolated_data_dir), isolated_data_dir)


@pytest.mark.sge
class TestSge(BatchScenarios):
    walltime = 4
    walltime_timeout = 60


@pytest.mark.sge
def test_one_refresh_of_50_held_jobs_runs_one_status_command(isolated_data_dir: Path) -> None:
    backend = live_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="true", attributes={"sge.hold": True})
        jobs = [engine.submit(spec) for _ in range(50)]
        try:
            commands = commands_of_one_refresh(engine, counting)
            status_commands = [c for c in commands if c[0] in STATUS_COMMANDS]
            assert len(status_commands) == 1, status_commands
            assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)
        finally:
            backend._run(["qdel", *[job.native_id or "" for job in jobs]], check=False)


@pytest.mark.sge
def test_a_job_killed_outside_jobbridge_is_resolved_from_qacct(isolated_data_dir: Path) -> None:
    backend = live_backend(isolated_data_dir)
    with make_engine(backend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="sleep", arguments=["300"]))
        deadline = time.monotonic() + 60
        while engine.get(job.id).phase is not Phase.EXECUTING and time.monotonic() < deadline:
            engine.refresh()
            time.sleep(0.2)
        backend._run(["qdel", job.native_id or ""])
        # jobbridge looks only once the queue has forgotten the job (no `dr` state to see)
        while backend.parse_status(backend._run(backend.status_command([])).stdout).get(
            job.native_id or ""
        ):
            time.sleep(0.2)
        [done] = engine.wait([job.id], timeout=60)
    assert (done.phase, done.detail, done.exit_code) == (Phase.ABORTED, "CANCELLED", 137)


@pytest.mark.sge
def test_afterany_children_of_a_failed_job_run(isolated_data_dir: Path) -> None:
    with make_engine(live_backend(isolated_data_dir), isolated_data_dir) as engine:
        parent = engine.submit(JobSpec(executable="sh", arguments=["-c", "sleep 1; exit 5"]))
        child = engine.submit(
            JobSpec(executable="echo", arguments=["ran"], depends_on=[f"afterany:{parent.id}"])
        )
        assert child.is_submitted
        parent, child = engine.wait([parent.id, child.id], timeout=60)
    assert (parent.phase, parent.exit_code) == (Phase.ERROR, 5)
    assert child.phase is Phase.COMPLETED


@pytest.mark.sge
def test_array_indices_that_are_no_range_reach_the_members(isolated_data_dir: Path) -> None:
    with make_engine(live_backend(isolated_data_dir), isolated_data_dir) as engine:
        spec = JobSpec(executable="sh", arguments=["-c", 'echo "$JOBBRIDGE_ARRAY_INDEX"'])
        members = engine.submit_array(spec.replace(array="2,5,6"))
        done = engine.wait([m.id for m in members], timeout=60)
        array_job = (members[0].native_id or "").split(".")[0]
        assert [m.native_id for m in done] == [f"{array_job}.{task}" for task in (1, 2, 3)]
        outputs = [engine.read_output(m.id) for m in done]
    assert [m.phase for m in done] == [Phase.COMPLETED] * 3
    assert outputs == [b"2\n", b"5\n", b"6\n"]


@pytest.mark.sge
def test_a_capped_array_is_one_submission_and_grid_engine_keeps_the_cap(
    isolated_data_dir: Path,
) -> None:
    with make_engine(live_backend(isolated_data_dir), isolated_data_dir) as engine:
        spec = JobSpec(executable="sh", arguments=["-c", 'echo "$JOBBRIDGE_ARRAY_INDEX"'])
        members = engine.submit_array(spec.replace(array="0-3%2"))
        assert all(m.is_submitted for m in members)
        done = engine.wait([m.id for m in members], timeout=60)
        outputs = [engine.read_output(m.id) for m in done]
    assert [(m.native_id or "").split(".")[1] for m in done] == ["1", "2", "3", "4"]
    assert len({(m.native_id or "").split(".")[0] for m in done}) == 1
    assert outputs == [b"0\n", b"1\n", b"2\n", b"3\n"]


@pytest.mark.sge
def test_members_held_back_by_a_limit_go_alone_as_one_task_arrays(
    isolated_data_dir: Path,
) -> None:
    backend = live_backend(isolated_data_dir)
    backend.options = backend.options.model_copy(update={"max_jobs_in_flight": 2})
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="sh", arguments=["-c", 'echo "$JOBBRIDGE_ARRAY_INDEX"'])
        members = engine.submit_array(spec.replace(array="0-3"))
        assert [m.is_submitted for m in members] == [True, True, False, False]
        done = engine.wait([m.id for m in members], timeout=60)
        outputs = [engine.read_output(m.id) for m in done]
    assert len({(m.native_id or "").split(".")[0] for m in done}) == 4
    assert outputs == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert [m.phase for m in done] == [Phase.COMPLETED] * 4
    assert outputs == [b"0\n", b"1\n", b"2\n", b"3\n"]


# -- pure parts --------------------------------------------------------------------------------


def test_scripts_match_the_golden_files(tmp_path: Path) -> None:
    backend = sge_backend(
        tmp_path, work_dir="/scratch/jobbridge jobs", multinode_parallel_environment="mpi"
    )
    for case in CASES:
        check_golden("sge", f"{case}.sh", render_case(backend, case))
    check_golden("sge", "dependencies.sh", render_case(backend, "plain", dependencies=True))


def test_the_generated_script_passes_everything_verbatim(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path)
    seen = run_rendered_script(
        backend,
        tmp_path,
        {"JOB_ID": "42", "SGE_TASK_ID": "undefined", "SGE_O_HOST": "login", "HOSTNAME": "n1"},
    )
    assert seen["stdin"] == "from stdin\n"
    assert seen["cwd"].endswith("it's")


@pytest.mark.parametrize(
    ("array", "tasks"),
    [("0-9%3", "1-10:1"), ("1-7:3", "1-7:3"), ("4", "4-4:1"), ("1,3,5-7", "1-5:1")],
)
def test_array_indices_map_to_task_ids_and_back(tmp_path: Path, array: str, tasks: str) -> None:
    backend = sge_backend(tmp_path)
    members = array_members(JobSpec(executable="true", array=array))
    indices = [member.array_index for member in members]
    script = backend.render_script(members[0], members)
    assert f"#$ -t {tasks}" in script.splitlines()
    native = backend.member_ids("77", members)
    first, last, step = (int(n) for n in tasks.replace(":", "-").split("-"))
    assert native == [f"77.{task}" for task in range(first, last + 1, step)]
    # each task's script, with Grid Engine's variables faked, finds its jobbridge index
    header = script.split("export JOBBRIDGE_JOB_NAME")[0]
    seen = [
        subprocess.run(
            ["bash", "-c", header + 'echo "$JOBBRIDGE_ARRAY_INDEX $JOBBRIDGE_JOB_ID"'],
            env={"SGE_TASK_ID": native_id.split(".")[1], "JOB_ID": "77", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for native_id in native
    ]
    assert seen == [
        f"{index} {native_id}" for index, native_id in zip(indices, native, strict=True)
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"queue": "long; rm -rf /"}, "queue"),
        ({"account": "a b"}, "account"),
        ({"project": "p\nq"}, "project"),
        ({"reservation": "maint-window"}, "reservation"),
        ({"resources": {"nodes": 2}}, "resources.nodes"),
        ({"resources": {"gpus_per_process": 1}}, "resources.gpus_per_process"),
        ({"depends_on": ["afternotok:jb0parent0000"]}, "depends_on"),
        ({"attributes": {"sge.Bad-Name": "x"}}, "attributes.sge.Bad-Name"),
        ({"attributes": {"sge.arch": "x y"}}, "attributes.sge.arch"),
        ({"attributes": {"sge.hold": "yes"}}, "attributes.sge.hold"),
        (
            {"attributes": {"sge.h_rt": "10"}, "resources": {"walltime": 5}},
            "attributes.sge.h_rt",
        ),
    ],
)
def test_what_grid_engine_cannot_carry_is_refused(
    tmp_path: Path, changes: dict, field: str
) -> None:
    assert_refused(sge_backend(tmp_path), changes, field)


def test_resources_and_attributes_become_directives(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path, memory_resource="mem_free")
    spec = JobSpec(
        executable="x",
        name="9 lives",
        resources={"processes_per_node": 3, "memory": "3G", "walltime": 90},
        reservation="17",
        attributes={"sge.hold": True, "sge.notify": False, "sge.arch": "lx-amd64", "sge.ssd": True},
    )
    job = Job(id="jb0x", spec=spec, backend="sge", created=FIXED_TIME)
    lines = backend.directives(job, [job], [NativeDependency("12.3", "afterok")])
    assert lines == [
        "#$ -N job_9_lives.jb-jb0x",
        "#$ -o sge-$JOB_ID.out",
        "#$ -e sge-$JOB_ID.err",
        "#$ -S /bin/bash",
        "#$ -cwd",
        "#$ -V",
        "#$ -pe smp 3",
        "#$ -l mem_free=1024M",
        "#$ -l h_rt=0:01:30",
        "#$ -ar 17",
        "#$ -hold_jid 12",
        "#$ -l arch=lx-amd64",
        "#$ -h",
        "#$ -l ssd=TRUE",
    ]


def test_a_member_handed_over_alone_is_one_task(tmp_path: Path) -> None:
    spec = JobSpec(executable="x", array="0-9%2")
    member = Job(id="m", spec=spec, backend="sge", created=FIXED_TIME, array_id="a", array_index=4)
    lines = sge_backend(tmp_path).directives(member, [member], [])
    assert "#$ -t 5-5:1" in lines
    assert not [line for line in lines if line.startswith("#$ -tc")]


def test_parsing_the_job_id_qsub_prints() -> None:
    backend = sge_backend(Path("/x"))
    assert backend.parse_job_id("20\n") == "20"
    assert backend.parse_job_id("22.1-3:1\n") == "22"
    with pytest.raises(ValueError):
        backend.parse_job_id("Unable to run job\n")


ANSWERS = Path(__file__).parent / "golden" / "sge" / "answers"


def test_parsing_qstat_xml() -> None:
    # Recorded here from `qstat -xml -r -u $user` (Grid Engine 8.1.9; the schema is
    # $SGE_ROOT/util/resources/schemas/qstat/qstat.xsd): running jobs under queue_info, pending
    # ones under job_info, pending tasks of an array grouped as a range (3-6:1) or a list (1,3).
    backend = sge_backend(Path("/x"))
    states = backend.parse_status((ANSWERS / "qstat-xml-r.xml").read_text())
    assert set(states) == {
        "224.1", "224.3", "225.1", "225.2", "225.3", "225.4", "225.5", "225.6", "226", "227"
    }  # fmt: skip
    summary = {
        key: (backend.to_status(state).phase, backend.to_status(state).detail)
        for key, state in states.items()
        if key in ("224.3", "225.1", "225.2", "225.5", "226", "227")
    }
    assert summary == {
        "224.3": (Phase.ERROR, "ERROR_STATE"),
        "225.1": (Phase.ABORTED, "CANCELLED"),  # dr: qdel reached it, it is being killed
        "225.2": (Phase.EXECUTING, None),
        "225.5": (Phase.QUEUED, None),
        "226": (Phase.QUEUED, None),  # waits for job 225: a dependency, not a hold
        "227": (Phase.HELD, None),
    }
    assert states["225.2"].started == datetime(2026, 11, 21, 20, 6, 37, tzinfo=UTC)
    assert states["226"].reason == "waiting for job 225"
    assert backend.to_status(NativeState("zz")).phase is Phase.UNKNOWN
    with pytest.raises(ValueError):
        backend.parse_status("error: commlib error: got select error (Connection refused)\n")


def test_parsing_qacct() -> None:
    # Recorded here from `qacct -E -b ... -e ... -j` (Grid Engine 8.1.9): qacct(1) with -j
    # prints one record per job or array task after a line of '=', fields named as in
    # accounting(5), `failed` codes as sge_status(5) lists them, then a usage summary.
    backend = sge_backend(Path("/x"))
    states = {
        **backend.parse_accounting((ANSWERS / "qacct-ended-19-58.txt").read_text()),
        **backend.parse_accounting((ANSWERS / "qacct-ended-20-06.txt").read_text()),
    }
    summary = {
        key: (backend.to_status(states[key]).phase, backend.to_status(states[key]).detail,
              states[key].exit_code)
        for key in ("7", "9.1", "9.8", "11", "12", "224.1")
    }  # fmt: skip
    assert summary == {
        "7": (Phase.ERROR, None, 3),
        "9.1": (Phase.COMPLETED, None, 0),
        "9.8": (Phase.ABORTED, "CANCELLED", 137),  # qdel of a running task
        "11": (Phase.ERROR, "TIMEOUT", 137),  # -l h_rt=3
        "12": (Phase.ABORTED, "CANCELLED", 137),
        "224.1": (Phase.ERROR, None, None),  # exit 100 is the script's word, not the program's
    }
    assert len([key for key in states if key.startswith("9.")]) == 9
    assert states["7"].ended == datetime(2026, 11, 21, 19, 58, 18, tzinfo=UTC)
    assert states["11"].reason == "failed 37  : qmaster enforced h_rt, h_cpu, or h_vmem limit"


@pytest.mark.parametrize(
    ("failed", "category", "wallclock", "word"),
    [
        ("37", "-l h_vmem=1G", "3s", "OUT_OF_MEMORY"),
        ("37", "-l h_rt=60,h_vmem=1G", "61s", "TIMEOUT"),
        ("37", "-l h_rt=1:00:00,h_vmem=1G", "20s", "OUT_OF_MEMORY"),
        ("19", "NONE", "0s", "NODE_FAIL"),
        ("28", "NONE", "0s", "START_FAILED"),
        ("100", "NONE", "5s", "KILLED"),
    ],
)
def test_failed_codes_name_what_happened(
    failed: str, category: str, wallclock: str, word: str
) -> None:
    record = (
        f"jobnumber 5\ntaskid undefined\nfailed {failed} : x\nexit_status 139\n"
        f"ru_wallclock {wallclock}\ncategory {category}\n"
    )
    assert sge_backend(Path("/x")).parse_accounting(record)["5"].word == word


def test_commands_carry_the_cells_environment(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path, sge_root="/opt/sge", sge_cell="site", user="*")
    assert backend.command_environment() == {"SGE_ROOT": "/opt/sge", "SGE_CELL": "site"}
    assert backend.status_environment() == {"TZ": "UTC"}
    assert backend.status_command(["1"]) == ["qstat", "-xml", "-r", "-u", "*"]
    since = datetime(2026, 11, 21, 19, 58, 5, tzinfo=UTC)
    assert backend.accounting_query(since) == ["qacct", "-E", "-b", "202611211958.05", "-j"]


def scripted_cluster(
    backend: SgeBackend, qstat: str, qacct: str = "", files: dict[str, bytes] | None = None
) -> ScriptedTransport:
    """The backend's transport from now on: answers qstat and qacct with recorded text and
    has these exit-code files."""
    cluster = ScriptedTransport({"qstat": qstat, "qacct": qacct, "qdel": ""}, files)
    backend.transport = cluster  # type: ignore[assignment]
    return cluster


def _waiting(*jobs: str) -> str:
    """A qstat -xml answer listing these jobs as pending."""
    return f"<job_info><job_info>{''.join(jobs)}</job_info></job_info>"


def _pending(number: str, state: str, predecessor: str | None = None) -> str:
    waits = f"<predecessor_jobs>{predecessor}</predecessor_jobs>" if predecessor else ""
    return (
        f"<job_list state='pending'><JB_job_number>{number}</JB_job_number>"
        f"<state>{state}</state>{waits}</job_list>"
    )


def _job(job_id: str, native_id: str, phase: Phase = Phase.QUEUED, **spec: object) -> Job:
    return Job(
        id=job_id,
        spec=JobSpec(executable="x", **spec),  # type: ignore[arg-type]
        backend="sge",
        created=FIXED_TIME,
        queued=FIXED_TIME,
        phase=phase,
        native_id=native_id,
    )


def test_a_failed_job_in_the_error_state_takes_its_afterok_dependents_along(
    tmp_path: Path,
) -> None:
    backend = sge_backend(tmp_path)
    parent = _job("parent", "20", Phase.EXECUTING)
    needs_success = _job("child", "21", depends_on=["afterok:parent"])
    needs_end = _job("after", "22", depends_on=["afterany:parent"])
    waiting = [_pending("21", "hqw", "20"), _pending("22", "hqw", "20")]
    qstat = _waiting(_pending("20", "Eqw"), *waiting)
    files = {backend.exit_code_path(parent): b"2 100 101\n"}
    cluster = scripted_cluster(backend, qstat, files=files)
    answers = backend.status([parent, needs_success, needs_end])
    assert (answers["parent"].phase, answers["parent"].exit_code) == (Phase.ERROR, 2)
    assert (answers["child"].phase, answers["child"].detail) == (
        Phase.ABORTED,
        "DEPENDENCY_NEVER_SATISFIED",
    )
    assert answers["after"].phase is Phase.QUEUED
    # the dependent goes first: deleting the failed job releases whatever still waits for it
    assert [c for c in cluster.commands if c[0] != "qstat"] == [["qdel", "21", "20"]]


def test_a_job_jobbridge_held_stays_held_while_it_also_waits_for_another(
    tmp_path: Path,
) -> None:
    backend = sge_backend(tmp_path)
    held = _job("held", "31", Phase.HELD, depends_on=["afterok:other"])
    waiting = _job("waiting", "32", depends_on=["afterok:other"])
    qstat = _waiting(_pending("31", "hqw", "30"), _pending("32", "hqw", "30"))
    scripted_cluster(backend, qstat)
    answers = backend.status([held, waiting])
    assert "held" not in answers
    assert answers["waiting"].phase is Phase.QUEUED


def test_a_job_gone_without_an_exit_code_file_is_looked_up_once_since_last_seen(
    tmp_path: Path,
) -> None:
    backend = sge_backend(tmp_path)
    job = _job("gone", "11", Phase.EXECUTING)
    running = "<job_info><queue_info><job_list><JB_job_number>11</JB_job_number><state>r</state>"
    running += "</job_list></queue_info></job_info>"
    cluster = scripted_cluster(backend, running)
    assert backend.status([job])["gone"].phase is Phase.EXECUTING
    seen = time.time()
    cluster.answers["qstat"] = "<job_info></job_info>"
    cluster.answers["qacct"] = (ANSWERS / "qacct-ended-19-58.txt").read_text()
    answers = backend.status([job])
    assert (answers["gone"].phase, answers["gone"].detail) == (Phase.ERROR, "TIMEOUT")
    [qacct] = [c for c in cluster.commands if c[0] == "qacct"]
    since = datetime.strptime(qacct[3], "%Y%m%d%H%M.%S").replace(tzinfo=UTC).timestamp()
    assert seen - 125 < since < seen - 115  # when qstat last listed it, less the clock skew


def test_an_error_state_without_an_exit_code_file_waits_then_is_an_error(
    tmp_path: Path,
) -> None:
    backend = sge_backend(tmp_path, accounting_delay=0.2)
    job = _job("stuck", "40")
    cluster = scripted_cluster(backend, _waiting(_pending("40", "Eqw")))
    assert backend.status([job]) == {}  # its exit-code file may still be on its way
    time.sleep(0.3)
    assert (backend.status([job])["stuck"].detail) == "ERROR_STATE"
    assert cluster.commands[-1] == ["qdel", "40"]


# -- one unreadable record is no news for its job only -----------------------------------------


def _running(number: str, name: str = "j", state: str = "r", extra: str = "") -> str:
    return (
        f"<job_list state='running'><JB_job_number>{number}</JB_job_number>"
        f"<JB_name>{name}</JB_name><state>{state}</state>{extra}</job_list>"
    )


QSTAT_GARBLED = (
    "<?xml version='1.0'?>\n<job_info><queue_info>"
    + _running("50")
    + _running("51", name="a & b")  # not XML
    + _running("52", state="")  # no state
    + _running("53", extra="<tasks>x-y</tasks>")  # no task range
    + "</queue_info><job_info>"
    + _pending("54", "qw")
    + "</job_info></job_info>\n"
)
QACCT_GARBLED = "".join(
    f"==============================================================\n"
    f"jobname      j\njobnumber    {number}\ntaskid       undefined\n"
    f"failed       {failed}\nexit_status  {status}\n"
    for number, failed, status in [("60", "0", "0"), ("61", "x", "0"), ("62", "0", "lots"),
                                   ("63", "0", "2")]
)  # fmt: skip


def test_an_unreadable_qstat_or_qacct_record_leaves_out_that_job_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = sge_backend(Path("/x"))
    with caplog.at_level(logging.WARNING):
        queue = backend.parse_status(QSTAT_GARBLED)
        accounted = backend.parse_accounting(QACCT_GARBLED)
        backend.parse_status(QSTAT_GARBLED)
        backend.parse_accounting(QACCT_GARBLED)
    assert {native: backend.to_status(s).phase for native, s in queue.items()} == {
        "50": Phase.EXECUTING,
        "54": Phase.QUEUED,
    }
    assert {native: s.exit_code for native, s in accounted.items()} == {"60": 0, "63": 2}
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 5, warned  # once per job, though read twice
    for whole in ("error: commlib error: got select error\n", QSTAT_GARBLED[:200]):
        with pytest.raises(ValueError):
            backend.parse_status(whole)


def test_an_unreadable_exit_code_file_leaves_out_that_job_only(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path)
    good, garbled = _job("good", "70", Phase.EXECUTING), _job("garbled", "71", Phase.EXECUTING)
    files = {
        backend.exit_code_path(good): b"0 100 101\n",
        backend.exit_code_path(garbled): b"x\n",
    }
    # the garbled file is no news; what the accounting says of that job still counts
    qacct = "==\njobnumber 71\ntaskid undefined\nfailed 0\nexit_status 0\n"
    scripted_cluster(backend, "<job_info></job_info>", qacct, files=files)
    answers = backend.status([good, garbled])
    summary = {
        job_id: (status.phase, status.exit_code, status.ended is not None)
        for job_id, status in answers.items()
        if isinstance(status, JobStatus)
    }
    assert summary == {"good": (Phase.COMPLETED, 0, True), "garbled": (Phase.COMPLETED, 0, False)}


# -- finding submissions by their mark ----------------------------------------------------------


def test_located_names_are_read_from_qstat_and_qacct() -> None:
    backend = sge_backend(Path("/x"))
    listing = (
        "<job_info><queue_info>"
        + _running("5", name="run.jb-aaaa")
        + _running("6", name="work.jb-bbbb", extra="<tasks>1</tasks>")
        + _running("6", name="work.jb-bbbb", extra="<tasks>2</tasks>")
        + _running("8", name="someone_else")
        + "</queue_info><job_info>"
        + _pending("7", "qw").replace("<state>", "<JB_name>work.jb-bbbb.3</JB_name><state>")
        + "</job_info></job_info>"
    )
    assert backend.parse_located(listing) == {"jb-aaaa": ["5"], "jb-bbbb": ["6", "7#3"]}
    assert backend.parse_located_accounting(
        "==\njobname      run.jb-aaaa\njobnumber    9\ntaskid       undefined\nfailed 0\n"
        "==\njobname      work.jb-bbbb.3\njobnumber    7\ntaskid       4\nfailed 0\n"
    ) == {"jb-aaaa": ["9"], "jb-bbbb": ["7#3"]}
    assert located_by_member(backend, "6", "0-4")[1] == ["6.2"]
    assert located_by_member(backend, "7#3", "0-4") == {3: ["7.4"]}
    named = sge_backend(Path("/x"), user="alice")
    since = datetime(2026, 11, 21, 19, 58, 5, tzinfo=UTC)
    assert named.locate_accounting_command(["jb-a"], since) == [
        "qacct", "-o", "alice", "-E", "-b", "202611211958.05", "-j"
    ]  # fmt: skip
    assert backend.locate_accounting_command(["jb-a"], since) == backend.accounting_query(since)


def test_names_carry_the_mark_and_never_start_with_a_digit(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path)
    job = Job(id="abc", spec=JobSpec(executable="x", name="9" * 80), backend="sge",
              created=FIXED_TIME)  # fmt: skip
    [name] = [line for line in backend.directives(job, [job], []) if line.startswith("#$ -N")]
    assert name == "#$ -N job_" + "9" * 53 + ".jb-abc" and len(name) - len("#$ -N ") == 64
    member = job.model_copy(
        update={"array_id": "arr", "array_index": 7, "spec": job.spec.replace(array="0-9")}
    )
    [alone] = [line for line in backend.directives(member, [member], []) if "-N" in line]
    assert alone.endswith(".jb-arr.7")
    with pytest.raises(ResourcesNotSupportedError, match="id"):
        backend.directives(job.model_copy(update={"id": "a/b"}), [job], [])


def test_the_scheduler_output_paths(tmp_path: Path) -> None:
    backend = sge_backend(tmp_path, work_dir="/w")
    job = _job("plain", "80")
    member = _job("m", "81.4").model_copy(update={"array_id": "arr", "array_index": 3})
    assert backend.scheduler_output_path(job, "stderr") == "/w/plain/sge-80.err"
    assert backend.scheduler_output_path(member, "stdout") == "/w/arr/sge-81.4.out"
    assert (
        backend.scheduler_output_path(job.model_copy(update={"native_id": None}), "stdout") is None
    )


@pytest.mark.sge
class TestSgeBackend(BackendScenarios):
    hold_attribute = "sge.hold"
    queue_down = Outage("qstat", "error: commlib error: got select error (Connection refused)")
    accounting_down = Outage("qacct", "error: can't open accounting file")
    whole_array = "2,5,6"
    last_member_id = r"\.3$"  # not a range: tasks 1-3, looked up in the script
    lone_array = "0-2"

    @pytest.fixture
    def backend(self, isolated_data_dir: Path) -> SgeBackend:
        return live_backend(isolated_data_dir)

    def wait_until_searchable(self, backend: BatchBackend, job: Job) -> None:
        deadline = time.monotonic() + 60
        while backend._run(["qacct", "-j", job.native_id or ""], check=False).returncode != 0:
            assert time.monotonic() < deadline, "the job never reached the accounting"
            time.sleep(0.5)
