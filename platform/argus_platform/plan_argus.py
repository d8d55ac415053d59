"""Plan a training run for a GPU cluster on a machine without GPUs.

The real task is built with its tables on `meta`; the dense side's memory (weights, gradients,
AdamW state, activations at the configured batch and sequence length) is reserved first, and
TorchRec's `EmbeddingShardingPlanner` places the tables in what is left of each device. The plan
is then costed per rank from its shard sizes, so the figures follow from the plan itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import PlannerError
from torchrec.distributed.types import ShardingPlan

from argus_models.config import ModelSchema, multi_hash_buckets, recjpq_shape, time_buckets
from argus_models.model import embedding_configs, item_part_features
from argus_models.sizing import (
    activation_bytes_per_token,
    block_parameter_count,
    dense_parameter_count,
    embedding_parameter_count,
    max_encoder_tokens,
)
from argus_platform.config import TrainJobConfig, resolve_next_item_loss
from argus_platform.data.synthetic import synthetic_spec
from argus_platform.recipe import require_numbers
from argus_platform.sharding.plan import constraints_for, make_sharder, quiet_planner
from argus_platform.sharding.task import build_task

GiB = 1 << 30
DENSE_BYTES_PER_PARAM = 16  # float32 weight + float32 gradient + AdamW's two float32 moments
UVM_CACHE_LOAD_FACTOR = 0.2  # TorchRec's default HBM share of a fused_uvm_caching table


@dataclass
class Cluster:
    """The GPU topology to plan for."""

    world_size: int
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    host_memory_gb: float = 1024.0  # per node, shared by its GPUs (UVM tables live here)
    compute_device: str = "cuda"
    headroom: float = 0.10  # of each GPU kept free: CUDA context, NCCL buffers, allocator slack

    def validate(self) -> None:
        if self.world_size < 1 or self.gpus_per_node < 1:
            raise ValueError(f"world size {self.world_size} and GPUs per node {self.gpus_per_node} must be at least 1")
        if self.world_size % self.gpus_per_node and self.world_size > self.gpus_per_node:
            raise ValueError(f"world size {self.world_size} is not a multiple of {self.gpus_per_node} GPUs per node")
        if self.gpu_memory_gb <= 0 or not 0 <= self.headroom < 1:
            raise ValueError("GPU memory must be positive and headroom in [0, 1)")


@dataclass
class DeviceMemory:
    """Bytes on the most loaded device."""

    embeddings: int  # table shards + their optimizer state in HBM
    dense_weights: int
    dense_grads: int
    dense_optimizer: int
    activations: int  # encoder + embedding outputs + next-item logits
    embeddings_host: int = 0  # UVM (host) share of this rank's tables

    @property
    def total(self) -> int:
        return self.embeddings + self.dense_weights + self.dense_grads + self.dense_optimizer + self.activations


@dataclass
class ClusterPlan:
    cluster: Cluster
    schema: ModelSchema
    dense_params: dict[str, int]
    embedding_params: dict[str, int]
    dense_strategy: str  # "ddp" (replicated dense arch) or "fsdp2" (sharded over the world)
    configured_strategy: str  # the config's sharding.dense
    plan: ShardingPlan | None
    memory: DeviceMemory
    fits: bool
    reasons: list[str] = field(default_factory=list)
    tokens_per_device: int = 0


def planning_schema(cfg: TrainJobConfig, num_items: int, context_rows: int = 1000) -> ModelSchema:
    """The schema a run of `cfg` would have with a catalogue of `num_items` (context tables get
    `context_rows` rows: they are tiny next to the item table)."""
    spec = synthetic_spec() if cfg.data.source == "synthetic" else cfg.data.spec
    return ModelSchema(
        num_items=num_items,
        contexts={c: context_rows for c in spec.context_columns},
        actions=[a.head() for a in spec.actions],
        item_hash_buckets=multi_hash_buckets(cfg.model),
        **dict(zip(("recjpq_splits", "recjpq_sub_items"), recjpq_shape(cfg.model, num_items))),
        time_buckets=time_buckets(cfg.model, spec.event_time),
    )


def _dense_memory(cfg: TrainJobConfig, schema: ModelSchema, world: int, strategy: str) -> tuple[int, int, int]:
    total = dense_parameter_count(cfg.model, schema)["total"]
    # The item → part-row map (multi-hash buckets or RecJPQ codes, int64) is a buffer on every rank.
    item_map = 8 * (schema.num_items + 1) * len(item_part_features(schema))
    if strategy == "ddp":
        return 4 * total + item_map, 4 * total, 8 * total
    # FSDP2: each rank holds 1/world of weights, gradients and moments, plus two unsharded blocks
    # (the one computing and the one being prefetched).
    shard = -(-total // world)
    block = block_parameter_count(cfg.model, max_encoder_tokens(cfg.model, schema), schema.time_buckets)
    return 4 * shard + 2 * 4 * block + item_map, 4 * shard, 8 * shard


def activation_bytes(cfg: TrainJobConfig, schema: ModelSchema) -> tuple[int, int]:
    """(bytes, tokens) of one training step's activations on one device."""
    window = cfg.model.max_seq_len + 1
    tokens = cfg.optim.batch_size * window
    value = 2 if cfg.optim.precision == "bf16" or (cfg.optim.precision == "auto" and cfg.scaling.use_gpu) else 4
    encoder = tokens * activation_bytes_per_token(cfg.model, value, cfg.model.activation_checkpointing)
    features = 1 + len(schema.contexts) + len(schema.actions)
    lookups = 2 * tokens * features * cfg.model.embedding_dim * 4  # float32 lookups and their gradients
    if resolve_next_item_loss(cfg.loss, schema.num_items)[0].next_item == "full_softmax":
        negatives = schema.num_items
    else:
        negatives = cfg.loss.in_batch_negatives + cfg.loss.uniform_negatives
    logits = tokens * negatives * (value + 4 + 4)  # the matmul output, its float32 copy and gradient
    return encoder + lookups + logits, tokens


