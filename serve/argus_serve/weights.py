"""Scoring weights: score = Σ_a w_a · P(a). The YAML format the Tune job writes:

    weights:            # one entry per action head of the run; missing actions weigh 0
      like: 1.0
      skip: -0.5
    metadata: {...}     # optional, free-form (who wrote it, the metric it optimised)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from argus_serve.artifacts import absolute


class WeightsError(ValueError):
    pass


@dataclass(frozen=True)
class ScoringWeights:
    weights: dict[str, float]
    source: str  # file path, "user_config" or "uniform default"

    @property
    def version(self) -> str:
        return hashlib.sha256(json.dumps(self.weights, sort_keys=True).encode()).hexdigest()[:12]


def validate_weights(raw: object, actions: list[str], where: str) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{where}: `weights` must be a non-empty mapping action -> number, got {raw!r}")
    unknown = sorted(set(raw) - set(actions))
    if unknown:
        raise WeightsError(f"{where}: unknown action(s) {unknown}; the model's actions are {actions}")
    out = {}
    for name in actions:
        value = raw.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WeightsError(f"{where}: weight of {name!r} must be a finite number, got {value!r}")
        out[name] = float(value)
    return out


def load_weights_file(path: str, actions: list[str]) -> ScoringWeights:
    p = absolute(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise WeightsError(f"weights file {p} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "weights" not in doc:
        raise WeightsError(f"weights file {p} must be a mapping with a `weights:` key")
    extra = sorted(set(doc) - {"weights", "metadata"})
    if extra:
        raise WeightsError(f"weights file {p}: unknown key(s) {extra}; expected `weights` and optional `metadata`")
    return ScoringWeights(validate_weights(doc["weights"], actions, str(p)), source=str(p))


RUN_WEIGHTS = "weights.yaml"  # where the Tune job leaves its best weights, inside the run directory


def resolve_weights(weights: dict[str, float] | None, weights_file: str, actions: list[str], run_dir: Path) -> ScoringWeights:
    """Inline weights, else the named file, else <run dir>/weights.yaml, else 1/|A| for every action."""
    if weights:
        return ScoringWeights(validate_weights(weights, actions, "user_config.weights"), source="user_config")
    if weights_file:
        return load_weights_file(weights_file, actions)
    if (run_dir / RUN_WEIGHTS).is_file():
        return load_weights_file(str(run_dir / RUN_WEIGHTS), actions)
    return ScoringWeights({a: 1.0 / len(actions) for a in actions} if actions else {}, source="uniform default")


def write_weights_file(path: str | Path, weights: dict[str, float], metadata: dict | None = None) -> None:
    doc = {"weights": {k: float(v) for k, v in weights.items()}}
    if metadata:
        doc["metadata"] = metadata
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
