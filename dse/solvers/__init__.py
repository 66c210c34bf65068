"""CP-SAT solvers: op placement (placement, placed) and fleet sizing (sizing)."""
from __future__ import annotations

from typing import Any

__all__ = ["time_limit_problem"]


def time_limit_problem(value: Any) -> str | None:
    """What is wrong with a CP-SAT time limit (None: nothing); NaN would make the model invalid."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return f"expected a positive number of seconds (inf = no limit), got {value!r}"
    return None
