"""Step throughput on CPU (tiny) and the GPU path (bf16 autocast, activation checkpointing, long
histories through memory-efficient SDPA) on CUDA; the GPU tests skip without it."""

from __future__ import annotations

import pytest
import torch

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config
from argus_platform.planning import planning_schema
from argus_platform.throughput import flops_per_token, measure

from conftest import ROOT

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")


def _tiny(*overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, overrides=["model.embedding_dim=32", "model.num_layers=2", "model.max_seq_len=16",
                                                  "optim.batch_size=4", *overrides])


def test_cpu_step_throughput_is_measured():
    cfg = _tiny("optim.precision=bf16", "model.activation_checkpointing=true")
    r = measure(cfg, planning_schema(cfg, 200), torch.device("cpu"), steps=2, warmup=1)
    assert r.tokens_per_step == 4 * 16 and r.tokens_per_second > 0 and r.mfu is None


def test_flops_per_token_counts_recomputation_and_logits():
    cfg, schema = _tiny(), planning_schema(_tiny(), 200)
    base = flops_per_token(cfg, schema, 256)
    assert flops_per_token(_tiny("model.activation_checkpointing=true"), schema, 256) > base
    assert flops_per_token(cfg, schema, 512) - base == 6 * 256 * 32


@cuda
@pytest.mark.gpu
def test_bf16_checkpointed_long_history_step_on_cuda():
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-3m.yaml"),
                      ["model.max_seq_len=8192", "optim.batch_size=2", "model.activation_checkpointing=true"])
    r = measure(cfg, planning_schema(cfg, 100_000), torch.device("cuda"), steps=3, warmup=1)
    # Memory-efficient SDPA: a materialised [B, heads, S, S] score matrix alone would take 2 GiB per layer.
    assert r.peak_memory_gib < 4.0, r
    assert r.tokens_per_second > 10_000, r


@cuda
@pytest.mark.gpu
def test_bf16_step_is_not_slower_than_fp32_on_cuda():
    cfg = load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-3m.yaml"), ["optim.batch_size=4"])
    schema = planning_schema(cfg, 10_000)
    fp32 = measure(load_config(TrainJobConfig, str(ROOT / "jobs" / "configs" / "argus-3m.yaml"),
                               ["optim.batch_size=4", "optim.precision=fp32"]), schema, torch.device("cuda"), steps=2, warmup=1)
    bf16 = measure(cfg, schema, torch.device("cuda"), steps=2, warmup=1)
    assert bf16.step_seconds < fp32.step_seconds * 1.5, (bf16, fp32)
