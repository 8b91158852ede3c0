"""How jobbridge's array indices become Grid Engine task ids, which start at 1 and come
only as evenly stepped ranges."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from jobbridge.spec import ArraySpec

__all__ = ["TaskNumbers"]


@dataclass(frozen=True)
class TaskNumbers:
    """Grid Engine numbers array tasks from 1 in one range with a step (``-t 1-10:1``).
    jobbridge's indices that form such a range, shifted up when they start below 1, become
    task ids directly; any other set is numbered 1..N and looked up in the script."""

    first: int
    last: int
    step: int
    shift: int
    table: tuple[int, ...] | None

    @classmethod
    def of(cls, array: ArraySpec) -> TaskNumbers:
        indices = array.indices
        step = indices[1] - indices[0] if len(indices) > 1 else 1
        if all(b - a == step for a, b in pairwise(indices)):
            shift = max(0, 1 - indices[0])
            return cls(indices[0] + shift, indices[-1] + shift, step, shift, None)
        return cls(1, len(indices), 1, 0, indices)

    @property
    def switch_value(self) -> str:
        return f"{self.first}-{self.last}:{self.step}"

    def task_ids(self) -> dict[int, int]:
        """Task id by jobbridge index."""
        if self.table is not None:
            return {index: number for number, index in enumerate(self.table, start=1)}
        return {task - self.shift: task for task in range(self.first, self.last + 1, self.step)}

    @property
    def index_expression(self) -> str:
        if self.table is not None:
            return '"${jobbridge_indices[SGE_TASK_ID - 1]}"'
        if self.shift:
            return f'"$((SGE_TASK_ID - {self.shift}))"'
        return '"$SGE_TASK_ID"'
