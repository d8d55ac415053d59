"""Learning-rate schedule shared by the dense (AdamW) and sparse (fused FBGEMM) optimizers, and the
number of epochs fitted into a time budget."""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_factor(
    step: int,
    warmup_steps: int,
    total_steps: int,
    schedule: str,
    min_ratio: float,
    anchor: tuple[int, float] | None = None,
) -> float:
    """Multiplier of the configured learning rates at optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps`, then `constant` (1.0) or `cosine` decay from 1.0 to
    `min_ratio` at `total_steps` (held there beyond it). anchor = (step s0, progress p0): the cosine
    was at p0 of its way at s0 and covers the rest, 1 − p0, over steps s0..total_steps — a schedule
    whose length changes mid-run (a time budget's plan made again) goes on from the rate it has,
    never back up, and still ends at `min_ratio` on its last step.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant or cosine")
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    if schedule == "constant" or step < warmup_steps:
        return warm
    progress = cosine_progress(step, warmup_steps, total_steps, anchor)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_progress(step: int, warmup_steps: int, total_steps: int, anchor: tuple[int, float] | None = None) -> float:
    """How far, 0..1, the cosine of `lr_factor` is at `step`."""
    if anchor is None:
        start, done = warmup_steps, 0.0
    else:
        start, done = anchor
        if step < start:  # before the anchor the schedule was flat or another plan's: not this one's to say
            return done
    span = max(total_steps - start, 1)
    return min(1.0, done + (1.0 - done) * max(step - start, 0) / span)


@dataclass(frozen=True)
class EpochPlan:
    """Epochs and validation cadence fitted into a wall-clock budget (`fit_epochs`)."""

    epochs: int  # total epochs of the run, those already done included
    eval_every: int  # validate every this many epochs (and after the last)
    seconds: float  # expected seconds of the whole training phase: steps and evaluations


def evaluations_between(done: int, end: int, every: int) -> int:
    """Evaluations after epochs done+1..end: every `every`-th epoch, and always after the last."""
    if end <= done:
        return 0
    return end // every - done // every + (1 if end % every else 0)


def fit_epochs(
    budget_s: float,
    spent_s: float,
    done: int,
    epoch_s: float,
    eval_s: float,
    final_s: float = 0.0,
    eval_share: float = 0.05,
    max_epochs: int = 10_000,
    every: int | None = None,
) -> EpochPlan:
    """The most epochs whose steps and evaluations fit in `budget_s`, after `done` epochs that took
    `spent_s` seconds (their evaluations included), with `final_s` kept for the end (the test of
    the best epoch). An epoch costs `epoch_s`, a validation `eval_s`; validations run every k epochs,
    k the smallest cadence that keeps them within `eval_share` of the epochs' time (or `every`: a
    plan made again keeps its cadence). At least the epochs done."""
    every = every or max(1, math.ceil(eval_s / (eval_share * max(epoch_s, 1e-9))))
    left = budget_s - spent_s - final_s
    end = done
    while end < max_epochs:
        n = end + 1
        if (n - done) * epoch_s + evaluations_between(done, n, every) * eval_s > left:
            break
        end = n
    cost = (end - done) * epoch_s + evaluations_between(done, end, every) * eval_s
    return EpochPlan(epochs=end, eval_every=every, seconds=spent_s + cost + final_s)
