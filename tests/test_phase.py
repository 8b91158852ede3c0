"""The phase model: finality and legal moves; a job never goes backwards."""

from __future__ import annotations

import itertools

import pytest

from jobbridge import InvalidTransitionError, Phase
from jobbridge.phase import ACTIVE_PHASES, FINAL_PHASES

RANK = {
    Phase.PENDING: 0,
    Phase.QUEUED: 1,
    Phase.HELD: 1,
    Phase.EXECUTING: 2,
    Phase.SUSPENDED: 2,
    Phase.COMPLETED: 3,
    Phase.ERROR: 3,
    Phase.ABORTED: 3,
    Phase.ARCHIVED: 4,
}


def test_final_and_active_phases() -> None:
    assert {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED} == FINAL_PHASES
    assert not FINAL_PHASES & ACTIVE_PHASES
    assert Phase.PENDING not in FINAL_PHASES | ACTIVE_PHASES
    assert all(p.is_final for p in FINAL_PHASES) and all(p.is_active for p in ACTIVE_PHASES)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(RANK, RANK)))
def test_no_legal_move_goes_backwards(old: Phase, new: Phase) -> None:
    if old.can_move_to(new):
        assert RANK[new] >= RANK[old], f"{old} -> {new} goes backwards"


def test_final_phases_lead_only_to_archived() -> None:
    for final in FINAL_PHASES:
        assert [p for p in Phase if final.can_move_to(p)] == (
            [] if final is Phase.ARCHIVED else [Phase.ARCHIVED]
        )


def test_the_ordinary_life_of_a_job_is_legal() -> None:
    life = [
        Phase.PENDING,
        Phase.QUEUED,
        Phase.HELD,
        Phase.QUEUED,
        Phase.EXECUTING,
        Phase.SUSPENDED,
        Phase.EXECUTING,
        Phase.UNKNOWN,
        Phase.COMPLETED,
        Phase.ARCHIVED,
    ]
    for old, new in itertools.pairwise(life):
        old.check_move_to(new)


def test_an_illegal_move_says_which() -> None:
    with pytest.raises(InvalidTransitionError, match="COMPLETED to EXECUTING"):
        Phase.COMPLETED.check_move_to(Phase.EXECUTING)
    assert not Phase.EXECUTING.can_move_to(Phase.QUEUED)
    assert not Phase.QUEUED.can_move_to(Phase.PENDING)
