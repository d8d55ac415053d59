"""Plan and wrap: the planner's topology and constraints for the live process group, the checks
of what the device's kernels can run, and DistributedModelParallel (FSDP2 for the dense arch on
request) with one CombinedOptimizer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from argus_models.config import ModelSchema
from argus_models.model import ITEM, ArgusDenseArch, embedding_configs, item_part_features, table_name
from argus_models.task import ArgusTrainTask
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError
from argus_platform.precision import resolve_precision
from argus_platform.sharding.optimizers import dense_adamw, fused_params
from argus_platform.sharding.task import build_task


@dataclass
class ShardedTask:
    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    dense_optimizer: KeyedOptimizerWrapper
    plan: ShardingPlan

    @property
    def task(self) -> ArgusTrainTask:
        """The unwrapped task (DMP may wrap the dense part in DDP)."""
        module = self.model.module
        return module.module if isinstance(module, DistributedDataParallel) else module

    @property
    def dense(self) -> ArgusDenseArch:
        return self.task.objective.dense

    def eval_dense(self, cfg: TrainJobConfig) -> ArgusDenseArch:
        """The dense arch as evaluation uses it on one rank: itself when replicated; under FSDP2 a
        replicated copy (collective: ranks evaluate different numbers of batches, which sharded
        forwards could not)."""
        if cfg.sharding.dense != "fsdp2":
            return self.dense
        full = get_model_state_dict(self.dense, options=StateDictOptions(full_state_dict=True))
        device = next(iter(full.values())).device
        copy = ArgusDenseArch(self.dense.cfg, self.dense.schema).to(device)
        copy.load_state_dict(full)  # buffers too (the item tower's feature codes)
        return copy


class FullyShardDense(DataParallelWrapper):
    """FSDP2 for the dense arch (one unit per transformer block, then the rest), composed with
    TorchRec's sharded tables: DMP calls this instead of wrapping the unsharded part in DDP.
    Requires that no table is data-parallel (`shard` constrains the plan), so every parameter
    outside the tables belongs to the dense arch."""

    def __init__(self, precision: str) -> None:
        self.precision = precision

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dense = dmp._dmp_wrapped_module.objective.dense
        mesh = init_device_mesh(device.type, (env.world_size,))
        # Gradients are reduced in float32; with bf16, parameters are all-gathered in bf16.
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if self.precision == "bf16" else None, reduce_dtype=torch.float32
        )
        for block in dense.encoder.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        if dense.item_tower is not None:
            # its own unit: the objective calls it outside dense.forward (negatives, the catalogue),
            # where the root unit's parameters are resharded
            fully_shard(dense.item_tower, mesh=mesh, mp_policy=policy)
        if dense.item_proj is not None:  # likewise (multi-hash projection)
            fully_shard(dense.item_proj, mesh=mesh, mp_policy=policy)
        fully_shard(dense, mesh=mesh, mp_policy=policy)


def make_sharder(cfg: TrainJobConfig) -> EmbeddingCollectionSharder:
    return EmbeddingCollectionSharder(fused_params=fused_params(cfg))


def make_topology(
    world_size: int, local_world_size: int, compute_device: str, hbm_cap_bytes: int | None = None
) -> Topology:
    trainer = TrainerConfig(world_size=world_size, local_world_size=local_world_size, hbm_cap_bytes=hbm_cap_bytes)
    return TopologyFactory.create_topology(trainer, kernel_config=KernelConfig(compute_device=compute_device))


SHARDED_TYPES = ["row_wise", "table_wise", "column_wise", "table_row_wise", "table_column_wise"]


def constraints_for(cfg: TrainJobConfig, schema: ModelSchema) -> dict[str, ParameterConstraints] | None:
    fsdp2 = cfg.sharding.dense == "fsdp2"
    if cfg.sharding.sharding_type is None and cfg.sharding.compute_kernel is None and not fsdp2:
        return None
    if fsdp2 and cfg.sharding.sharding_type == "data_parallel":
        raise ValueError("sharding.dense=fsdp2 cannot be combined with sharding.sharding_type=data_parallel")
    constraints = {}
    for table in embedding_configs(schema, cfg.model.embedding_dim):
        kwargs = {}
        if cfg.sharding.sharding_type:
            kwargs["sharding_types"] = [cfg.sharding.sharding_type]
        elif fsdp2:
            # FSDP2 owns only the dense arch, so no table may be data-parallel; the small context and
            # feedback tables go whole to one rank each.
            item_sized = table.name == table_name(ITEM) or table.name.startswith(
                (table_name(ITEM) + "_h", table_name(ITEM) + "_q")
            )
            kwargs["sharding_types"] = SHARDED_TYPES if item_sized else ["table_wise"]
        if cfg.sharding.compute_kernel:
            kwargs["compute_kernels"] = [cfg.sharding.compute_kernel]
        constraints[table.name] = ParameterConstraints(**kwargs)
    return constraints


class _NoSpecForReplicatedTables(logging.Filter):
    """TorchRec warns "Sharding spec not found" for every data-parallel table: expected, as a
    replicated table has no shards to describe."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found")


