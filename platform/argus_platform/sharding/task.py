"""The unsharded ARGUS task: the dense arch, the tables on `meta`, and the objective with the
logQ correction of its sampled negatives (in-batch + uniform mixture)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import torch

from argus_models.config import ModelSchema
from argus_models.losses import mixed_log_q
from argus_models.model import ArgusDenseArch, ArgusSparseArch
from argus_models.task import ArgusObjective, ArgusTrainTask
from argus_platform.config import TrainJobConfig, resolve_next_item_loss
from argus_platform.precision import resolve_precision


def build_task(
    cfg: TrainJobConfig,
    schema: ModelSchema,
    item_counts: torch.Tensor,
    device_type: str = "cpu",
    item_codes: np.ndarray | None = None,
    item_parts: np.ndarray | None = None,
    dense_on_meta: bool = False,
) -> ArgusTrainTask:
    """The unsharded task with its tables on `meta`; `device_type` is where it will run (autocast);
    `item_codes`: the catalogue's item-side feature codes when the schema has item features;
    `item_parts`: its multi-hash bucket rows or RecJPQ codes when the schema has such tables; `dense_on_meta`: the
    dense arch on `meta` too (planning: a 1B-parameter arch would take 4 GiB of host memory)."""
    cfg = replace(cfg, loss=resolve_next_item_loss(cfg.loss, schema.num_items)[0])  # auto → the catalogue's loss
    probs = item_counts.double() / item_counts.sum().clamp_min(1)
    n_ib = cfg.loss.in_batch_negatives if cfg.loss.next_item != "full_softmax" else 0
    n_u = cfg.loss.uniform_negatives if cfg.loss.next_item != "full_softmax" else 1
    log_q = mixed_log_q(probs, n_ib, n_u) if n_ib + n_u > 0 else torch.zeros_like(probs)
    with torch.device("meta") if dense_on_meta else contextlib.nullcontext():
        dense = ArgusDenseArch(cfg.model, schema)
    if cfg.model.compile_blocks:
        dense.encoder.compile_blocks()
    if dense.item_tower is not None:
        if item_codes is None:
            raise ValueError("the schema has item features but no item feature codes were given")
        dense.item_tower.set_codes(torch.from_numpy(item_codes))
    if item_parts is not None:  # (the planner's dry run needs only the tables)
        if schema.recjpq_splits:
            dense.set_recjpq_codes(torch.from_numpy(item_parts))
        elif dense.item_proj is not None:
            dense.set_item_hashes(torch.from_numpy(item_parts))
    objective = ArgusObjective(
        dense,
        log_q=log_q,
        next_item_loss=cfg.loss.next_item,
        in_batch_negatives=n_ib,
        action_weights=cfg.loss.action_weights,
        temperature=cfg.loss.temperature,
        exclude_history=cfg.loss.exclude_history,
    )
    sparse = ArgusSparseArch(schema, cfg.model.embedding_dim, device="meta")
    precision = (
        cfg.optim.precision
        if cfg.optim.precision != "auto"
        else resolve_precision("auto", torch.device(device_type), collective=False)[0]
    )
    return ArgusTrainTask(sparse, objective, precision=precision, device_type=device_type)
