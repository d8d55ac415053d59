"""Ranking metrics over candidate sets, for given scoring weights (vectorised over rows).

Each row's candidates are ordered by score = Σ_a w_a · P(a); a metric reads the top-k of that
order. `values` are either what users did (observed: a replay of the logged actions, e.g. of the
slate a user was shown) or the simulator's truth (oracle): the expected value of that replay,
P(chosen | list) · E[a | chosen] per candidate. The oracle ordering ranks by the true item value
itself, which no weighting of the model's P(a) can beat.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from argus_models.inference import combine
from argus_models.weights import SHARPNESS
from argus_platform.tuning.candidates import CandidateSet
from argus_platform.tuning.config import MetricSpec


def scores(cand: CandidateSet, weights: dict[str, float]) -> np.ndarray:
    """[R, C] the Ranker's score (argus_models.inference.combine, the same code Serve runs):
    P(engage | list) · (w_engage + Σ_a w_a · P(a | engaged)), or Σ_a w_a · P(a | engaged) when the
    set's engage_sharpness is 0; empty candidate slots are −inf."""
    probs = {a: torch.from_numpy(v.astype(np.float64)) for a, v in cand.probs.items()}
    sharpness = float(weights.get(SHARPNESS, 0.0))
    linear = {a: float(w) for a, w in weights.items() if a != SHARPNESS}
    retrieval = torch.from_numpy(cand.retrieval.astype(np.float64)) if cand.retrieval is not None else None
    s = combine(probs, linear, retrieval, sharpness, torch.from_numpy(cand.valid))
    return np.where(cand.valid, np.broadcast_to(np.asarray(s, dtype=np.float64), cand.items.shape), -np.inf)


def top_k(order_by: np.ndarray, k: int) -> np.ndarray:
    """[R, k] column indices of each row's k highest values, best first (stable on ties)."""
    k = min(k, order_by.shape[1])
    return np.argsort(-order_by, axis=1, kind="stable")[:, :k]


def item_values(spec: MetricSpec, values: dict[str, np.ndarray]) -> np.ndarray:
    """[R, C] what one candidate is worth under the metric."""
    if spec.kind == "rate":
        return values[spec.action].astype(np.float64)
    v = sum(g * values[a].astype(np.float64) for a, g in spec.gains.items())
    return np.maximum(v, 0.0) if spec.kind == "ndcg" else v


def value_corr(spec: MetricSpec, cand: CandidateSet, score: np.ndarray) -> float:
    """Spearman correlation (average ranks for ties) of engaged items' scores and observed values."""
    s = score[cand.target]
    v = item_values(spec, cand.observed)[cand.target]
    if np.ptp(v) == 0 or np.ptp(s) == 0:
        return 0.0
    return float(np.corrcoef(pd.Series(s).rank().to_numpy(), pd.Series(v).rank().to_numpy())[0, 1])


def truth(spec: MetricSpec) -> MetricSpec:
    """How the oracle judges a metric: the true value of the top-k list (position-discounted for
    dcg, whose lists — slates — may be no longer than k)."""
    return dataclasses.replace(spec, kind=spec.kind if spec.kind in ("rate", "dcg") else "utility")


def metric(spec: MetricSpec, values: dict[str, np.ndarray], order: np.ndarray, valid: np.ndarray) -> float:
    """A list metric averaged over rows, for candidates taken in `order` ([R, ≥k] column indices)."""
    v = np.where(valid, item_values(spec, values), 0.0)
    top = order[:, : spec.k]
    picked = np.take_along_axis(v, top, axis=1)
    if spec.kind in ("utility", "rate"):
        return float(picked.sum(axis=1).mean())
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    if spec.kind == "dcg":
        return float((picked * discount).sum(axis=1).mean())
    dcg = (picked * discount).sum(axis=1)
    ideal = (np.take_along_axis(v, top_k(v, spec.k), axis=1) * discount[: min(spec.k, v.shape[1])]).sum(axis=1)
    has = ideal > 0
    return float((dcg[has] / ideal[has]).mean()) if has.any() else 0.0


def evaluate(
    cand: CandidateSet, weights: dict[str, float], specs: list[MetricSpec], source: str = "observed"
) -> dict[str, float]:
    """{metric name: value} of the ranking the weights produce, judged by what users did
    (observed) or by the simulator's truth (oracle: the true utility/rate of the top-k)."""
    s = scores(cand, weights)
    order = top_k(s, max(m.k for m in specs))
    if source == "oracle":
        true = cand.expected_observed()
        return {m.name: metric(truth(m), true, order, cand.valid) for m in specs}
    return {
        m.name: value_corr(m, cand, s) if m.kind == "value_corr" else metric(m, cand.observed, order, cand.valid)
        for m in specs
    }


def best_ordering(cand: CandidateSet, specs: list[MetricSpec]) -> dict[str, float]:
    """The best value of each metric any ordering of the same candidates reaches (true values)."""
    out, true = {}, cand.expected_observed()
    for s in specs:
        t = truth(s)
        v = np.where(cand.valid, item_values(t, true), -np.inf if s.goal == "max" else np.inf)
        order = top_k(v if s.goal == "max" else -v, s.k)
        out[s.name] = metric(t, true, order, cand.valid)
    return out


def violation(spec: MetricSpec, value: float) -> float:
    """How far a constraint metric is outside its bound (0 = satisfied)."""
    over = max(0.0, value - spec.max) if spec.max is not None else 0.0
    under = max(0.0, spec.min - value) if spec.min is not None else 0.0
    return over + under
