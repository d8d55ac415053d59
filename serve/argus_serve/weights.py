"""Which scoring weights a Ranker uses (the file format lives in `argus_models.weights`)."""

from __future__ import annotations

from pathlib import Path

from argus_models.weights import (
    ScoringWeights,
    WeightsError,
    load_weights_file,
    validate_sharpness,
    validate_weights,
    write_weights_file,
)
from argus_serve.artifacts import absolute

__all__ = [
    "RUN_WEIGHTS",
    "ScoringWeights",
    "WeightsError",
    "load_weights_file",
    "resolve_weights",
    "write_weights_file",
]

RUN_WEIGHTS = "tune/weights.yaml"  # where the Tune job leaves its chosen weights, inside the run directory


def resolve_weights(
    weights: dict[str, float] | None,
    weights_file: str,
    actions: list[str],
    run_dir: Path,
    engage_sharpness: float = 0.0,
) -> ScoringWeights:
    """Inline weights (with `engage_sharpness`), else the named file, else <run dir>/tune/weights.yaml,
    else 1/|A| for every action."""
    if weights:
        return ScoringWeights(
            validate_weights(weights, actions, "user_config.weights"),
            source="user_config",
            engage_sharpness=validate_sharpness(engage_sharpness, "user_config.engage_sharpness"),
        )
    if weights_file:
        return load_weights_file(absolute(weights_file), actions)
    if (run_dir / RUN_WEIGHTS).is_file():
        return load_weights_file(run_dir / RUN_WEIGHTS, actions)
    return ScoringWeights({a: 1.0 / len(actions) for a in actions} if actions else {}, source="uniform default")
