"""What a replica loads from a training run: the checkpoint to serve, its model, vocabulary and
action definitions. Reads only the run's files (argus_models.contract), never the training code.

A *run directory* holds `checkpoint_*` folders written by Ray Train; a *checkpoint directory*
holds `.metadata` (DCP) plus config.yaml, schema.json, spec.json, vocab/, train_state.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from argus_models.checkpoint import InferenceModel, load_inference_model
from argus_models.contract import Vocabulary
from argus_models.inference import item_vectors
from argus_models.rundir import (
    CheckpointError,
    absolute,
    best_checkpoint,
    checkpoint_epoch,
    resolve_checkpoint,
    wait_for_run,
)

log = logging.getLogger(__name__)

# Finding a run's checkpoint is shared with the training side (argus_models.checkpoint).
__all__ = [
    "ArtifactError",
    "ActionInfo",
    "ServingModel",
    "absolute",
    "best_checkpoint",
    "load_serving_model",
    "load_vocabulary",
    "read_actions",
    "resolve_checkpoint",
    "run_dir_of",
    "serving_dir",
    "wait_for_run",
]

ArtifactError = CheckpointError  # the errors of this module name paths the same way


def run_dir_of(checkpoint: Path) -> Path:
    """Ray Train writes checkpoints inside the run directory."""
    return checkpoint.parent


def serving_dir(run_dir: Path) -> Path:
    """Where Serve keeps what it derives from a run once (user store, ANN index): `<run>/serving`,
    or a folder under the temporary directory when the run directory is read-only."""
    d = Path(run_dir) / "serving"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"argus-serving-{hashlib.sha256(str(d).encode()).hexdigest()[:12]}"
    fallback.mkdir(exist_ok=True)
    log.warning("%s is not writable; Serve keeps its derived files in %s", d, fallback)
    return fallback


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
    epoch = checkpoint_epoch(checkpoint).get("epoch", "?")
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
    return ServingModel(
        checkpoint=ckpt,
        version=model_version(ckpt),
        model=model,
        vocab_version=vocab_version(ckpt),
        item_vectors=item_vectors(model),
    )


def load_vocabulary(checkpoint: Path) -> Vocabulary:
    return Vocabulary.load(checkpoint / "vocab")
