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

from argus_models.weights import ENGAGE, SHARPNESS
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
    config: dict,
    data: CandidateSet,
    objectives: list[MetricSpec],
    constraints: list[MetricSpec],
    actions: list[str],
    source: str = "observed",
) -> dict:
    """Score one weight vector on the validation candidates (the Tune trainable's body): by what
    users did (observed), or by the simulator's true values (oracle)."""
    values = evaluate(data, weights_of(config, actions), objectives + constraints, source)
    bad = sum(violation(c, values[c.name]) for c in constraints)
    out = dict(values) | {"violation": bad}
    for i, o in enumerate(objectives):
        out[searched_key(i)] = values[o.name] - PENALTY * bad if o.goal == "max" else values[o.name] + PENALTY * bad
    return out


def _trainable(
    config: dict,
    data: CandidateSet,
    objectives: list[MetricSpec],
    constraints: list[MetricSpec],
    actions: list[str],
    source: str,
) -> None:
    tune.report(trial(config, data, objectives, constraints, actions, source))


def make_searcher(
    cfg: TuneWeightsConfig, start: list[dict] | None = None, objectives: list[MetricSpec] | None = None
) -> tuple[ConcurrencyLimiter, str]:
    s, objectives = cfg.search, objectives or cfg.objectives
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


def dimensions(cfg: TuneWeightsConfig, actions: list[str]) -> dict[str, tuple[float, float]]:
    """Searched parameter → interval: w_<action> for every action and, with
    search.engage_sharpness_high > 0, the engagement term's w_engage and engage_sharpness."""
    dims = {f"w_{a}": weight_range(cfg, a) for a in actions}
    if cfg.search.engage_sharpness_high > 0:
        dims[f"w_{ENGAGE}"] = weight_range(cfg, ENGAGE)
        dims[SHARPNESS] = (0.0, cfg.search.engage_sharpness_high)
    return dims


def weights_of(point, actions: list[str]) -> dict[str, float]:
    """A search point (w_<action>, and w_engage, engage_sharpness when searched) as a weight set."""
    w = {a: float(point[f"w_{a}"]) for a in actions}
    for key, name in ((f"w_{ENGAGE}", ENGAGE), (SHARPNESS, SHARPNESS)):
        if key in point and not pd.isna(point[key]):
            w[name] = float(point[key])
    return w


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


def in_space(cfg: TuneWeightsConfig, weights: dict[str, float], actions: list[str]) -> dict[str, float] | None:
    """`weights` as a point of the search space, or None when it lies outside. Scores rank the same
    under any positive rescaling of the weights (w_a and w_engage), so a vector is first scaled to
    fit the bounds (max |w| → the bound); it is outside when a sign rule forbids one of its signs,
    or when it has an engagement term the search does not."""
    dims = dimensions(cfg, actions)
    if SHARPNESS not in dims and (weights.get(SHARPNESS) or weights.get(ENGAGE)):
        return None
    linear = [k for k in dims if k != SHARPNESS]
    w = np.array([weights.get(k.removeprefix("w_"), 0.0) for k in linear], dtype=np.float64)
    bound = min(abs(x) for k in linear for x in dims[k] if x != 0)
    peak = np.abs(w).max()
    if peak > 0:
        w = w * bound / peak
    point = {k: float(v) for k, v in zip(linear, w)}
    if SHARPNESS in dims:
        point[SHARPNESS] = float(weights.get(SHARPNESS, 0.0))
    inside = all(lo - 1e-12 <= point[k] <= hi + 1e-12 for k, (lo, hi) in dims.items())
    return point if inside else None


def run_search(
    cfg: TuneWeightsConfig,
    data: CandidateSet,
    actions: list[str],
    out_dir: Path,
    cache_meta: dict,
    baselines: dict[str, dict[str, float]] | None = None,
    source: str = "observed",
    name: str = EXPERIMENT,
) -> tuple[pd.DataFrame, str]:
    """Run (or resume, or reuse a finished) search; returns one row per trial and the algorithm.

    The `baselines` (default, uniform and any the user passes) are trials too: the first ones
    (`points_to_evaluate`, rescaled into the space), or, when a sign rule puts one outside the
    space, evaluated beside the search; their rows carry a `baseline` name, and selection takes
    them in, so the chosen weights are never dominated by one of them on validation.
    `source` oracle searches against the simulator's true values (the best any weights can do)."""
    exp = out_dir / name
    stamp = out_dir / f"{name}_fingerprint.txt"
    objectives = cfg.objectives if source == "observed" else [selected_objective(cfg)]
    constraints = cfg.constraints if source == "observed" else []
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, data=data, objectives=objectives, constraints=constraints, actions=actions, source=source
        ),
        {"cpu": 1},
    )
    baselines = baselines or {}
    points = {b: in_space(cfg, w, actions) for b, w in baselines.items()}
    first = [p for p in points.values() if p is not None] or None
    searcher, algorithm = make_searcher(cfg, first, objectives)
    fp = _fingerprint(cfg, actions, cache_meta | {"source": source}, first)
    if exp.exists() and stamp.is_file() and stamp.read_text() == fp and tune.Tuner.can_restore(str(exp)):
        print(f"[tune] resuming the search in {exp}", flush=True)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        if exp.exists():
            print(f"[tune] {exp} holds a search with other settings; starting afresh", flush=True)
            shutil.rmtree(exp)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fp)
        space = {k: tune.uniform(*interval) for k, interval in dimensions(cfg, actions).items()}
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=cfg.search.num_samples, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(out_dir), verbose=0),
        )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} trials failed; first: {errors[0]}")
    df = results.get_dataframe()
    df = df.rename(columns={c: c.removeprefix("config/") for c in df.columns})
    params = list(dimensions(cfg, actions))
    keep = params + [m.name for m in objectives + constraints] + ["violation", "trial_id"]
    df = df[keep].reset_index(drop=True)
    df["baseline"] = ""
    outside = []
    for b, point in points.items():
        if point is None:  # a sign rule excludes it: scored beside the search, with its own weights
            w = {f"w_{a}": float(baselines[b].get(a, 0.0)) for a in actions}
            w |= {
                f"w_{ENGAGE}": float(baselines[b].get(ENGAGE, 0.0)),
                SHARPNESS: float(baselines[b].get(SHARPNESS, 0.0)),
            }
            row = trial(w, data, objectives, constraints, actions, source)
            outside.append(w | {k: row[k] for k in [m.name for m in objectives + constraints] + ["violation"]})
            outside[-1] |= {"trial_id": f"baseline-{b}", "baseline": b}
            continue
        weights = df[params].to_numpy()
        match = np.flatnonzero(np.all(np.isclose(weights, [point[k] for k in params]), axis=1))
        if match.size:
            df.loc[match[0], "baseline"] = b
    if outside:
        df = pd.concat([df, pd.DataFrame(outside)], ignore_index=True)
    return df, algorithm


def selected_objective(cfg: TuneWeightsConfig) -> MetricSpec:
    return next(o for o in cfg.objectives if o.name == (cfg.search.select or cfg.objectives[0].name))


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
    target = selected_objective(cfg)
    pool = feasible[front]
    best = pool[target.name].idxmax() if target.goal == "max" else pool[target.name].idxmin()
    return int(best), feasible, front
