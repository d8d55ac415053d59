"""What every Ray Train worker of this project starts with, pre-training and fine-tuning alike:
the progress tee on rank 0, its shards of the splits as Arrow batches, the report call and the
checkpoint Ray Train hands back on a restart. The loops themselves take these as plain callables,
so that torchrun (`argus_platform.torchrun`) drives the same loop without Ray."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from argus_platform.console import tee_progress

Iterate = Callable[[str, int], Iterable[pa.Table]]  # (split, batch_size) -> Arrow batches
Report = Callable[[dict, Path | None], None]  # (metrics, checkpoint dir or None)
SPLITS = ("train", "validation", "test")
# Every report that carries a checkpoint carries this finite validation score, by which the best
# checkpoints are kept (higher is better).
CHECKPOINT_SCORE = "checkpoint_score"


def finite_score(value: float) -> float:
    """A validation figure as the checkpoint score: NaN (no positives to score) ranks last."""
    return float(value) if math.isfinite(value) else -1.0


@dataclass
class WorkerIO:
    run_dir: Path
    iterate: Iterate
    report: Report
    device: torch.device


def shard_batches(shard, split: str, batch_size: int) -> Iterable[pa.Table]:
    """A worker's batches of one split: the training split shuffled locally and without its last
    partial batch (every rank takes the same number of full steps); held-out splits whole."""
    train = split == "train"
    return shard.iter_batches(
        batch_size=batch_size,
        batch_format="pyarrow",
        drop_last=train,
        local_shuffle_buffer_size=4 * batch_size if train else None,
        local_shuffle_seed=None,
    )


def run_ray_worker(config: dict, body: Callable[[WorkerIO, Path | None], None]) -> None:
    """Ray Train entry: `body(io, resume_dir)` with this worker's IO and the directory of the
    checkpoint Ray Train restored (None on a first start). `config["run_dir"]` names the run."""
    import ray.train
    import ray.train.torch

    run_dir = Path(config["run_dir"])
    if ray.train.get_context().get_world_rank() == 0:
        tee_progress(run_dir)  # the driver prints these lines when workers' output stays off the terminal
    shards = {s: ray.train.get_dataset_shard(s) for s in SPLITS}

    every_epoch = config.get("report_every_epoch", True)

    def report(metrics: dict, ckpt: Path | None) -> None:
        # A report waits until the controller has taken the previous one, and it looks every 2 s
        # (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): an epoch's report without a checkpoint cost ~1.5 s
        # on short epochs. Only Tune trials (ASHA's rungs) need them; training reports its evaluations.
        if ckpt is None and not every_epoch:
            return
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt)) if ckpt is not None else None
        ray.train.report(json_safe(metrics), checkpoint=checkpoint)

    io = WorkerIO(
        run_dir, lambda split, n: shard_batches(shards[split], split, n), report, ray.train.torch.get_device()
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        body(io, None)
        return
    with checkpoint.as_directory() as d:
        body(io, Path(d))


def json_safe(obj):
    """Metrics as JSON takes them: NaN and infinities as null, numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
