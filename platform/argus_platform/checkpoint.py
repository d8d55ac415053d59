"""Checkpoints: sharded model + optimizer state through `torch.distributed.checkpoint`, plus
what a reader needs without the training code (config, schema, spec, vocabulary, counts, step).

Layout of one checkpoint directory (each rank writes its own `__<rank>_0.distcp` shard; Ray
Train merges the workers' directories into one):
  .metadata, __*_*.distcp     DCP state {"model": ..., "optim": ...}
  train_state.json            epoch, step, best validation and the metrics history
  config.yaml, schema.json, spec.json, train_item_counts.npy, vocab/
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.distributed.checkpoint as dcp
import yaml

from argus_platform.configlib import to_dict

TRAIN_STATE = "train_state.json"


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_epoch: int = -1
    best_validation: float = float("-inf")
    best_metrics: dict = field(default_factory=dict)
    evals_without_gain: int = 0
    history: list = field(default_factory=list)
    resumed_at_epochs: list = field(default_factory=list)  # one entry per restart from a checkpoint
    train_seconds: float = 0.0  # seconds of training steps so far (optim.time_budget_minutes)
    eval_seconds: float = 0.0  # seconds of evaluations so far (the budget of optim.epochs=0 counts them)
    plan: dict = field(default_factory=dict)  # optim.epochs=0: the fitted EpochPlan, once made
    train_losses: list = field(default_factory=list)  # [epoch, mean training loss] of every epoch (curves.png)

    @classmethod
    def load(cls, directory: Path) -> "TrainState":
        return cls(**json.loads((Path(directory) / TRAIN_STATE).read_text()))


def save_checkpoint(directory: Path, sharded, state: TrainState, cfg, run_dir: Path, rank: int) -> None:
    """Collective: every rank writes its shards; rank 0 adds the metadata files."""
    directory.mkdir(parents=True, exist_ok=True)
    dcp.save(
        {"model": sharded.model.state_dict(), "optim": sharded.optimizer.state_dict()}, checkpoint_id=str(directory)
    )
    if rank == 0:
        write_train_state(directory, state)
        (directory / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        for name in ("schema.json", "spec.json"):
            shutil.copy(run_dir / name, directory / name)
        shutil.copy(run_dir / "vocab" / "train_item_counts.npy", directory / "train_item_counts.npy")
        shutil.copytree(run_dir / "vocab", directory / "vocab", dirs_exist_ok=True)


def write_train_state(directory: Path, state: TrainState) -> None:
    (Path(directory) / TRAIN_STATE).write_text(json.dumps(asdict(state), indent=2))


def load_checkpoint(directory: Path, sharded) -> TrainState:
    """Collective: restore model and optimizer shards in place; returns the saved train state.

    DCP loads into the tensors of the state dict it is given, and a fresh AdamW has no state yet
    (its moments appear at the first step): without a first step here the dense moments and step
    counts of the checkpoint would be silently skipped and a resumed run would restart them from
    zero. `init_state` takes one step on zero gradients (the parameters it touches are overwritten by
    the load right after); the fused table optimizer keeps its state from the start."""
    sharded.dense_optimizer.init_state()
    for param in sharded.dense_optimizer.params.values():
        param.grad = None
    state = {"model": sharded.model.state_dict(), "optim": sharded.optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(directory))
    sharded.model.load_state_dict(state["model"])
    sharded.optimizer.load_state_dict(state["optim"])
    return TrainState.load(directory)
