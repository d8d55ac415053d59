"""Scoring weights. The action heads give P(a | engaged): what the user does *if* they engage with
the item (they were trained on engaged events). The score of a candidate is

    score = P(engage | list) · (w_engage + Σ_a w_a · P(a | engaged))

with P(engage | list) the next-item model's choice among the ranked candidates, a softmax of
engage_sharpness · <query, item> over them. engage_sharpness 0 (the default) leaves the plain
Σ_a w_a · P(a | engaged); 1 is the model's own next-item probability (at loss.temperature 1). The
YAML format the Tune job writes and Serve reads:

weights:              # one entry per action head of the run; missing actions weigh 0
  like: 1.0
  skip: -0.5
  engage: 0.3         # optional: the engagement itself (only counts with engage_sharpness > 0)
engage_sharpness: 0.2 # optional, ≥ 0 (default 0)
metadata: {...}       # optional, free-form (who wrote it, the metric it optimised)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

ENGAGE = "engage"  # the weight of the engagement itself (an action of that name, if the data has one, wins)
SHARPNESS = "engage_sharpness"


class WeightsError(ValueError):
    pass


@dataclass(frozen=True)
class ScoringWeights:
    weights: dict[str, float]  # per action, and `engage`
    source: str  # file path, "user_config" or "uniform default"
    engage_sharpness: float = 0.0

    @cached_property  # read on every ranked request
    def version(self) -> str:
        doc = self.weights | ({SHARPNESS: self.engage_sharpness} if self.engage_sharpness else {})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def validate_weights(raw: object, actions: list[str], where: str) -> dict[str, float]:
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{where}: `weights` must be a non-empty mapping action -> number, got {raw!r}")
    unknown = sorted(set(raw) - set(actions) - {ENGAGE})
    if unknown:
        raise WeightsError(
            f"{where}: unknown action(s) {unknown}; the model's actions are {actions} (and {ENGAGE!r}, the engagement)"
        )
    out = {}
    for name in actions + ([ENGAGE] if ENGAGE in raw and ENGAGE not in actions else []):
        out[name] = _number(raw.get(name, 0.0), f"{where}: weight of {name!r}")
    return out


def validate_sharpness(raw: object, where: str) -> float:
    value = _number(raw, f"{where}: {SHARPNESS}")
    if value < 0:
        raise WeightsError(f"{where}: {SHARPNESS} must be ≥ 0 (0 = no engagement term), got {value}")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WeightsError(f"{what} must be a finite number, got {value!r}")
    return float(value)


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
    extra = sorted(set(doc) - {"weights", SHARPNESS, "metadata"})
    if extra:
        raise WeightsError(
            f"weights file {p}: unknown key(s) {extra}; expected `weights` and optional `{SHARPNESS}`, `metadata`"
        )
    sharpness = validate_sharpness(doc.get(SHARPNESS, 0.0), str(p))
    return ScoringWeights(validate_weights(doc["weights"], actions, str(p)), source=str(p), engage_sharpness=sharpness)


def write_weights_file(
    path: str | Path, weights: dict[str, float], metadata: dict | None = None, engage_sharpness: float = 0.0
) -> None:
    doc: dict = {"weights": {k: float(v) for k, v in weights.items()}}
    if engage_sharpness:
        doc[SHARPNESS] = float(engage_sharpness)
    if metadata:
        doc["metadata"] = metadata
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