def _table_bytes(
    plan: ShardingPlan, shapes: dict[str, tuple[int, int]], optimizer: str, world: int
) -> tuple[list[int], list[int]]:
    """Per-rank (HBM, host) bytes of the table shards and their optimizer state."""
    hbm, host = [0] * world, [0] * world
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():
            if ps.sharding_type == "data_parallel":  # no shards: a full replica on every rank
                rows, cols = shapes[table]
                for r in ps.ranks or range(world):
                    hbm[r] += rows * cols * DENSE_BYTES_PER_PARAM  # trained by the dense optimizer
                continue
            for shard in ps.sharding_spec.shards:
                rows, cols = shard.shard_sizes
                weights = rows * cols * 4
                state = {"adam": rows * cols * 8, "adagrad": rows * cols * 4, "sgd": 0}.get(optimizer, rows * 4)
                r = shard.placement.rank()
                if ps.compute_kernel == "fused":
                    hbm[r] += weights + state
                elif ps.compute_kernel == "fused_uvm_caching":
                    load = (
                        ps.cache_params.load_factor
                        if ps.cache_params and ps.cache_params.load_factor
                        else UVM_CACHE_LOAD_FACTOR
                    )
                    hbm[r] += int(weights * load)
                    host[r] += weights + state
                else:  # fused_uvm, key_value, ...: weights and state in host memory
                    host[r] += weights + state
    return hbm, host


def plan_cluster(cfg: TrainJobConfig, schema: ModelSchema, cluster: Cluster) -> ClusterPlan:
    """Reserve the dense side, plan the tables with TorchRec, cost the plan per rank."""
    require_numbers(cfg, "jobs/plan_argus.py")
    cluster.validate()
    world = cluster.world_size
    configured = cfg.sharding.dense
    gpu = int(cluster.gpu_memory_gb * GiB)
    usable = int(gpu * (1 - cluster.headroom))
    acts, tokens = activation_bytes(cfg, schema)
    strategy = cfg.sharding.dense
    dense = _dense_memory(cfg, schema, world, strategy)
    if (
        strategy == "ddp" and sum(dense) + acts > usable // 2
    ):  # leave half of each GPU to the tables, else shard the dense side
        strategy = "fsdp2"
        dense = _dense_memory(cfg, schema, world, "fsdp2")
    # plan the tables as the run would shard them (FSDP2 owns the dense arch: no data-parallel tables)
    cfg = dataclasses.replace(cfg, sharding=dataclasses.replace(cfg.sharding, dense=strategy))
    reserved = cluster.headroom + (sum(dense) + acts) / gpu
    reasons = []
    plan = None
    if reserved >= 1:
        reasons.append(
            f"the dense side alone needs {(sum(dense) + acts) / GiB:.1f} GiB per device "
            f"(activations {acts / GiB:.1f} GiB for {tokens:,} tokens): lower optim.batch_size or "
            f"model.max_seq_len, or set model.activation_checkpointing=true"
        )
    else:
        topology = Topology(
            world_size=world,
            local_world_size=min(cluster.gpus_per_node, world),
            compute_device=cluster.compute_device,
            hbm_cap=gpu,
            ddr_cap=int(cluster.host_memory_gb * GiB / cluster.gpus_per_node),
        )
        planner = EmbeddingShardingPlanner(
            topology=topology,
            batch_size=tokens,
            storage_reservation=FixedPercentageStorageReservation(min(reserved, 1.0)),
            constraints=constraints_for(cfg, schema),
            debug=False,
        )
        # Everything on `meta`: the planner reads the tables' shapes, while a [catalogue] float buffer
        # (with the logQ terms made from it) and a 1B-parameter dense arch took GBs of host memory.
        counts = torch.ones(schema.num_items + 1, device="meta")
        task = build_task(cfg, schema, counts, cluster.compute_device, dense_on_meta=True)
        try:
            with quiet_planner():
                plan = planner.plan(task, [make_sharder(cfg)])
        except PlannerError as exc:
            reasons.append(f"TorchRec's planner found no placement of the tables: {str(exc).splitlines()[0]}")
    shapes = {t.name: (t.num_embeddings, t.embedding_dim) for t in embedding_configs(schema, cfg.model.embedding_dim)}
    hbm, host = _table_bytes(plan, shapes, cfg.optim.sparse_optimizer, world) if plan is not None else ([0], [0])
    top = max(range(len(hbm)), key=lambda r: hbm[r])
    memory = DeviceMemory(hbm[top], *dense, acts, embeddings_host=max(host))
    if plan is not None and memory.total > usable:
        reasons.append(f"{memory.total / GiB:.1f} GiB on rank {top} exceeds the {usable / GiB:.1f} GiB usable per GPU")
    if max(host) * min(cluster.gpus_per_node, world) > cluster.host_memory_gb * GiB:
        reasons.append(f"UVM tables need {max(host) * cluster.gpus_per_node / GiB:.1f} GiB of host memory per node")
    return ClusterPlan(
        cluster=cluster,
        schema=schema,
        dense_params=dense_parameter_count(cfg.model, schema),
        embedding_params=embedding_parameter_count(schema, cfg.model.embedding_dim),
        dense_strategy=strategy,
        configured_strategy=configured,
        plan=plan,
        memory=memory,
        fits=not reasons,
        reasons=reasons,
        tokens_per_device=tokens,
    )


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f} GiB"


