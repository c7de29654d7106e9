"""`training.time_budget`: a run that ends, final evaluation included, within a wall-clock budget.

The first steps time this machine (the very first, which compiles, is left out), one evaluation is timed,
and max_steps is then fixed so that the rest of the steps and every evaluation the cadence brings end within
the budget. The timed steps fall inside the warm-up, whose learning rate does not depend on max_steps, and the
fixed max_steps is written into the run's config: from there the schedule is a pure function of the step, so
a resume continues exactly (and does not time anything again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tinyllama.core.cli import UserError, human_duration

TIMED_STEPS = 50  # at most: the warm-up but its first and last step (a few steps read 10-15% fast on a busy VM)


@dataclass
class TimeBudget:
    seconds: float
    first_step: int  # the run's first step (0 unless resumed)
    warmup_steps: int
    eval_every: int
    started: float = 0.0  # when the first step began
    after_first: float = 0.0  # when the first (compiling) step ended

    @property
    def calibrated_at(self) -> int:
        """The step count after which max_steps is fixed: the first step and the timed ones, all in warm-up."""
        return self.first_step + 1 + max(1, min(TIMED_STEPS, self.warmup_steps - 1))

    def start(self) -> None:
        self.started = time.perf_counter()

    def max_steps(self, done: int, time_evaluation: Callable[[], float]) -> tuple[int, str] | None:
        """After each step: None until `calibrated_at`, then (the fixed max_steps, a line saying how it was
        chosen); `time_evaluation()` runs one evaluation and returns its seconds."""
        now = time.perf_counter()
        if done == self.first_step + 1:
            self.after_first = now
        if done != self.calibrated_at:
            return None
        step_s = (now - self.after_first) / (done - self.first_step - 1)
        eval_s = time_evaluation()
        remaining = self.seconds - (time.perf_counter() - self.started)
        more = 0
        for _ in range(4):  # the steps left and the evaluations they bring (the final one included) converge
            evals = ((done + more) // self.eval_every - done // self.eval_every if self.eval_every else 0) + 1
            more = max(0, int((remaining - evals * eval_s) / step_s))
        total = done + more
        if total <= self.warmup_steps:
            need = self.warmup_steps * step_s + eval_s + (now - self.started)
            raise UserError(
                f"training.time_budget {self.seconds / 60:g} min leaves {total} steps here ({step_s:.2f} s a step, "
                f"{eval_s:.1f} s an evaluation), not past the {self.warmup_steps} warm-up steps; give it at least "
                f"{need / 60:.1f} min or lower training.warmup_steps"
            )
        line = (
            f"time_budget {self.seconds / 60:g} min: {step_s:.3f} s a step, {eval_s:.2f} s an evaluation -> "
            f"max_steps {total} (in the run's config from here; the run ends in about "
            f"{human_duration(self.seconds - (time.perf_counter() - self.started))})"
        )
        return total, line