@contextlib.contextmanager
def quiet_planner() -> Iterator[None]:
    root, flt = logging.getLogger(), _NoSpecForReplicatedTables()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def describe_plan(plan: ShardingPlan) -> str:
    lines = []
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            ranks = sorted({r for r in (ps.ranks or [])})
            shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
            sizes = (
                ", ".join(f"rank{s.placement.rank()}:{list(s.shard_sizes)}" for s in shards)
                if shards
                else f"ranks {ranks}"
            )
            lines.append(f"  {module_path}.{table}: {ps.sharding_type} / {ps.compute_kernel} ({sizes})")
    return "\n".join(lines)


def check_kernels(cfg: TrainJobConfig, device_type: str) -> None:
    """Refuse the table placements the device's FBGEMM kernels cannot run (before any worker starts).

    On CPU, FBGEMM's dense lookup (the only kernel of a data-parallel table) returns one pooled row
    per bag instead of one row per id for sequence tables, so the lookups come back with the wrong
    shape; replicated tables with AdamW need GPUs.
    """
    if device_type != "cpu":
        return
    forced = [
        f"sharding.{k}={v}"
        for k, v in (("sharding_type", cfg.sharding.sharding_type), ("compute_kernel", cfg.sharding.compute_kernel))
        if v in ("data_parallel", "dense")
    ]
    if forced:
        raise ConfigError(
            f"{' and '.join(forced)} needs GPUs (scaling.use_gpu=true): on CPU, FBGEMM's dense kernel "
            f"(the one a data-parallel table runs) does not support sequence embedding tables; leave "
            f"both unset on CPU (the planner shards the tables with the fused kernel)"
        )


def shard(
    cfg: TrainJobConfig,
    schema: ModelSchema,
    item_counts: torch.Tensor,
    device: torch.device,
    task: torch.nn.Module | None = None,
    item_codes: np.ndarray | None = None,
    item_parts: np.ndarray | None = None,
) -> ShardedTask:
    """Plan for the live process group and wrap in DMP (collective: every rank calls it).
    `task`: another module with the same `sparse` / `objective.dense` layout (fine-tuning);
    `item_codes` / `item_parts`: item-side feature codes and multi-hash bucket rows or RecJPQ codes
    (see `build_task`)."""
    if task is None and item_part_features(schema) and item_parts is None:
        raise ValueError("the schema has multi-hash or RecJPQ item tables but no item part rows were given")
    check_kernels(cfg, device.type)
    cfg = replace(cfg, optim=replace(cfg.optim, precision=resolve_precision(cfg.optim.precision, device)[0]))
    task = task if task is not None else build_task(cfg, schema, item_counts, device.type, item_codes, item_parts)
    sharder = make_sharder(cfg)
    world = dist.get_world_size()
    local_world = int(torch.cuda.device_count()) if device.type == "cuda" else world
    planner = EmbeddingShardingPlanner(
        topology=make_topology(world, max(1, min(local_world, world)), device.type),
        batch_size=cfg.optim.batch_size * (cfg.model.max_seq_len + 1),
        constraints=constraints_for(cfg, schema),
    )
    with quiet_planner():
        plan = planner.collective_plan(task, [sharder], dist.GroupMember.WORLD)
    wrapper = FullyShardDense(cfg.optim.precision) if cfg.sharding.dense == "fsdp2" else None
    model = DistributedModelParallel(task, device=device, plan=plan, sharders=[sharder], data_parallel_wrapper=wrapper)
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_opt = KeyedOptimizerWrapper(dense_params, lambda params: dense_adamw(cfg, list(params)))
    optimizer = CombinedOptimizer([model.fused_optimizer, dense_opt])
    return ShardedTask(model=model, optimizer=optimizer, dense_optimizer=dense_opt, plan=plan)
