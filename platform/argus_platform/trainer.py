"""Driver side of the training job: run directory, Ray, data preparation, TorchTrainer, metrics.json."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import yaml
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import argus_models
import argus_platform
from argus_models.config import ModelConfig, ModelSchema, multi_hash_buckets
from argus_models.rundir import CHECKPOINT_GLOB, new_run_dir
from argus_platform.config import ScalingCfg, TrainJobConfig
from argus_platform.configlib import to_dict
from argus_platform.console import PROGRESS_LOG, Follow, link_ray_logs
from argus_platform.data.prepare import PreparedRun, prepare_data
from argus_platform.sharding.plan import check_kernels
from argus_platform.train_loop import train_loop_per_worker
from argus_platform.worker import CHECKPOINT_SCORE

# Shipped to every Ray worker, so a cluster without the project installed can import it.
PACKAGES = [Path(argus_platform.__file__).resolve().parent, Path(argus_models.__file__).resolve().parent]


def resolve_run_dir(cfg: TrainJobConfig) -> Path:
    """`run.dir`, else runs/argus-<time>; relative paths resolve against $ARGUS_HOME (else the working
    directory), as Serve and Tune resolve them, so all three agree on where runs live."""
    return new_run_dir(cfg.run.dir)


_QUIET = {"ray": False}  # whether the Ray this process started keeps workers' output off the terminal


def init_ray(local_num_cpus: int, quiet: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`; `RAY_ADDRESS=auto` for a
    `ray start` cluster on this machine); otherwise start a fresh local Ray with more logical CPUs
    than the workers take, so Ray Data keeps a budget. Never guesses from leftover session files.
    `quiet`: workers' and actors' output stays in Ray's log files (`argus_platform.console`)."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # per process: Tune trials too
    if ray.is_initialized():
        return
    _QUIET["ray"] = quiet
    if quiet:  # Ray Data logs each execution plan and its end at INFO in the driver (prepare, evaluation)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Train V2 re-routes print() through its logger, which doubles progress lines on the driver.
    runtime_env = {"py_modules": [str(p) for p in PACKAGES], "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(
            runtime_env=runtime_env, log_to_driver=not quiet, logging_level=logging.WARNING if quiet else logging.INFO
        )
        print(f"[argus] joined the Ray cluster at {ray.get_runtime_context().gcs_address}", flush=True)
    else:
        runtime_env["worker_process_setup_hook"] = "argus_platform.rayhooks.quiet_placement_group_cleaner"
        ray.init(
            address="local",
            num_cpus=local_num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=not quiet,
            logging_level=logging.WARNING if quiet else logging.INFO,
        )
        print(f"[argus] started a local Ray with {local_num_cpus} logical CPUs", flush=True)


def model_schema(prepared: PreparedRun, model: ModelConfig) -> ModelSchema:
    return ModelSchema(
        num_items=prepared.vocab.num_items,
        contexts=prepared.vocab.context_sizes(),
        actions=[a.head() for a in prepared.spec.actions],
        item_features=prepared.item_features.features if prepared.item_features else [],
        item_hash_buckets=multi_hash_buckets(model),
    )


class SplitConfig(DataConfig):
    """Ray Train's dataset sharding, with nothing lost from the held-out splits.

    `train` is split into equal shards (every worker takes the same number of steps, as DDP needs);
    the other splits are split without `equal`, because evening the shards drops up to
    world_size − 1 rows — users missing from validation and test. Evaluation only reduces sums
    once at the end, so unequal shards are fine there."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train V2 configures one dataset per call; V1 passes them all at once.
        evenly = {n: ds for n, ds in datasets.items() if n == "train"}
        output = super().configure(evenly, world_size, worker_handles, worker_node_ids, **kwargs)
        for name, ds in datasets.items():
            if name in evenly:
                continue
            ds = ds.copy(ds)
            ds.set_name(name)
            ds.context.execution_options = self._resolve_execution_options(name)
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[rank][name] = split
        return output


MATERIALIZE_BELOW_BYTES = 128 << 20  # larger splits stream, so the driver never holds a large log


def split_dataset(path: str, shuffle_seed: int | None = None) -> "ray.data.Dataset":
    """A split as a Ray Dataset. Small splits are read here, one block per Parquet file, and put in
    the object store once, so each epoch streams blocks to the workers without re-reading Parquet
    (and without the seconds a distributed read costs for a few files); large ones stream from storage.

    `shuffle_seed`: the blocks (one per file) in a random order, a new one every epoch. A streamed
    split shuffles its files before the read: shuffling its blocks instead (`randomize_block_order`)
    is an all-to-all step that read the whole split before the first batch (~25 s of each epoch of a
    10M-event log on 2 cores went to that wait)."""
    files = sorted(Path(path).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"prepared split {path} holds no Parquet files; delete the run directory's "
            "data/ folder to prepare the data again"
        )
    if sum(f.stat().st_size for f in files) >= MATERIALIZE_BELOW_BYTES:
        shuffle = None if shuffle_seed is None else ray.data.FileShuffleConfig(seed=shuffle_seed)
        return ray.data.read_parquet(path, shuffle=shuffle)
    ds = ray.data.from_arrow([pq.read_table(f) for f in files])
    return ds if shuffle_seed is None else ds.randomize_block_order(seed=shuffle_seed)


