"""Load a training checkpoint for inference in one process, without the training code.

The checkpoint's model state was written sharded through `torch.distributed.checkpoint`; DCP
reshards on load, so asking for plain full-size tensors returns whole tables whatever the
training plan was (row-, table- or column-wise, any world size).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import yaml

from argus_models.config import ModelConfig, ModelSchema
from argus_models.model import ArgusDenseArch, embedding_configs

_log = logging.getLogger(__name__)

DENSE_PREFIX = "objective.dense."
TABLE_PREFIX = "sparse.ec.embeddings."


@dataclass
class InferenceModel:
    """Dense arch in eval mode plus full embedding tables keyed by table name."""

    config: ModelConfig
    schema: ModelSchema
    dense: ArgusDenseArch
    tables: dict[str, torch.Tensor]


def _model_config(checkpoint: Path) -> ModelConfig:
    path = checkpoint / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not an Argus checkpoint: config.yaml is missing")
    section = (yaml.safe_load(path.read_text()) or {}).get("model", {})
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{path}: model keys {unknown} are unknown to this code (known: {sorted(known)})")
    return ModelConfig(**section)


def load_inference_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> InferenceModel:
    """Rebuild the model of a checkpoint directory written by the training job."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / ".metadata").is_file():
        raise FileNotFoundError(f"{checkpoint} holds no torch.distributed.checkpoint state (.metadata missing)")
    cfg = _model_config(checkpoint)
    schema = ModelSchema.load(checkpoint / "schema.json")
    dense = ArgusDenseArch(cfg, schema)
    state = {DENSE_PREFIX + k: v for k, v in dense.state_dict().items()}
    for table in embedding_configs(schema, cfg.embedding_dim):
        state[f"{TABLE_PREFIX}{table.name}.weight"] = torch.empty(table.num_embeddings, table.embedding_dim)
    with warnings.catch_warnings():  # a single-process load is the point here, not an accident
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load({"model": state}, checkpoint_id=str(checkpoint), no_dist=True)
    dense.load_state_dict({k[len(DENSE_PREFIX) :]: v for k, v in state.items() if k.startswith(DENSE_PREFIX)})
    tables = {
        k[len(TABLE_PREFIX) : -len(".weight")]: v.to(device) for k, v in state.items() if k.startswith(TABLE_PREFIX)
    }
    tables = dense.to(device).local_tables(tables)  # multi-hash: each item's [E_item ; E_h1 ; …] row
    return InferenceModel(config=cfg, schema=schema, dense=dense.to(device).eval(), tables=tables)


# -- finding the checkpoint of a run ------------------------------------------------------------
# A run directory holds the `checkpoint_*` folders Ray Train wrote; a checkpoint directory holds
# `.metadata` (DCP) plus config.yaml, schema.json, spec.json, vocab/, train_state.json.

HOME_ENV = "ARGUS_HOME"  # relative paths resolve against this (default: the working directory)


class CheckpointError(ValueError):
    """A run or checkpoint that cannot be read; the message says which path and why."""


def absolute(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(os.environ.get(HOME_ENV, os.getcwd())) / p).resolve()


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if (p / ".metadata").is_file())


def checkpoint_epoch(checkpoint: Path) -> dict:
    """The checkpoint's train_state.json (epoch, best_epoch, ...), {} when absent."""
    path = checkpoint / "train_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def best_checkpoint(run_dir: Path) -> Path:
    """The kept checkpoint of the run's best validation epoch, else the latest one."""
    ckpts = _checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"{run_dir} holds no checkpoint_* directory with a .metadata file; is it a training run?")
    best_epoch = checkpoint_epoch(ckpts[-1]).get("best_epoch")
    for ckpt in reversed(ckpts):
        if checkpoint_epoch(ckpt).get("epoch") == best_epoch:
            return ckpt
    _log.warning(
        "%s: the best epoch's (%s) checkpoint was not kept; serving the latest, %s", run_dir, best_epoch, ckpts[-1].name
    )
    return ckpts[-1]


def resolve_checkpoint(path: str = "", runs_root: str = "runs") -> Path:
    """A checkpoint dir as is; a run dir → its best checkpoint; "" → newest run under runs_root."""
    if path:
        p = absolute(path)
        if not p.exists():
            raise CheckpointError(f"checkpoint={path!r}: {p} does not exist")
        return p if (p / ".metadata").is_file() else best_checkpoint(p)
    root = absolute(runs_root)
    runs = [d for d in root.glob("*") if d.is_dir() and _checkpoints(d)] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no training run with checkpoints under {root}; train one (`make run`) or pass checkpoint=<run dir>"
        )
    newest = max(runs, key=lambda d: _checkpoints(d)[-1].stat().st_mtime)
    return best_checkpoint(newest)


def wait_for_run(path: str, timeout_s: float, poll_s: float = 10.0) -> None:
    """Block until the training run at `path` has finished (its metrics.json exists), so a tuning
    job or a service started beside the training job (e.g. one `kubectl apply`) uses its best
    checkpoint. `timeout_s` 0 returns at once; past it, CheckpointError names the path."""
    if timeout_s <= 0:
        return
    run_dir = absolute(path)
    done = run_dir / "metrics.json"
    deadline = time.monotonic() + timeout_s
    last_said = 0.0
    while not done.is_file():
        now = time.monotonic()
        if now >= deadline:
            raise CheckpointError(f"{run_dir}: training did not finish within {timeout_s:g}s (no metrics.json)")
        if now - last_said >= 60:
            kept = len(_checkpoints(run_dir)) if run_dir.is_dir() else 0
            _log.warning(
                "waiting for the training run %s to finish (%d checkpoint(s) so far; %.0fs left)",
                run_dir,
                kept,
                deadline - now,
            )
            last_said = now
        time.sleep(min(poll_s, max(deadline - now, 0.1)))
