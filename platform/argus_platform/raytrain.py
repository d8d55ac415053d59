"""The Ray side every job of this project shares: joining or starting Ray (quiet or not), the
TorchTrainer of pre-training and fine-tuning, how its datasets are split over the workers, and
where Ray's own output goes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import argus_models
import argus_platform
from argus_platform.config import ScalingCfg
from argus_platform.console import PROGRESS_LOG, Follow, link_ray_logs
from argus_platform.worker import CHECKPOINT_SCORE

# Shipped to every Ray worker, so a cluster without the project installed can import it.
PACKAGES = [Path(argus_platform.__file__).resolve().parent, Path(argus_models.__file__).resolve().parent]


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


CLUSTER_MAX_FAILURES = 2  # run.max_failures=auto on a cluster


def resolve_max_failures(value: int | str) -> int:
    """run.max_failures: `auto` is CLUSTER_MAX_FAILURES when the job joins a cluster (RAY_ADDRESS),
    0 on a local Ray; a number is itself."""
    if value != "auto":
        return int(value)
    return CLUSTER_MAX_FAILURES if os.environ.get("RAY_ADDRESS") else 0


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
