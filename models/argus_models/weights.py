"""Scoring weights: score = Σ_a w_a · P(a). The YAML format the Tune job writes and Serve reads:

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
from functools import cached_property
from pathlib import Path

import yaml


class WeightsError(ValueError):
    pass


@dataclass(frozen=True)
class ScoringWeights:
    weights: dict[str, float]
    source: str  # file path, "user_config" or "uniform default"

    @cached_property  # read on every ranked request
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


def load_weights_file(path: str | Path, actions: list[str]) -> ScoringWeights:
    p = Path(path)
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


def write_weights_file(path: str | Path, weights: dict[str, float], metadata: dict | None = None) -> None:
    doc = {"weights": {k: float(v) for k, v in weights.items()}}
    if metadata:
        doc["metadata"] = metadata
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
