"""Load a training checkpoint for inference in one process, without the training code.

The checkpoint's model state was written sharded through `torch.distributed.checkpoint`; DCP
reshards on load, so asking for plain full-size tensors returns whole tables whatever the
training plan was (row-, table- or column-wise, any world size). Finding a run's checkpoint:
`argus_models.rundir`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import yaml

from argus_models.config import ModelConfig, ModelSchema
from argus_models.model import ArgusDenseArch, table_groups

DENSE_PREFIX = "objective.dense."


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
    prefixes = []
    for group, configs in table_groups(schema, cfg.embedding_dim).items():
        prefixes.append(f"sparse.{group}.embeddings.")
        for table in configs:
            state[f"{prefixes[-1]}{table.name}.weight"] = torch.empty(table.num_embeddings, table.embedding_dim)
    with warnings.catch_warnings():  # a single-process load is the point here, not an accident
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load({"model": state}, checkpoint_id=str(checkpoint), no_dist=True)
    dense.load_state_dict({k[len(DENSE_PREFIX) :]: v for k, v in state.items() if k.startswith(DENSE_PREFIX)})
    tables = {
        k[len(prefix) : -len(".weight")]: v.to(device)
        for k, v in state.items()
        for prefix in prefixes
        if k.startswith(prefix)
    }
    tables = dense.to(device).local_tables(tables)  # multi-hash / RecJPQ: each item's whole row
    return InferenceModel(config=cfg, schema=schema, dense=dense.to(device).eval(), tables=tables)


# -- finding the checkpoint of a run ------------------------------------------------------------
