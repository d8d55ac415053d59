"""`jobs/bench_torchrec.py`: what TorchRec costs against plain PyTorch tables, same model, same batches.

Both sides train the same task (`build_task`: encoder, heads, corrected-logQ loss) from the same
initial weights on the same collated batches, one process, one thread:

  plain     `nn.Embedding(sparse=True)` tables looked up with `F.embedding`, `torch.optim.Adagrad` on
            their sparse gradients (element-wise Adagrad), AdamW on the dense arch
  torchrec  the training loop's path with one worker: planner → DistributedModelParallel (FBGEMM's
            fused EXACT_ADAGRAD in the backward) → TrainPipelineSparseDist, on a 1-rank gloo group

and the ratio plain ÷ torchrec of the mean step time (≥ 1: TorchRec is no slower).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from argus_models.config import ModelSchema
from argus_models.model import ITEM, NEG_ITEM, embedding_configs, jagged_to_padded, table_name
from argus_platform.config import TrainJobConfig
from argus_platform.sharding.plan import shard
from argus_platform.sharding.task import build_task


class PlainTables(nn.Module):
    """The sparse arch's contract (`ArgusSparseArch.forward`) over `nn.Embedding(sparse=True)` tables."""

    def __init__(self, schema: ModelSchema, dim: int, init: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.tables = nn.ModuleDict(
            {
                t.name: nn.Embedding(t.num_embeddings, dim, sparse=True, _weight=init[t.name].clone())
                for t in embedding_configs(schema, dim)
            }
        )

    def forward(self, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        jagged = {}
        for key in features.keys():
            jt = features[key]
            jagged[key] = (self.tables[table_name(ITEM if key == NEG_ITEM else key)](jt.values()), jt.lengths())
        return jagged_to_padded(jagged)


@dataclass
class Overhead:
    plain_ms: float
    torchrec_ms: float
    steps: int
    first_loss_plain: float  # the same initial weights and batch: equal up to float noise
    first_loss_torchrec: float
    loss_plain: float
    loss_torchrec: float

    @property
    def ratio(self) -> float:
        """plain ÷ torchrec step time (≥ 1: TorchRec no slower)."""
        return self.plain_ms / self.torchrec_ms


def _time_plain(
    cfg: TrainJobConfig,
    schema: ModelSchema,
    counts: torch.Tensor,
    init: dict,
    dense_init: dict,
    batches: list,
    warmup: int,
) -> tuple[float, float, float]:
    task = build_task(cfg, schema, counts)
    task.sparse = PlainTables(schema, cfg.model.embedding_dim, init)
    task.objective.dense.load_state_dict(dense_init)
    sparse_opt = torch.optim.Adagrad(task.sparse.parameters(), lr=cfg.optim.sparse_lr, eps=1e-8)
    dense_opt = torch.optim.AdamW(
        task.objective.parameters(), lr=cfg.optim.dense_lr, weight_decay=cfg.optim.weight_decay
    )
    times, losses = [], []
    torch.manual_seed(1)  # in-batch negatives and dropout draw the same numbers on both sides
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        loss_t, _ = task(batch)
        loss_t.backward()
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad(set_to_none=True)
        dense_opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss_t.item())
    return float(np.mean(times)) * 1000, losses[0], losses[-1]


def _time_torchrec(
    cfg: TrainJobConfig,
    schema: ModelSchema,
    counts: torch.Tensor,
    init: dict,
    dense_init: dict,
    batches: list,
    warmup: int,
) -> tuple[float, float, float]:
    sharded = shard(cfg, schema, counts, torch.device("cpu"))
    state = sharded.model.state_dict()
    for name, weight in init.items():  # the same initial tables as the plain side
        for key, value in state.items():
            if key.endswith(f"embeddings.{name}.weight"):
                local = value.local_shards()[0].tensor if hasattr(value, "local_shards") else value
                local.copy_(weight)
    sharded.dense.load_state_dict(dense_init)
    pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, torch.device("cpu"))
    it = iter(batches)
    times, losses, i = [], [], 0
    torch.manual_seed(1)
    while True:
        t0 = time.perf_counter()
        try:
            logs = pipeline.progress(it)
        except StopIteration:
            break
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(logs["loss"]))
        i += 1
    del pipeline, sharded
    return float(np.mean(times)) * 1000, losses[0], losses[-1]


def measure(cfg: TrainJobConfig, schema: ModelSchema, counts: torch.Tensor, batches: list, warmup: int = 3) -> Overhead:
    """Both sides on the same batches (each side's first `warmup` steps are not timed)."""
    cfg = replace(
        cfg,
        optim=replace(
            cfg.optim,
            sparse_optimizer="adagrad",
            sparse_weight_decay=0.0,
            grad_clip=0.0,
            precision="fp32",
            warmup_steps=0,
        ),
    )
    torch.manual_seed(0)
    init = {
        t.name: torch.empty(t.num_embeddings, t.embedding_dim).normal_(0, t.embedding_dim**-0.5)
        for t in embedding_configs(schema, cfg.model.embedding_dim)
    }
    dense_init = {k: v.clone() for k, v in build_task(cfg, schema, counts).objective.dense.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        own_group = not dist.is_initialized()
        if own_group:
            dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'pg'}", rank=0, world_size=1)
        torchrec_ms, first_t, loss_t = _time_torchrec(cfg, schema, counts, init, dense_init, batches, warmup)
        plain_ms, first_p, loss_p = _time_plain(cfg, schema, counts, init, dense_init, batches, warmup)
        if own_group:
            dist.destroy_process_group()
    return Overhead(plain_ms, torchrec_ms, len(batches) - warmup, first_p, first_t, loss_p, loss_t)


def prepared_batches(run_dir: Path, collate, batch_size: int, steps: int) -> list:
    """`steps` collated training batches from a prepared run's train split."""
    table = pq.ParquetDataset(str(run_dir / "data" / "train")).read()
    if table.num_rows < batch_size * steps:
        raise ValueError(
            f"the train split of {run_dir} has {table.num_rows} rows; {steps} steps of {batch_size} need more"
        )
    return [collate(table.slice(i * batch_size, batch_size)) for i in range(steps)]
