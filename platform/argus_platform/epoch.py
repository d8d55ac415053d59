"""What pre-training (`train_loop`) and fine-tuning (`finetune.loop`) share: the epoch of
`TrainPipelineSparseDist` steps, the setup of a worker, the choice of the best evaluation and the
checkpoint-and-report that ends an evaluated epoch. The loops differ only in what they put
around these: schedules, budgets and progress lines in one, slate metrics in the other."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from argus_platform.checkpoint import TrainState, save_checkpoint
from argus_platform.config import TrainJobConfig
from argus_platform.precision import resolve_precision
from argus_platform.sharding.plan import ShardedTask
from argus_platform.worker import Report


def say(msg: str) -> None:
    """A progress line, printed by rank 0 only."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


def start_worker(cfg: TrainJobConfig, seed: int, device: torch.device) -> str:
    """The process setup every loop starts with: threads, seed, quiet TorchRec; returns the precision
    chosen for `device` (printed by rank 0)."""
    # TorchRec's pipeline logs every drained batch at INFO; keep worker output to our progress lines.
    for noisy in ("torchrec", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg.scaling.apply_to_process()
    torch.manual_seed(seed + dist.get_rank())
    precision, why = resolve_precision(cfg.optim.precision, device)
    say(f"[argus] precision: {precision} ({why})")
    return precision


@dataclass
class EpochStats:
    steps: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    input_wait_seconds: float = 0.0  # spent waiting for the next Arrow batch (the step not counted)
    stopped: bool = False  # `after_step` ended the epoch before its batches ran out
    logs: dict = field(default_factory=dict)  # the last step's losses

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


def train_epoch(
    pipeline: TrainPipelineSparseDist,
    model: torch.nn.Module,
    tables: Iterable[pa.Table],
    collate: Callable,
    empty: str,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[EpochStats, float], bool] | None = None,
) -> EpochStats:
    """One pass over `tables` (this rank's shard: equal full batches on every rank), collated and
    stepped through the pipeline. `before_step()` runs before each step (learning rates);
    `after_step(stats, seconds into the epoch)` after it, and ends the epoch when it returns True
    (every rank must return the same). An epoch without a step raises, `empty` saying what to change."""
    model.train()
    pipeline.reset()
    stats, waited = EpochStats(), [0.0]
    batches = map(collate, _timed(tables, waited))
    t0 = time.time()
    while True:
        if before_step is not None:
            before_step()
        try:
            logs = pipeline.progress(batches)
        except StopIteration:
            break
        stats.steps += 1
        stats.loss_sum += float(logs["loss"])
        stats.logs = logs
        if after_step is not None and after_step(stats, time.time() - t0):
            stats.stopped = True
            break
    stats.seconds, stats.input_wait_seconds = time.time() - t0, waited[0]
    if stats.steps == 0:
        raise RuntimeError(f"no training batches: {empty}")
    return stats


def _timed(batches: Iterable, waited: list[float]) -> Iterator:
    """`batches`, adding the seconds spent waiting for each one to waited[0] (an input-bound epoch
    shows here: the step itself is not counted)."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield batch


def improved(state: TrainState, score: float) -> bool:
    """Whether this evaluation is the best so far (then it is recorded as such). The score is the
    same reduced figure on every rank, so every rank takes the same (collective) branch after it."""
    if score > state.best_validation:
        state.best_validation, state.best_epoch, state.evals_without_gain = score, state.epoch, 0
        return True
    state.evals_without_gain += 1
    return False


def checkpoint_and_report(
    sharded: ShardedTask,
    state: TrainState,
    cfg: TrainJobConfig,
    run_dir: Path,
    metrics: dict,
    report: Report,
    before_report: Callable[[Path], None] | None = None,
) -> float:
    """Save this epoch's checkpoint (every rank its shards) and report it with `metrics`, after
    `before_report(checkpoint dir)` where given; returns the seconds."""
    t = time.time()
    with tempfile.TemporaryDirectory(prefix="argus-ckpt-") as tmp:
        save_checkpoint(Path(tmp), sharded, state, cfg, run_dir, dist.get_rank())
        if before_report is not None:
            before_report(Path(tmp))
        report(metrics, Path(tmp))
    return time.time() - t
