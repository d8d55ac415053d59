"""Scale: parameter counts by formula vs the built modules, presets, and TorchRec's planner for a
64-GPU topology run on this CPU-only machine (no GPU is touched)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import ROOT

from argus_models.config import ActionHead, ItemFeature, ModelConfig, ModelSchema
from argus_models.model import ArgusDenseArch, count_parameters, embedding_configs
from argus_models.sizing import dense_parameter_count
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config
from argus_platform.plan_argus import Cluster, GiB, plan_cluster, planning_schema

PRESETS = {"argus-3m": 3e6, "argus-30m": 30e6, "argus-300m": 300e6, "argus-1b": 1e9}


@pytest.mark.parametrize(
    "schema",
    [
        ModelSchema(num_items=50),
        ModelSchema(
            num_items=50,
            contexts={"source": 5, "hour": 25},
            actions=[ActionHead("like", "binary", 2), ActionHead("rating", "graded", 5)],
        ),
        ModelSchema(num_items=50, item_features=[ItemFeature("genre", 19, 6), ItemFeature("year", 82, 1)]),
        ModelSchema(num_items=50, item_features=[ItemFeature("genre", 19, 6)], item_hash_buckets=[101, 101]),
    ],
)
@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(embedding_dim=32, num_layers=2, num_heads=2),
        ModelConfig(
            embedding_dim=48, num_layers=3, num_heads=4, ffn_multiplier=3.0, positions="learned", max_seq_len=77
        ),
        ModelConfig(embedding_dim=32, num_layers=2, num_heads=2, tokenization="three_token"),
        ModelConfig(
            embedding_dim=32, num_layers=1, num_heads=2, tokenization="three_token", positions="learned", max_seq_len=9
        ),
        ModelConfig(embedding_dim=32, num_layers=2, num_heads=2, encoder="hstu", max_seq_len=20),
        ModelConfig(embedding_dim=32, num_layers=2, num_heads=2, encoder="hstu", tokenization="three_token"),
        ModelConfig(embedding_dim=32, num_layers=2, num_heads=2, encoder="dense_attention", positions="learned"),
    ],
)
def test_dense_parameter_count_matches_the_module(cfg, schema):
    for time_buckets in [0, 128] if cfg.encoder == "hstu" else [0]:  # HSTU with and without its time-gap bias
        schema = ModelSchema(**{**vars(schema), "time_buckets": time_buckets})
        counted = dense_parameter_count(cfg, schema)
        dense = ArgusDenseArch(cfg, schema)
        assert counted["total"] == count_parameters(dense)
        assert counted["encoder"] == count_parameters(dense.encoder)
        assert counted["item_head"] == count_parameters(dense.item_head)
        if schema.item_features:
            assert counted["item_features"] == count_parameters(dense.item_tower)
        if schema.item_hash_buckets:
            assert counted["item_proj"] == count_parameters(dense.item_proj)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_the_advertised_size(name):
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / f"{name}.yaml"), [])
    schema = planning_schema(cfg, cfg.data.synthetic.num_items)
    with torch.device("meta"):  # the 1B preset is built without allocating it
        built = count_parameters(ArgusDenseArch(cfg.model, schema))
    assert built == dense_parameter_count(cfg.model, schema)["total"]
    assert 0.9 * PRESETS[name] <= built <= 1.2 * PRESETS[name]
    # The header states the count the code computes.
    assert f"{built:,}" in (ROOT / "jobs" / "configs" / f"{name}.yaml").read_text().splitlines()[0]


def test_planner_shards_a_100m_item_table_over_64_gpus():
    cfg = TrainJobConfig()
    cfg.model.embedding_dim = 256
    plan = plan_cluster(
        cfg, planning_schema(cfg, 100_000_000), Cluster(world_size=64, gpus_per_node=8, gpu_memory_gb=80)
    )
    assert plan.fits, plan.reasons
    item = plan.plan.plan["sparse.ec"]["t_item"]
    assert item.sharding_type in ("row_wise", "table_row_wise", "column_wise", "table_column_wise")
    shards = item.sharding_spec.shards
    assert len({s.placement.rank() for s in shards}) > 8  # spread beyond one node
    assert sum(s.shard_sizes[0] * s.shard_sizes[1] for s in shards) == 100_000_001 * 256
    # 100M × 256 float32 weights + row-wise Adagrad state, spread over 64 GPUs, plus the small
    # tables the planner replicates (weights, gradients and AdamW moments on every rank)
    replicated = sum(ps.sharding_type == "data_parallel" for ps in plan.plan.plan["sparse.ec"].values())
    small = sum(t.num_embeddings * 256 * 16 for t in embedding_configs(plan.schema, 256) if t.name != "t_item")
    expected = (100_000_001 * 256 * 4 + 100_000_001 * 4) / 64 + (small if replicated else 0)
    assert plan.memory.embeddings == pytest.approx(expected, rel=0.01)
    assert replicated == len(plan.plan.plan["sparse.ec"]) - 1  # the planner's choice for tiny tables on GPUs


def test_planner_places_the_multi_hash_tables():
    cfg = TrainJobConfig()
    cfg.model.embedding_dim = 128
    cluster = Cluster(world_size=16, gpus_per_node=8, gpu_memory_gb=80)
    base = plan_cluster(cfg, planning_schema(cfg, 20_000_000), cluster)
    cfg.model.multi_hash_buckets = 4_000_000
    plan = plan_cluster(cfg, planning_schema(cfg, 20_000_000), cluster)
    assert plan.schema.item_hash_buckets == [4_000_000, 4_000_000] and plan.fits, plan.reasons
    tables = plan.plan.plan["sparse.ec"]
    for name in ("t_item_h0", "t_item_h1"):
        shards = tables[name].sharding_spec.shards if tables[name].sharding_spec else []
        assert tables[name].sharding_type != "data_parallel" and len(shards) > 1, (name, tables[name])
    # two 4M-row tables (weights + row-wise Adagrad state) spread over the 16 GPUs
    extra = 2 * (4_000_001 * 128 * 4 + 4_000_001 * 4) / 16
    assert plan.memory.embeddings - base.memory.embeddings == pytest.approx(extra, rel=0.02)


def test_plan_reports_what_does_not_fit():
    cfg = TrainJobConfig()
    cfg.model.embedding_dim = 256
    plan = plan_cluster(
        cfg,
        planning_schema(cfg, 100_000_000),
        Cluster(world_size=2, gpus_per_node=2, gpu_memory_gb=16, host_memory_gb=64),
    )
    assert not plan.fits
    assert any("planner found no placement" in r or "exceeds" in r for r in plan.reasons), plan.reasons


def test_large_dense_arch_is_sharded_with_fsdp2():
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-1b.yaml"), [])
    plan = plan_cluster(
        cfg, planning_schema(cfg, 100_000_000), Cluster(world_size=64, gpus_per_node=8, gpu_memory_gb=80)
    )
    assert plan.dense_strategy == "fsdp2"
    assert plan.memory.dense_optimizer < 8 * plan.dense_params["total"] / 32
    assert "data_parallel" not in {ps.sharding_type for ps in plan.plan.plan["sparse.ec"].values()}
    assert plan.fits, plan.reasons
    assert plan.memory.total < 72 * GiB


def test_plan_switches_to_fsdp2_when_a_replica_does_not_fit():
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-1b.yaml"), ["sharding.dense=ddp"])
    plan = plan_cluster(cfg, planning_schema(cfg, 1_000_000), Cluster(world_size=8, gpus_per_node=8, gpu_memory_gb=40))
    assert plan.configured_strategy == "ddp" and plan.dense_strategy == "fsdp2"
    assert "data_parallel" not in {ps.sharding_type for ps in plan.plan.plan["sparse.ec"].values()}


def test_plan_job_prints_plan_and_memory(capsys):
    spec = importlib.util.spec_from_file_location("plan_argus", ROOT / "jobs" / "plan_argus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(
        [
            "--config",
            str(ROOT / "jobs" / "configs" / "argus-300m.yaml"),
            "--world-size",
            "64",
            "--gpus-per-node",
            "8",
            "--gpu-memory-gb",
            "80",
            "--num-items",
            "100000000",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    for needle in (
        "dense parameters: 292,568,068",
        "t_item",
        "row_wise",
        "activations",
        "dense optimizer state",
        "fits: yes",
    ):
        assert needle in out


@pytest.mark.parametrize("override", ["sharding.sharding_type=data_parallel", "sharding.compute_kernel=dense"])
def test_replicated_tables_are_refused_on_cpu_before_planning(override):
    """FBGEMM's CPU dense kernel returns pooled rows for sequence tables (DMP then fails to split its
    output): the job names the setting instead, while a GPU plan may still replicate tables."""
    from argus_platform.sharding.plan import check_kernels, shard

    cfg = load_config(TrainJobConfig, overrides=[override])
    schema = ModelSchema(num_items=40)
    with pytest.raises(ConfigError, match=rf"{override} needs GPUs \(scaling.use_gpu=true\)"):
        shard(cfg, schema, torch.ones(41), torch.device("cpu"))  # before any collective: no process group needed
    check_kernels(cfg, "cuda")
    plan = plan_cluster(cfg, planning_schema(cfg, 1000), Cluster(world_size=8, gpus_per_node=8, gpu_memory_gb=80))
    kinds = {(ps.sharding_type, ps.compute_kernel) for ps in plan.plan.plan["sparse.ec"].values()}
    assert kinds <= {("data_parallel", "dense")}, kinds