def format_cluster_plan(p: ClusterPlan) -> str:
    c = p.cluster
    lines = [
        f"cluster: {c.world_size} x {c.compute_device} "
        f"({c.world_size // max(1, min(c.gpus_per_node, c.world_size))} nodes x "
        f"{min(c.gpus_per_node, c.world_size)}), {c.gpu_memory_gb:g} GB per GPU, {c.host_memory_gb:g} GB host per node",
        f"dense parameters: {p.dense_params['total']:,} ("
        + ", ".join(f"{k} {v:,}" for k, v in p.dense_params.items() if k != "total" and v)
        + ")",
        f"embedding parameters: {p.embedding_params['total']:,} ("
        + ", ".join(f"{k} {v:,}" for k, v in p.embedding_params.items() if k != "total")
        + ")",
        f"dense strategy: {p.dense_strategy}"
        + (
            " (replicated; gradients all-reduced)"
            if p.dense_strategy == "ddp"
            else " (dense weights, gradients and AdamW state sharded over the world)"
        )
        + (
            f"; the config says {p.configured_strategy}: train with --set sharding.dense={p.dense_strategy}"
            if p.configured_strategy != p.dense_strategy
            else ""
        ),
        "sharding plan:",
    ]
    if p.plan is None:
        lines.append("  (none)")
    else:
        for module_path, module_plan in p.plan.plan.items():
            for table, ps in module_plan.items():
                shards = ps.sharding_spec.shards if ps.sharding_spec is not None else []
                ranks = sorted({s.placement.rank() for s in shards}) or sorted(ps.ranks or [])
                size = f"{len(shards)} shards of {list(shards[0].shard_sizes)}" if shards else "replicated"
                lines.append(
                    f"  {table:<24} {ps.sharding_type:<14} {ps.compute_kernel:<18} {size} on {len(ranks)} rank(s)"
                )
    m = p.memory
    lines += [
        f"memory per device (most loaded rank, {p.tokens_per_device:,} tokens per step):",
        f"  embeddings + optimizer state {_gib(m.embeddings)}"
        + (f"   (+{m.embeddings_host / GiB:.2f} GiB in host memory)" if m.embeddings_host else ""),
        f"  dense weights                {_gib(m.dense_weights)}",
        f"  dense gradients              {_gib(m.dense_grads)}",
        f"  dense optimizer state        {_gib(m.dense_optimizer)}",
        f"  activations                  {_gib(m.activations)}",
        f"  total                        {_gib(m.total)} of {c.gpu_memory_gb * (1 - c.headroom):.1f} GiB usable "
        f"({c.headroom:.0%} headroom)",
        "fits: yes" if p.fits else "fits: NO\n" + "\n".join(f"  - {r}" for r in p.reasons),
    ]
    return "\n".join(lines)
