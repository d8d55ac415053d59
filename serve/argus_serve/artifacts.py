"""What a replica loads from a training run: the checkpoint to serve, its model, vocabulary and
action definitions. Reads only the run's files (argus_models.contract), never the training code.

A *run directory* holds `checkpoint_*` folders written by Ray Train; a *checkpoint directory*
holds `.metadata` (DCP) plus config.yaml, schema.json, spec.json, vocab/, train_state.json.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from argus_models.checkpoint import InferenceModel, load_inference_model
from argus_models.contract import Vocabulary
from argus_models.inference import item_vectors

log = logging.getLogger(__name__)

HOME_ENV = "ARGUS_HOME"  # relative paths resolve against this (default: the working directory)


class ArtifactError(ValueError):
    """A run or checkpoint that cannot be served; the message says which path and why."""


def absolute(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(os.environ.get(HOME_ENV, os.getcwd())) / p).resolve()


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if (p / ".metadata").is_file())


def _epoch(checkpoint: Path) -> dict:
    path = checkpoint / "train_state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def best_checkpoint(run_dir: Path) -> Path:
    """The kept checkpoint of the run's best validation epoch, else the latest one."""
    ckpts = _checkpoints(run_dir)
    if not ckpts:
        raise ArtifactError(f"{run_dir} holds no checkpoint_* directory with a .metadata file; is it a training run?")
    best_epoch = _epoch(ckpts[-1]).get("best_epoch")
    for ckpt in reversed(ckpts):
        if _epoch(ckpt).get("epoch") == best_epoch:
            return ckpt
    log.warning("%s: the best epoch's (%s) checkpoint was not kept; serving the latest, %s", run_dir, best_epoch, ckpts[-1].name)
    return ckpts[-1]


def resolve_checkpoint(path: str = "", runs_root: str = "runs") -> Path:
    """A checkpoint dir as is; a run dir → its best checkpoint; "" → newest run under runs_root."""
    if path:
        p = absolute(path)
        if not p.exists():
            raise ArtifactError(f"checkpoint={path!r}: {p} does not exist")
        return p if (p / ".metadata").is_file() else best_checkpoint(p)
    root = absolute(runs_root)
    runs = [d for d in root.glob("*") if d.is_dir() and _checkpoints(d)] if root.is_dir() else []
    if not runs:
        raise ArtifactError(
            f"no training run with checkpoints under {root}; train one (`make run`) or pass checkpoint=<run dir>"
        )
    newest = max(runs, key=lambda d: _checkpoints(d)[-1].stat().st_mtime)
    return best_checkpoint(newest)


def run_dir_of(checkpoint: Path) -> Path:
    """Ray Train writes checkpoints inside the run directory."""
    return checkpoint.parent


@dataclass
class ActionInfo:
    """One action of the run's data spec, as Serve needs it to read request histories."""

    name: str
    kind: str  # binary | ratio | graded
    num_codes: int
    levels: list[float] = field(default_factory=list)


def read_actions(checkpoint: Path) -> list[ActionInfo]:
    spec = json.loads((checkpoint / "spec.json").read_text())
    out = []
    for a in spec.get("actions", []):
        codes = {"binary": 2, "ratio": a.get("buckets", 10), "graded": len(a.get("levels", []))}[a["kind"]]
        out.append(ActionInfo(name=a["name"], kind=a["kind"], num_codes=codes, levels=list(a.get("levels", []))))
    return out


@dataclass
class ServingModel:
    """A loaded checkpoint: the one-process model plus what the scoring side needs."""

    checkpoint: Path
    version: str  # <run>/<checkpoint>@epoch<e>
    model: InferenceModel
    vocab_version: str
    item_vectors: torch.Tensor  # [C+1, D] as the retrieval side scores them

    @property
    def num_items(self) -> int:
        return self.model.schema.num_items


def model_version(checkpoint: Path) -> str:
    epoch = _epoch(checkpoint).get("epoch", "?")
    return f"{checkpoint.parent.name}/{checkpoint.name}@epoch{epoch}"


def vocab_version(checkpoint: Path) -> str:
    meta = checkpoint / "vocab" / "vocab.json"
    if not meta.is_file():
        raise ArtifactError(f"{checkpoint} has no vocab/vocab.json; it was not written by the training job")
    return json.loads(meta.read_text())["version"]


def load_serving_model(checkpoint: str | Path) -> ServingModel:
    ckpt = absolute(checkpoint)
    try:
        model = load_inference_model(ckpt)
    except (FileNotFoundError, ValueError) as exc:
        raise ArtifactError(str(exc)) from exc
    return ServingModel(checkpoint=ckpt, version=model_version(ckpt), model=model, vocab_version=vocab_version(ckpt),
                        item_vectors=item_vectors(model))


def load_vocabulary(checkpoint: Path) -> Vocabulary:
    return Vocabulary.load(checkpoint / "vocab")


def popularity(checkpoint: Path) -> np.ndarray:
    return np.load(checkpoint / "train_item_counts.npy")
