"""Step throughput on CPU (tiny) and the GPU path (bf16 autocast, activation checkpointing, long
histories through memory-efficient SDPA) on CUDA; the GPU tests skip without it."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT

from argus_models.sizing import dense_parameter_count
from argus_platform.bench_train import flops_per_token, measure
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config
from argus_platform.plan_argus import planning_schema

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")


def _tiny(*overrides: str) -> TrainJobConfig:
    return load_config(
        TrainJobConfig,
        overrides=[
            "model.embedding_dim=32",
            "model.num_layers=2",
            "model.max_seq_len=16",
            "optim.batch_size=4",
            *overrides,
        ],
    )


def test_cpu_step_throughput_is_measured():
    cfg = _tiny("optim.precision=bf16", "model.activation_checkpointing=true")
    r = measure(cfg, planning_schema(cfg, 200), torch.device("cpu"), steps=2, warmup=1)
    assert r.tokens_per_step == 4 * 16 and r.mfu is None  # no known peak for a CPU
    assert r.tokens_per_second == pytest.approx(r.tokens_per_step / r.step_seconds)
    assert r.achieved_tflops == pytest.approx(r.flops_per_token * r.tokens_per_step / r.step_seconds / 1e12)
    assert r.hardware_tflops > r.achieved_tflops  # checkpointing runs the blocks' forward again


def test_three_token_step_counts_every_transformer_position():
    cfg = _tiny("model.tokenization=three_token")
    schema = planning_schema(cfg, 200)
    r = measure(cfg, schema, torch.device("cpu"), steps=1, warmup=1)
    assert r.tokens_per_step == 4 * 16 * (2 + bool(schema.actions))
    one = _tiny()
    params = dense_parameter_count(cfg.model, schema)["total"] - dense_parameter_count(one.model, schema)["total"]
    # per token: 6·parameters, attention over a 3x longer sequence, the logits shared by the 3 tokens of an event
    assert flops_per_token(cfg, schema, 256) - flops_per_token(one, schema, 256) == pytest.approx(
        6 * params + 6 * 2 * 16 * 32 * 2 - 6 * 256 * 32 * 2 / 3
    )


def test_flops_per_token_counts_recomputation_and_logits():
    cfg, schema = _tiny(), planning_schema(_tiny(), 200)
    base = flops_per_token(cfg, schema, 256)
    ckpt = _tiny("model.activation_checkpointing=true")
    # MFU counts model FLOPs: checkpointing changes none of them; HFU adds the blocks' second forward
    assert flops_per_token(ckpt, schema, 256) == base == flops_per_token(cfg, schema, 256, recompute=True)
    encoder = dense_parameter_count(ckpt.model, schema)["encoder"]
    assert flops_per_token(ckpt, schema, 256, recompute=True) - base == 2 * encoder + 2 * 2 * 16 * 32
    assert flops_per_token(cfg, schema, 512) - base == 6 * 256 * 32


@cuda
@pytest.mark.gpu
def test_bf16_checkpointed_long_history_step_on_cuda():
    cfg = load_config(
        TrainJobConfig,
        str(ROOT / "jobs" / "configs" / "argus-3m.yaml"),
        ["model.max_seq_len=8192", "optim.batch_size=2", "model.activation_checkpointing=true"],
    )
    r = measure(cfg, planning_schema(cfg, 100_000), torch.device("cuda"), steps=3, warmup=1)
    # Memory-efficient SDPA: a materialised [B, heads, S, S] score matrix alone would take 2 GiB per layer.
    assert r.peak_memory_gib < 4.0, r
    assert r.tokens_per_second > 10_000, r


@cuda
@pytest.mark.gpu
def test_bf16_step_is_not_slower_than_fp32_on_cuda():
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-3m.yaml"), ["optim.batch_size=4"])
    schema = planning_schema(cfg, 10_000)
    fp32 = measure(
        load_config(
            TrainJobConfig,
            str(ROOT / "jobs" / "configs" / "argus-3m.yaml"),
            ["optim.batch_size=4", "optim.precision=fp32"],
        ),
        schema,
        torch.device("cuda"),
        steps=2,
        warmup=1,
    )
    bf16 = measure(cfg, schema, torch.device("cuda"), steps=2, warmup=1)
    assert bf16.step_seconds < fp32.step_seconds * 1.5, (bf16, fp32)
