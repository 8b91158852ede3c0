"""Exactly once through faults, against the real SLURM test cluster: submissions whose answer
is lost, slow or killed submitters, bad exit-code files, daemons going away, lying and
lagging schedulers, a full disk, two engines on one store.

Every test counts the native jobs its jobs made, in squeue and sacct, by their names, and
checks that each jobbridge job has at most one and that each one is tracked."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, Job, JobSpec, Phase, Store
from tests.conftest import cluster_env
from tests.faults import (
    REFRESHER,
    SUBMITTER,
    EngineProcess,
    FaultBin,
    Rule,
    Setup,
    Tally,
    cancel_leftovers,
    daemon_stopped,
    describe,
    ensure_daemons_up,
    fill,
    history,
    keep_refreshing,
    marker,
    refresh_until,
    run_real,
    settle,
    slurm_native_jobs,
    slurm_queue_state,
    slurm_record,
    small_tmpfs,
    spec_json,
    submit_in_threads,
    tag,
    tally,
    wait_until,
)

pytestmark = pytest.mark.slurm

TOOLS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")
SETTLE = 120.0
"""Longest wait for jobs to reach their end (the cluster may be busy with others' jobs)."""


@pytest.fixture(scope="module", autouse=True)
def daemons_up() -> None:
    """What an earlier, killed run left stopped is started again first."""
    cluster_env("slurm")
    ensure_daemons_up()


@pytest.fixture
def mark() -> str:
    return marker()


@pytest.fixture
def since() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FaultBin:
    cluster_env("slurm")
    wrappers = FaultBin(tmp_path / "faults", TOOLS)
    monkeypatch.setenv("PATH", wrappers.path_with_bin())
    return wrappers


@pytest.fixture
def setup(isolated_data_dir: Path, mark: str) -> Iterator[Setup]:
    cluster_env("slurm")
    yield Setup(isolated_data_dir, f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    cancel_leftovers("slurm", mark)


def spec(mark: str, index: int, *command: str) -> JobSpec:
    program, *arguments = command or ("true",)
    return JobSpec(name=f"{mark}-{index}", executable=program, arguments=arguments)


def exactly_once(store: Store, ids: list[str], mark: str, since: datetime) -> Tally:
    counted = tally(store.get_many(ids), slurm_native_jobs(since, mark))
    counted.assert_exactly_once()
    return counted


def assert_completed(jobs: list[Job]) -> None:
    wrong = [job for job in jobs if job.phase is not Phase.COMPLETED]
    assert not wrong, f"not COMPLETED:\n{describe(wrong)}"


def test_every_submission_carries_its_mark(setup: Setup, mark: str, since: datetime) -> None:
    with setup.engine() as engine:
        job = engine.submit(spec(mark, 0))
        assert engine.backend().tag(job) == f"jb-{job.id}"  # type: ignore[attr-defined]
        [done] = settle(engine, [job.id], SETTLE)
    counted = exactly_once(engine.store, [job.id], mark, since)
    assert counted.natives[job.id], "the job's native job was not found by its name"
    assert not counted.untagged, f"native job names without their mark: {counted.untagged}"
    assert all(n.name.endswith("." + tag(done)) for n in counted.natives[job.id])


def test_a_submission_whose_answer_is_lost_is_found_not_repeated(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    setup.options["command_timeout"] = 2
    hang = faults.hang_after("sbatch", 30, times=3)
    with setup.engine() as engine:
        jobs = [engine.submit(spec(mark, i)) for i in range(3)]
        assert hang.fired == 3, "sbatch did not hang after creating the jobs"
        final = [job for job in jobs if job.phase.is_final]
        assert not final, f"an unknown outcome was made final:\n{describe(final)}"
        done = settle(engine, [job.id for job in jobs], SETTLE)
    assert_completed(done)
    assert len(faults.calls("sbatch")) == 3, "a submission that took effect was repeated"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def test_a_definite_refusal_ends_the_job_at_once(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    faults.fail(
        "sbatch",
        "sbatch: error: Batch job submission failed: Invalid account or account/partition"
        " combination specified",
        times=1,
    )
    with setup.engine() as engine:
        job = engine.submit(spec(mark, 0))
        assert (job.phase, job.detail) == (Phase.ERROR, "SUBMIT_FAILED"), describe([job])
        keep_refreshing(engine, 1)
        assert engine.get(job.id).phase is Phase.ERROR
    assert len(faults.calls("sbatch")) == 1, "a refused submission was tried again"
    assert not slurm_native_jobs(since, mark)


def test_a_passing_refusal_is_retried_with_back_off(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    failures = 4
    faults.fail(
        "sbatch",
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
        " (connect failure)",
        times=failures,
    )
    delay, cap = setup.settings["retry_delay"], setup.settings["max_backoff"]
    with setup.engine() as engine:
        job = engine.submit(spec(mark, 0))
        assert job.phase is Phase.QUEUED and not job.is_submitted, describe([job])
        assert "retry" in (job.message or "").lower(), f"no word of a retry: {describe([job])}"
        [done] = settle(engine, [job.id], SETTLE)
    assert_completed([done])
    calls = [call.time for call in faults.calls("sbatch")]
    assert len(calls) == failures + 1, f"{len(calls)} submissions for {failures} refusals"
    pauses = [later - earlier for earlier, later in itertools.pairwise(calls)]
    wanted = [min(cap, delay * 2**n) for n in range(failures)]
    assert all(p >= 0.9 * w for p, w in zip(pauses, wanted, strict=True)), (
        f"pauses between submissions {[round(p, 2) for p in pauses]} s; retry_delay {delay}"
        f" doubling up to max_backoff {cap} means at least {wanted}"
    )
    assert all(p <= cap + 1.5 for p in pauses), f"back-off beyond max_backoff: {pauses}"
    exactly_once(engine.store, [job.id], mark, since)


def test_a_slow_submission_is_not_taken_for_dead_by_another_engine(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    setup.options["command_timeout"] = 15
    claim_timeout = setup.settings["claim_timeout"]
    faults.delay("sbatch", claim_timeout + 3, times=1)
    with EngineProcess(setup, REFRESHER, "40") as other:
        other.wait_ready()
        with setup.engine() as engine:
            started = time.monotonic()
            job = engine.submit(spec(mark, 0))
            assert time.monotonic() - started > claim_timeout, "sbatch was not slow"
            assert job.native_id is not None, f"the slow submission did not finish: {job}"
            done = settle(engine, [job.id], SETTLE)
        other.kill()
    assert_completed(done)
    phases = history(engine.store, job.id)
    assert not [p for p in phases if p[0] is Phase.ERROR], phases
    assert len(faults.calls("sbatch")) == 1, "the other engine submitted the job again"
    exactly_once(engine.store, [job.id], mark, since)


def test_a_submitter_killed_right_after_sbatch_accepted_is_adopted(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    kill = faults.kill_caller("sbatch", times=1)
    with EngineProcess(setup, SUBMITTER, spec_json([spec(mark, 0), spec(mark, 1)])) as submitter:
        code = submitter.wait(60)
    assert code == -9 and kill.fired == 1, f"the submitter was not killed: {submitter.stderr}"
    store = Store(setup.database_url)
    [job] = store.find(name=f"{mark}-0")
    assert job.native_id is None, "the submitter died before it could record the native id"
    [native] = slurm_native_jobs(since, mark)
    with setup.engine() as engine:
        [done] = settle(engine, [job.id], SETTLE)
    assert_completed([done])
    assert done.native_id == native.native_id
    assert len(faults.calls("sbatch")) == 1, "the job was submitted again"
    assert not store.find(name=f"{mark}-1"), "the submitter went on after it was killed"
    exactly_once(store, [job.id], mark, since)
    store.close()


@pytest.mark.parametrize("content", [b"", b"\x00garbled \xff\n"], ids=["empty", "garbled"])
def test_a_bad_exit_code_file_is_no_news_for_that_job_only(
    setup: Setup, mark: str, since: datetime, content: bytes
) -> None:
    with setup.engine() as engine:
        jobs = [engine.submit(spec(mark, i)) for i in range(3)]
        backend = engine.backend()
        bad = jobs[0]
        exit_file = Path(backend.exit_code_path(bad))  # type: ignore[attr-defined]
        wait_until(
            lambda: _ended_in_squeue(since, mark, 3),
            SETTLE,
            "the jobs did not end in SLURM",
        )
        exit_file.write_bytes(content)
        engine.refresh(force=True)
        after_one = engine.store.get_many([job.id for job in jobs])
        assert_completed(after_one[1:])
        assert not after_one[0].phase.is_final or after_one[0].phase is Phase.COMPLETED
        done = settle(engine, [job.id for job in jobs], SETTLE)
    assert_completed(done)
    assert done[0].exit_code == 0, "the bad file's job should take its exit code from sacct"
    for job in jobs:
        unknown = [p for p in history(engine.store, job.id) if p[0] is Phase.UNKNOWN]
        assert not unknown, f"job {job.id} lost sight: {unknown}"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def slurmctld_answers() -> bool:
    """Whether the controller answers (someone may have started it again meanwhile)."""
    return "UP" in run_real(["scontrol", "ping"], check=False)


def _ended_in_squeue(since: datetime, mark: str, count: int) -> bool:
    states = [native.state for native in slurm_native_jobs(since, mark)]
    return len(states) >= count and all(state == "COMPLETED" for state in states)


def test_with_slurmdbd_down_only_the_job_that_needs_sacct_waits(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    lost_after = setup.options["lost_after"]
    with setup.engine() as engine:
        needy = engine.submit(spec(mark, 0))
        wait_until(lambda: _ended_in_squeue(since, mark, 1), SETTLE, "the first job did not end")
        # neither the queue nor an exit-code file tells: only sacct knows how it ended
        Path(engine.backend().exit_code_path(needy)).unlink()  # type: ignore[attr-defined]
        faults.hide("squeue", slurm_record(needy.native_id or "?"))
        with daemon_stopped("slurmdbd"):
            down = time.monotonic()
            others = [engine.submit(spec(mark, i, "sleep", "1")) for i in (1, 2)]
            other_ids = [other.id for other in others]

            def others_ended() -> bool:
                now = engine.store.get_many(other_ids)
                return all(job.phase is Phase.COMPLETED for job in now)

            refresh_until(
                engine,
                lambda: others_ended() and time.monotonic() - down > lost_after + 1,
                SETTLE,
                lambda: (
                    "the jobs that squeue explains were not brought to their end while"
                    f" slurmdbd was down:\n{describe(engine.store.get_many(other_ids))}"
                ),
            )
            during = engine.get(needy.id)
            assert not during.phase.is_final, (
                f"a failing sacct was taken as evidence: {describe([during])}"
            )
        [done] = settle(engine, [needy.id], SETTLE)
    assert_completed([done])
    assert done.exit_code == 0
    exactly_once(engine.store, [needy.id, *(o.id for o in others)], mark, since)


def test_a_job_hidden_by_accounting_lag_is_not_lost_by_a_fresh_engine(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    lost_after = setup.options["lost_after"]
    with setup.engine() as first:
        job = first.submit(spec(mark, 0, "sleep", str(lost_after + 8)))
        refresh_until(
            first,
            lambda: first.get(job.id).phase is Phase.EXECUTING,
            SETTLE,
            "the job did not start",
        )
    started = time.monotonic()
    # old enough that counting the grace from its start would end it at once
    wait_until(
        lambda: time.monotonic() - started > lost_after + 1, lost_after + 5, "time stood still"
    )
    hidden_for = lost_after - 1
    pattern = slurm_record(job.native_id or "?")
    hides = [
        faults.hide(tool, pattern, seconds_in_force=hidden_for) for tool in ("squeue", "sacct")
    ]
    with setup.engine() as fresh:
        end = time.monotonic() + hidden_for
        while time.monotonic() < end:
            fresh.refresh()
            seen = fresh.get(job.id)
            assert not seen.phase.is_final, (
                f"ended while only hidden for less than lost_after: {describe([seen])}"
            )
            time.sleep(0.2)
        assert hides[0].fired >= setup.options["lost_after_misses"], "squeue never hid the job"
        [done] = settle(fresh, [job.id], SETTLE)
    assert_completed([done])
    exactly_once(fresh.store, [job.id], mark, since)


def test_alarming_words_seen_once_in_squeue_end_no_job(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    words = ["PREEMPTED", "BOOT_FAIL", "SPECIAL_EXIT", "OUT_OF_MEMORY"]
    with setup.engine() as engine:
        jobs = [engine.submit(spec(mark, i, "sleep", "3")) for i in range(len(words))]
        lies = [(word, job, "RUNNING") for word, job in zip(words, jobs, strict=True)]
        rules = tell_when(engine, faults, lies, ["squeue"])
        done = settle(engine, [job.id for job in jobs], SETTLE)
    problems = [
        f"{word}: ended {final.phase}/{final.detail} exit {final.exit_code}:"
        f" {history(engine.store, final.id)}"
        for word, final in zip(words, done, strict=True)
        if final.phase is not Phase.COMPLETED or final.exit_code != 0
    ]
    assert not problems, "\n".join(problems)
    assert all(rule.fired == 1 for rule in rules), "a lie was not told"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def test_requeueable_words_told_by_queue_and_accounting_end_nothing(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    """SLURM may run a preempted or failed-over job again: such a word, even when squeue and
    sacct agree on it, shows as SUSPENDED (SPECIAL_EXIT: HELD) with the word as detail, and
    the job goes on to its real end."""
    requeueable = ["PREEMPTED", "BOOT_FAIL", "NODE_FAIL"]
    with setup.engine() as engine:
        running = [engine.submit(spec(mark, i, "sleep", "3")) for i in range(len(requeueable))]
        waiting = engine.submit(
            spec(mark, 9, "sleep", "1").replace(attributes={"slurm.begin": "now+8"})
        )
        lies = [(word, job, "RUNNING") for word, job in zip(requeueable, running, strict=True)]
        lies.append(("SPECIAL_EXIT", waiting, "PENDING"))
        rules = tell_when(engine, faults, lies, ["squeue", "sacct"])
        jobs = [*running, waiting]
        done = settle(engine, [job.id for job in jobs], SETTLE)
    expected = {**dict.fromkeys(requeueable, Phase.SUSPENDED), "SPECIAL_EXIT": Phase.HELD}
    problems = []
    for (word, phase), final in zip(expected.items(), done, strict=True):
        phases = history(engine.store, final.id)
        if final.phase is not Phase.COMPLETED or final.exit_code != 0:
            problems.append(f"{word}: ended {final.phase}/{final.detail}: {phases}")
        elif (phase, word) not in [p[:2] for p in phases]:
            problems.append(f"{word}: never showed {phase}/{word}: {phases}")
    assert not problems, "\n".join(problems)
    assert all(rule.fired == 1 for rule in rules if rule.tool == "squeue"), "a lie was not told"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def tell_when(
    engine: Engine, faults: FaultBin, lies: list[tuple[str, Job, str]], tools: list[str]
) -> list[Rule]:
    """For each (word, job, state): refresh until squeue shows the job in ``state``, then
    have ``tools`` call it ``word`` instead, once (squeue first in ``tools``)."""
    rules: dict[str, list[Rule]] = {}

    def told() -> bool:
        engine.refresh()
        for word, job, state in lies:
            if word not in rules and slurm_queue_state(job.native_id or "?") == state:
                pattern = slurm_record(job.native_id or "?")
                rules[word] = [
                    faults.lie(tool, said, word, pattern=pattern, times=1)
                    for tool in tools
                    # the accounting may lag behind the queue by a state
                    for said in ([state] if tool == "squeue" else ["PENDING", "RUNNING"])
                ]
        return len(rules) == len(lies)

    wait_until(told, SETTLE, lambda: f"the lies were not all told: only {sorted(rules)}", 0.1)
    refresh_until(engine, lambda: all(r[0].fired for r in rules.values()), 30, "squeue told no lie")
    return [rule for word, _, _ in lies for rule in rules[word]]


@pytest.mark.parametrize(
    "command_timeout",
    [3, 15],
    ids=["sbatch-times-out", "sbatch-gives-up"],
)
def test_with_slurmctld_down_submissions_wait_and_happen_once(
    setup: Setup, mark: str, since: datetime, command_timeout: int
) -> None:
    """With the controller gone, sbatch either outlasts the command timeout (an unknown
    outcome: looked for later) or gives up saying it cannot reach the controller (a passing
    failure: retried). Either way the jobs wait QUEUED, saying why, and run once each."""
    setup.options["command_timeout"] = command_timeout
    with setup.engine() as engine:
        with daemon_stopped("slurmctld"):
            jobs = submit_in_threads(engine, [spec(mark, i) for i in range(3)], threads=3)
            if command_timeout < 10:  # searches for the jobs fail too, and decide nothing
                keep_refreshing(engine, 2)
            now = engine.store.get_many([job.id for job in jobs])
            waiting = [j for j in now if j.phase is Phase.QUEUED and not j.is_submitted]
            assert len(waiting) == 3, (
                f"not all waiting for the controller:\n{describe(now)}\n"
                f"slurmctld answering now: {slurmctld_answers()}"
            )
            silent = [j for j in now if not j.message]
            assert not silent, f"QUEUED without a word on why:\n{describe(silent)}"
            if command_timeout > 10:  # sbatch said it could not reach the controller
                unexplained = [j for j in now if "retry" not in (j.message or "").lower()]
                assert not unexplained, f"no word of a retry:\n{describe(unexplained)}"
        done = settle(engine, [job.id for job in jobs], SETTLE)
    assert_completed(done)
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def test_a_full_disk_delays_submissions_and_fails_none(
    setup: Setup, tmp_path: Path, mark: str, since: datetime
) -> None:
    space = contextlib.ExitStack()
    try:
        setup.jobs_dir = space.enter_context(small_tmpfs(tmp_path / "small"))
    except PermissionError as error:
        pytest.skip(f"no way to run out of space here: {error}")
    with space:
        filler = fill(setup.jobs_dir)
        with setup.engine() as engine:
            jobs = [engine.submit(spec(mark, i)) for i in range(3)]
            keep_refreshing(engine, 2)
            now = engine.store.get_many([job.id for job in jobs])
            waiting = [j for j in now if j.phase is Phase.QUEUED and not j.is_submitted]
            assert len(waiting) == 3, f"a full disk did not just delay:\n{describe(now)}"
            unexplained = [j for j in now if "retry" not in (j.message or "").lower()]
            assert not unexplained, f"no word of a retry:\n{describe(unexplained)}"
            filler.unlink()
            done = settle(engine, [job.id for job in jobs], SETTLE)
        assert_completed(done)
        exactly_once(engine.store, [job.id for job in jobs], mark, since)


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_two_engines_on_one_postgres_store_submit_each_job_once(
    setup: Setup, faults: FaultBin, store_url: str, mark: str, since: datetime
) -> None:
    setup.database_url = store_url
    setup.options["max_jobs_in_flight"] = 2
    faults.delay("sbatch", 0.3)  # a wider window for the two engines to meet in
    with setup.engine() as one, setup.engine() as two:
        one.start_background()
        two.start_background()
        ids = [one.submit(spec(mark, i)).id for i in range(6)]
        ids += [two.submit(spec(mark, i)).id for i in range(6, 12)]
        done = settle(one, ids, 120)
    assert_completed(done)
    assert len(faults.calls("sbatch")) == len(ids), "a job was submitted more than once"
    exactly_once(one.store, ids, mark, since)
