"""Per-task running reward moments for EMA-GRPO (OneThinker): trainer state, checkpointed.

Why a class and not a tensor: the tasks (a row's ``datasource``) are open-ended strings met as
training goes; the state is a small ``{task: (m1, m2)}`` of Python floats, which JSON stores
exactly (``repr`` round-trips a float), so a resumed run continues with bit-identical moments.
"""

from __future__ import annotations

import math

from lmmr1.errors import LmmR1Error

EMA_DECAY = 0.99  # m <- 0.99 m + 0.01 x (OneThinker)
VAR_FLOOR = 1e-6  # sigma_task = sqrt(max(m2 - m1^2, 1e-6))


class TaskMoments:
    """Exponential moving averages of mean(r) and mean(r^2) per task.

    The first batch of a task sets its moments to that batch's values (no bias towards 0: with a
    zero start, sigma would be ~0.1 of the real spread for ~100 steps and every group would fall
    back to its own std); after that, ``m <- decay * m + (1 - decay) * x``.
    """

    def __init__(self, decay: float = EMA_DECAY):
        if not 0.0 <= decay < 1.0:
            raise LmmR1Error(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.moments: dict[str, tuple[float, float]] = {}

    def update(self, task: str, mean_r: float, mean_r2: float) -> None:
        if task not in self.moments:
            self.moments[task] = (float(mean_r), float(mean_r2))
            return
        m1, m2 = self.moments[task]
        d = self.decay
        self.moments[task] = (d * m1 + (1 - d) * float(mean_r), d * m2 + (1 - d) * float(mean_r2))

    def sigma(self, task: str) -> float:
        m1, m2 = self.moments[task]
        return math.sqrt(max(m2 - m1 * m1, VAR_FLOOR))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "moments": {k: [m1, m2] for k, (m1, m2) in self.moments.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.moments = {str(k): (float(v[0]), float(v[1])) for k, v in state["moments"].items()}
