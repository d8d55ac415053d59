"""Learning-rate schedule shared by the dense (AdamW) and sparse (fused FBGEMM) optimizers."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the configured learning rates at optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps`, then `constant` (1.0) or `cosine` decay from 1.0 to
    `min_ratio` at `total_steps` (held there beyond it).
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use constant or cosine")
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    if schedule == "constant" or step < warmup_steps:
        return warm
    span = max(total_steps - warmup_steps, 1)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
