"""The Ray Tune search over scoring weights w (one trial = one weight vector scored on the cached
validation candidates). One objective → Optuna TPE; several → Optuna NSGA-II (multi-objective,
no ASHA: every trial is one cheap evaluation). Constraints are folded into the searched values as
a penalty, and reported as `violation` so selection only takes feasible trials."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from argus_platform.configlib import to_dict
from argus_platform.tuning.candidates import CandidateSet
from argus_platform.tuning.config import MetricSpec, TuneWeightsConfig
from argus_platform.tuning.objectives import evaluate, violation

log = logging.getLogger(__name__)

PENALTY = 100.0  # per unit of constraint violation, subtracted from (added to) maximised (minimised) objectives
EXPERIMENT = "search"


def searched_key(i: int) -> str:
    return f"searched_{i}"


def trial(
    config: dict, data: CandidateSet, objectives: list[MetricSpec], constraints: list[MetricSpec], actions: list[str]
) -> dict:
    """Score one weight vector on the validation candidates (the Tune trainable's body)."""
    weights = {a: float(config[f"w_{a}"]) for a in actions}
    values = evaluate(data, weights, objectives + constraints)
    bad = sum(violation(c, values[c.name]) for c in constraints)
    out = dict(values) | {"violation": bad}
    for i, o in enumerate(objectives):
        out[searched_key(i)] = values[o.name] - PENALTY * bad if o.goal == "max" else values[o.name] + PENALTY * bad
    return out


def _trainable(
    config: dict, data: CandidateSet, objectives: list[MetricSpec], constraints: list[MetricSpec], actions: list[str]
) -> None:
    tune.report(trial(config, data, objectives, constraints, actions))


def make_searcher(cfg: TuneWeightsConfig, start: list[dict] | None = None) -> tuple[ConcurrencyLimiter, str]:
    s, objectives = cfg.search, cfg.objectives
    algorithm = s.algorithm if s.algorithm != "auto" else ("tpe" if len(objectives) == 1 else "nsga2")
    if algorithm == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(8, s.num_samples // 6))
    elif algorithm == "tpe":
        sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=max(4, min(16, s.num_samples // 4)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=s.seed)
    if len(objectives) > 1 and algorithm == "tpe":
        raise ValueError("search.algorithm=tpe takes one objective; use nsga2 (or auto) for several")
    metric = [searched_key(i) for i in range(len(objectives))]
    mode = [o.goal for o in objectives]
    searcher = OptunaSearch(
        metric=metric if len(metric) > 1 else metric[0],
        mode=mode if len(mode) > 1 else mode[0],
        sampler=sampler,
        points_to_evaluate=start or None,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent), algorithm


def weight_range(cfg: TuneWeightsConfig, action: str) -> tuple[float, float]:
    """Search interval of one weight: the objectives' gains fix its sign unless told otherwise."""
    low, high = cfg.search.weight_low, cfg.search.weight_high
    gains = [m.gains.get(action, 0.0) for m in cfg.objectives if m.kind != "rate"]
    if cfg.search.signs_from_gains and gains and all(g > 0 for g in gains if g) and any(gains):
        return 0.0, high
    if cfg.search.signs_from_gains and gains and all(g < 0 for g in gains if g) and any(gains):
        return low, 0.0
    return low, high


def _fingerprint(cfg: TuneWeightsConfig, actions: list[str], cache_meta: dict, start: list[dict] | None) -> str:
    doc = {
        "objectives": to_dict(cfg.objectives),
        "constraints": to_dict(cfg.constraints),
        "search": to_dict(cfg.search),
        "actions": actions,
        "candidates": cache_meta,
        "start": start,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def run_search(
    cfg: TuneWeightsConfig,
    data: CandidateSet,
    actions: list[str],
    out_dir: Path,
    cache_meta: dict,
    start: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Run (or resume, or reuse a finished) search; returns one row per trial and the algorithm.
    `start` (the hand-set weights, clipped into the search space) is the first trial, so the
    search never ends below its baseline on validation."""
    exp = out_dir / EXPERIMENT
    stamp = out_dir / "search_fingerprint.txt"
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, data=data, objectives=cfg.objectives, constraints=cfg.constraints, actions=actions
        ),
        {"cpu": 1},
    )
    first = [{f"w_{a}": float(np.clip(start.get(a, 0.0), *weight_range(cfg, a))) for a in actions}] if start else None
    searcher, algorithm = make_searcher(cfg, first)
    fp = _fingerprint(cfg, actions, cache_meta, first)
    if exp.exists() and stamp.is_file() and stamp.read_text() == fp and tune.Tuner.can_restore(str(exp)):
        print(f"[tune] resuming the search in {exp}", flush=True)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        if exp.exists():
            print(f"[tune] {exp} holds a search with other settings; starting afresh", flush=True)
            shutil.rmtree(exp)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fp)
        space = {f"w_{a}": tune.uniform(*weight_range(cfg, a)) for a in actions}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=cfg.search.num_samples, reuse_actors=True),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(out_dir), verbose=0),
        )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} trials failed; first: {errors[0]}")
    df = results.get_dataframe()
    df = df.rename(columns={c: c.removeprefix("config/") for c in df.columns})
    keep = [f"w_{a}" for a in actions] + [m.name for m in cfg.objectives + cfg.constraints] + ["violation", "trial_id"]
    return df[keep].reset_index(drop=True), algorithm


def pareto_mask(df: pd.DataFrame, objectives: list[MetricSpec]) -> np.ndarray:
    """Non-dominated rows (higher is better after flipping minimised objectives)."""
    v = np.stack([df[o.name].to_numpy() * (1 if o.goal == "max" else -1) for o in objectives], axis=1)
    keep = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        dominated = np.all(v >= v[i], axis=1) & np.any(v > v[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def select(df: pd.DataFrame, cfg: TuneWeightsConfig) -> tuple[int, pd.DataFrame, np.ndarray]:
    """Index of the chosen trial, the feasible trials, and the feasible Pareto mask over them."""
    feasible = df[df["violation"] <= 0]
    if feasible.empty:
        log.warning("no trial satisfies the constraints; choosing among the least violating")
        feasible = df[df["violation"] <= df["violation"].min()]
    front = pareto_mask(feasible, cfg.objectives)
    target = next(o for o in cfg.objectives if o.name == (cfg.search.select or cfg.objectives[0].name))
    pool = feasible[front]
    best = pool[target.name].idxmax() if target.goal == "max" else pool[target.name].idxmin()
    return int(best), feasible, front
