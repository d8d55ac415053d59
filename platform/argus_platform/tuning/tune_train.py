"""`jobs/tune_train.py`: Ray Tune over training hyper-parameters (per-action loss weights λ_a,
learning rates, negatives, ...). Each trial is a Ray Train run of the core job (TorchTrainer inside
the Tune trial, metrics forwarded by `TuneReportCallback`); ASHA stops trials whose validation
metric lags. Data is prepared once and shared by every trial's run directory."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from argus_models.rundir import absolute
from argus_models.task import DEFAULT_ACTION_WEIGHT
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, from_dict, load_config, to_dict
from argus_platform.configlib import documented as _help
from argus_platform.data.prepare import link_prepared, prepare_data
from argus_platform.raytrain import init_ray, say_where_logs_go
from argus_platform.train_argus import train
from argus_platform.tuning.release import ReleaseWorkersCallback, settle, start_releaser


@dataclass
class ParamSpec:
    """Search range of one training config key."""

    kind: Literal["loguniform", "uniform", "randint", "choice"] = "uniform"
    low: float = 0.0
    high: float = 1.0
    values: list[Any] = field(default_factory=list)

    def validate(self) -> None:
        if self.kind == "choice" and not self.values:
            raise ConfigError("a choice parameter needs `values`")
        if self.kind != "choice" and self.low >= self.high:
            raise ConfigError(f"{self.kind} needs low < high, got {self.low}..{self.high}")

    def domain(self):
        return {
            "loguniform": lambda: tune.loguniform(self.low, self.high),
            "uniform": lambda: tune.uniform(self.low, self.high),
            "randint": lambda: tune.randint(int(self.low), int(self.high)),
            "choice": lambda: tune.choice(self.values),
        }[self.kind]()

    def example(self) -> Any:
        return self.values[0] if self.kind == "choice" else self.low


def _default_space() -> dict[str, ParamSpec]:
    return {
        "optim.dense_lr": ParamSpec(kind="loguniform", low=3e-4, high=5e-3),
        "optim.sparse_lr": ParamSpec(kind="loguniform", low=0.01, high=0.2),
        "loss.action_weights.like": ParamSpec(kind="uniform", low=0.1, high=2.0),
        "loss.action_weights.skip": ParamSpec(kind="uniform", low=0.1, high=2.0),
        "loss.uniform_negatives": ParamSpec(kind="choice", values=[64, 128, 256]),
    }


@dataclass
class TuneTrainConfig:
    """Root config of `jobs/tune_train.py`."""

    train_config: str = _help("training YAML every trial starts from ('' = the embedded default)", "")
    train_overrides: list[str] = _help(
        "`key=value` applied to every trial (before the sampled values)",
        factory=lambda: ["optim.epochs=9", "optim.eval_every_epochs=1", "optim.log_every_steps=0"],
    )
    space: dict[str, ParamSpec] = _help("training config key → search range", factory=_default_space)
    metric: str = _help("validation metric reported by the training loop", "validation/ndcg@10")
    num_samples: int = _help("trials", 8)
    seed: int = _help("TPE sampler seed", 0)
    max_concurrent: int = _help("trials at once (each takes scaling.num_workers × cpus_per_worker CPUs)", 1)
    grace_period: int = _help("ASHA: epochs every trial gets before it may be stopped", 3)
    reduction_factor: int = _help("ASHA: keep 1/reduction_factor of trials at each rung", 2)
    out_dir: str = _help("output directory ('' = runs/tune-train-<time>)", "")
    local_num_cpus: int = _help("logical CPUs of the local Ray started when RAY_ADDRESS is unset", 4)
    verbose: bool = _help(
        "print Ray's, Ray Tune's and Ray Data's own output on the terminal too (else it stays in "
        "<out dir>/logs/ray; the job's own lines are printed either way)",
        False,
    )


def _set(doc: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def trial_config(base: dict, sampled: dict[str, Any], run_dir: str) -> TrainJobConfig:
    """The base training config with the sampled values and the trial's run directory."""
    doc = copy.deepcopy(base)
    for key, value in sampled.items():
        _set(doc, key, value)
    _set(doc, "run.dir", run_dir)
    return from_dict(TrainJobConfig, doc)


def own_point(base: dict, space: dict[str, ParamSpec]) -> tuple[dict[str, Any], list[str]]:
    """The first trial, so the search is never below the configuration it started from: the base
    config's own value of every searched key. Optuna's warm start needs every key, so a value outside
    its range becomes the nearest one inside, an action weight the config leaves out its effective
    λ_a (DEFAULT_ACTION_WEIGHT), any other unset key the middle of its range; each such change is
    returned as a note."""
    point, notes = {}, []
    for key, spec in space.items():
        node: Any = base
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and key.startswith("loss.action_weights."):
            node = DEFAULT_ACTION_WEIGHT
        if node is None:
            point[key] = _middle(spec)
            notes.append(f"{key} is not set: {point[key]!r}, the middle of its range")
        elif spec.kind == "choice":
            point[key] = node if node in spec.values else _nearest(node, spec.values)
        else:
            point[key] = min(max(node, spec.low), spec.high)
            point[key] = int(point[key]) if spec.kind == "randint" else point[key]
        if node is not None and point[key] != node:
            notes.append(f"{key}={node!r} lies outside the search range: {point[key]!r} instead")
    return point, notes