def train(cfg: TrainJobConfig, callbacks: list | None = None) -> dict:
    """Run the whole job; returns the final metrics (also written to <run dir>/metrics.json).
    `callbacks`: Ray Train callbacks (Tune passes one that forwards every report to its trial)."""
    check_kernels(cfg, "cuda" if cfg.scaling.use_gpu else "cpu")
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    resumed = any(p.is_dir() for p in run_dir.glob(CHECKPOINT_GLOB))
    if resumed:
        print(f"[argus] run directory {run_dir} has checkpoints: resuming from the latest", flush=True)
    config_path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    print(f"[argus] run directory: {run_dir}", flush=True)
    init_ray(cfg.scaling.local_num_cpus, quiet=not cfg.run.verbose)
    say_where_logs_go(run_dir, "run.verbose=true")
    started = time.time()
    prepared = prepare_data(cfg.data, run_dir)
    v = prepared.summary["validation"]
    print(
        f"[argus] data: {prepared.summary['num_users']:,} users, {prepared.summary['num_items']:,} items, "
        f"{v['clean_rows']:,} events; {v['quarantined_rows']:,} rows quarantined {v['quarantine_reasons'] or ''}; "
        f"split {cfg.data.split} rows {prepared.summary['rows']} ({time.time() - started:.0f}s)",
        flush=True,
    )
    if prepared.item_features:
        st = prepared.item_features.stats
        print(
            f"[argus] item features {st['values']} (values per feature) from {st['path']}: "
            f"{st['quarantined_rows']:,} rows quarantined"
            f"{' ' + str(st['quarantine_reasons']) if st['quarantine_reasons'] else ''}, "
            f"{st['rows_outside_catalogue']:,} rows outside the catalogue, "
            f"{st['catalogue_items_without_features']:,} catalogue items without a row",
            flush=True,
        )
    model_schema(prepared, cfg.model).save(run_dir / "schema.json")
    datasets = {
        split: split_dataset(path, cfg.optim.seed if split == "train" else None)
        for split, path in prepared.paths.items()
    }
    trainer = make_trainer(
        train_loop_per_worker,
        {"job": to_dict(cfg), "run_dir": str(run_dir)},
        cfg.scaling,
        run_dir,
        datasets,
        keep=cfg.run.checkpoints_to_keep,
        max_failures=cfg.run.max_failures,
        callbacks=callbacks,
    )
    result = fit(trainer, run_dir)
    final = (result.metrics or {}).get("final")
    if not final:
        raise RuntimeError(f"training finished without final metrics; see the logs above and {run_dir}")
    final["run_dir"] = str(run_dir)
    final["data"] = {
        k: prepared.summary[k] for k in ("num_users", "num_items", "rows", "validation", "users_too_short")
    }
    final["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    final["seconds"] = round(time.time() - started, 1)
    (run_dir / "metrics.json").write_text(json.dumps(final, indent=2))
    return final


def make_trainer(
    loop,
    loop_config: dict,
    scaling: ScalingCfg,
    run_dir: Path,
    datasets: dict,
    keep: int,
    max_failures: int = 0,
    callbacks: list | None = None,
) -> TorchTrainer:
    """The TorchTrainer of a job (pre-training and fine-tuning): `loop` on `scaling.num_workers`
    workers, checkpoints in `run_dir` (the `keep` best by the reported `checkpoint_score` and the
    latest), the splits sharded by `SplitConfig`."""
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            # the best `keep` by the loop's validation score, and always the latest (Ray Train keeps it)
            checkpoint_config=CheckpointConfig(
                num_to_keep=keep, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=SplitConfig(),
    )


def say_where_logs_go(run_dir: Path, verbose_key: str, prefix: str = "[argus]") -> None:
    """With a quiet Ray: link Ray's session logs into <run dir>/logs and say so."""
    if _QUIET["ray"]:
        where = link_ray_logs(run_dir)
        print(
            f"{prefix} Ray's, Ray Data's and the workers' own output: {where or 'the cluster (ray logs)'} "
            f"({verbose_key} prints it here)",
            flush=True,
        )


def fit(trainer, run_dir: Path):
    """`trainer.fit()`; with a quiet Ray the workers' output stays in Ray's logs, and rank 0's
    progress lines are printed from <run dir>/logs/progress.log (`console.tee_progress`)."""
    if not _QUIET["ray"]:
        return trainer.fit()
    with Follow(run_dir / PROGRESS_LOG):
        return trainer.fit()


def format_summary(final: dict) -> str:
    """Model vs popularity on the test split, as a small table."""
    pop = final["baselines"]["popularity"]["test"]
    test = final["test"]
    keys = [k for k in ("ndcg@10", "hr@10", "ndcg@100", "hr@100", "mrr", "coverage@10") if k in test]
    lines = [f"{'test metric':<14}{'model':>10}{'± s.e.':>9}{'popularity':>12}"]
    for k in keys:
        se = _num(test[f"{k}_se"], "± ") if f"{k}_se" in test else ""  # standard error over the test users
        lines.append(f"{k:<14}{_num(test[k]):>10}{se:>9}{_num(pop[k]):>12}")
    heads = sorted(k for k in test if "/" in k)
    lines += [f"{k:<24}{_num(test[k]):>10}" for k in heads]
    lines.append(f"best epoch {final['best_epoch']} of {final['epochs_trained']}; run {final['run_dir']}")
    lines.append(f"checkpoint {final['checkpoint']}")
    return "\n".join(lines)


def _num(value, prefix: str = "") -> str:
    """4-decimal figure, or n/a (e.g. an AUC over a single class is undefined)."""
    return "n/a" if value is None else f"{prefix}{value:.4f}"