def _middle(spec: ParamSpec) -> Any:
    if spec.kind == "choice":
        return spec.values[len(spec.values) // 2]
    if spec.kind == "loguniform":
        return math.sqrt(spec.low * spec.high)
    return int((spec.low + spec.high) // 2) if spec.kind == "randint" else (spec.low + spec.high) / 2


def _nearest(value: Any, values: list[Any]) -> Any:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [value, *values])
    return min(values, key=lambda v: abs(v - value)) if numeric else values[0]


def _trainable(config: dict, base: dict, shared: str, trials_dir: str, releaser: str) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    run_dir = Path(trials_dir) / tune.get_context().get_trial_id()
    link_prepared(Path(shared), run_dir)
    train(trial_config(base, config, str(run_dir)), callbacks=[TuneReportCallback(), ReleaseWorkersCallback(releaser)])


def tune_train(cfg: TuneTrainConfig) -> dict:
    started = time.time()
    out = absolute(cfg.out_dir or f"runs/tune-train-{time.strftime('%Y%m%d-%H%M%S')}")
    base_cfg = load_config(TrainJobConfig, cfg.train_config or None, cfg.train_overrides)
    base = to_dict(base_cfg)
    for key, spec in cfg.space.items():  # every key must name a training config field
        trial_config(base, {key: spec.example()}, "")
    init_ray(cfg.local_num_cpus, quiet=not cfg.verbose)
    say_where_logs_go(out, "verbose=true", "[tune-train]")
    releaser, releaser_name = start_releaser()  # frees the workers of trials ASHA stops
    shared = out / "shared"
    print(f"[tune-train] preparing data once in {shared}", flush=True)
    prepare_data(base_cfg.data, shared)
    epochs = base_cfg.optim.epochs
    if epochs < 1:
        raise ConfigError(
            "tune_train needs a fixed optim.epochs >= 1 in train_overrides: ASHA's rungs count epochs, "
            "so a run that fits its epochs into a time budget (optim.epochs=0) cannot be scheduled"
        )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, base=base, shared=str(shared), trials_dir=str(out / "trials"), releaser=releaser_name
        ),
        {"cpu": 0.01},
    )
    exp = out / "search"
    if tune.Tuner.can_restore(str(exp)):
        print(f"[tune-train] resuming the search in {exp}", flush=True)
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        first, notes = own_point(base, cfg.space)
        print(f"[tune-train] first trial: the config's own values {first}", flush=True)
        for note in notes:
            print(f"[tune-train]   {note}", flush=True)
        searcher = ConcurrencyLimiter(
            OptunaSearch(metric=cfg.metric, mode="max", seed=cfg.seed, points_to_evaluate=[first]),
            max_concurrent=cfg.max_concurrent,
        )
        # max_t past the last epoch: a trial that trains to the end returns by itself instead of being stopped
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=cfg.metric,
            mode="max",
            max_t=epochs + 1,
            grace_period=min(cfg.grace_period, epochs),
            reduction_factor=cfg.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space={k: v.domain() for k, v in cfg.space.items()},
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_samples, reuse_actors=False
            ),
            run_config=tune.RunConfig(name="search", storage_path=str(out), verbose=0),
        )
    workers = base_cfg.scaling.num_workers * base_cfg.scaling.cpus_per_worker
    print(
        f"[tune-train] {cfg.num_samples} trials of up to {epochs} epochs ({workers:g} CPUs each), ASHA on {cfg.metric}",
        flush=True,
    )
    results = tuner.fit()
    df = results.get_dataframe()
    best = results.get_best_result(metric=cfg.metric, mode="max", scope="all")
    sampled = {k: best.config[k] for k in cfg.space}
    best_cfg = trial_config(base, sampled, "")
    (out / "best_config.yaml").write_text(yaml.safe_dump(to_dict(best_cfg), sort_keys=False))
    cols = [c for c in df.columns if c.startswith("config/")] + [cfg.metric, "epoch", "trial_id"]
    df[[c for c in cols if c in df.columns]].to_csv(out / "trials.csv", index=False)
    report = {
        "best": {
            "config": sampled,
            cfg.metric: float(best.metrics_dataframe[cfg.metric].max()),
            "trial_id": best.metrics.get("trial_id"),
        },
        "trials": len(df),
        "stopped_early": int((df["epoch"] < epochs).sum()),
        "epochs": epochs,
        "errors": [str(r.error) for r in results if r.error],
        "released_worker_groups": settle(releaser),
        "out_dir": str(out),
        "seconds": round(time.time() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
