"""Training-step throughput of the dense arch on one device: tokens/s and model FLOPs utilisation.

Runs the real task (encoder, heads, next-item loss) forward and backward with random ids on full
in-memory tables, under the config's precision and activation checkpointing; the embedding
lookups are plain `F.embedding`, as TorchRec's sharded lookups are not what is measured here.
FLOPs per token follow the usual 6·N rule for the matmuls (forward + backward) plus attention
(causal: half of the S×S scores) and the next-item logits. MFU counts the model's FLOPs only;
HFU adds the forward that activation checkpointing runs again in the backward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from argus_models.config import ModelSchema
from argus_models.model import ITEM, NEG_ITEM, ArgusDenseArch, ctx_feature, fb_feature
from argus_models.sizing import dense_parameter_count
from argus_models.task import ArgusObjective, SequenceBatch
from argus_platform.config import TrainJobConfig, resolve_next_item_loss
from argus_platform.recipe import require_numbers

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common training GPUs.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


@dataclass
class Throughput:
    device: str
    tokens_per_step: int
    step_seconds: float
    tokens_per_second: float
    flops_per_token: float
    achieved_tflops: float  # model FLOPs
    hardware_tflops: float  # with the recomputed forward of activation checkpointing
    peak_tflops: float | None
    mfu: float | None
    hfu: float | None
    peak_memory_gib: float | None


def tokens_per_event(cfg: TrainJobConfig, schema: ModelSchema) -> int:
    """Transformer positions per event: 1, or context + item (+ feedback) with three_token."""
    return 2 + bool(schema.actions) if cfg.model.tokenization == "three_token" else 1


def flops_per_token(cfg: TrainJobConfig, schema: ModelSchema, negatives: int, recompute: bool = False) -> float:
    """Training FLOPs per transformer token: 6·(dense parameters) + attention (causal) + the
    next-item logits, which are computed once per event (shared by its tokens with three_token).
    `recompute` adds the checkpointed forward run again in backward (hardware, not model, FLOPs)."""
    m = cfg.model
    parts = dense_parameter_count(m, schema)
    params = parts["total"]
    per_event = tokens_per_event(cfg, schema)
    attention = (
        6 * m.num_layers * m.max_seq_len * per_event * m.embedding_dim
    )  # QK^T and AV, fwd+bwd, causal half of 2·S·D each
    logits = 6 * negatives * m.embedding_dim / per_event
    model = 6 * params + attention + logits
    if not (recompute and m.activation_checkpointing):
        return float(model)
    return float(model + 2 * parts["encoder"] + attention / 3)  # the blocks' forward, run again in backward


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def measure(
    cfg: TrainJobConfig, schema: ModelSchema, device: torch.device, steps: int = 10, warmup: int = 3
) -> Throughput:
    require_numbers(cfg, "jobs/bench_train.py")
    torch.manual_seed(0)
    m, B = cfg.model, cfg.optim.batch_size
    W = m.max_seq_len + 1
    cfg = replace(cfg, loss=resolve_next_item_loss(cfg.loss, schema.num_items)[0])
    full = cfg.loss.next_item == "full_softmax"
    n_neg = schema.num_items + 1 if full else cfg.loss.uniform_negatives
    dense = ArgusDenseArch(m, schema).to(device).train()
    if m.compile_blocks:
        dense.encoder.compile_blocks()
    objective = ArgusObjective(
        dense, torch.zeros(schema.num_items + 1), cfg.loss.next_item, 0 if full else cfg.loss.in_batch_negatives
    ).to(device)
    tables = {ITEM: torch.randn(schema.num_items + 1, m.embedding_dim, device=device, requires_grad=True)}
    tables |= {ctx_feature(c): torch.randn(n, m.embedding_dim, device=device) for c, n in schema.contexts.items()}
    tables |= {fb_feature(a.name): torch.randn(a.num_codes, m.embedding_dim, device=device) for a in schema.actions}
    opt = torch.optim.AdamW(dense.parameters(), lr=1e-4)
    items = torch.randint(1, schema.num_items + 1, (B, W), device=device)
    lengths = torch.full((B,), W, device=device)
    neg_ids = (
        torch.arange(schema.num_items + 1, device=device)
        if full
        else torch.randint(1, schema.num_items + 1, (n_neg,), device=device)
    )
    actions = torch.zeros(B, W, len(schema.actions), device=device)
    times = None
    if schema.time_buckets:  # HSTU's time-gap bias: events up to an hour apart
        times = torch.cumsum(torch.randint(1, 3_600, (B, W), device=device), 1)
    batch = SequenceBatch(None, items, lengths, actions, neg_ids, times)
    codes = {k: torch.randint(0, t.shape[0], (B, W), device=device) for k, t in tables.items() if k != ITEM}

    def step() -> None:
        emb = {ITEM: tables[ITEM][items], NEG_ITEM: tables[ITEM][neg_ids]} | {k: tables[k][v] for k, v in codes.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.optim.precision == "bf16"):
            loss, _ = objective(emb, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    tokens = B * m.max_seq_len * tokens_per_event(cfg, schema)
    negatives = n_neg + (0 if full else cfg.loss.in_batch_negatives)
    fpt = flops_per_token(cfg, schema, negatives)
    achieved = fpt * tokens / seconds / 1e12
    hardware = flops_per_token(cfg, schema, negatives, recompute=True) * tokens / seconds / 1e12
    peak = peak_tflops(device)
    return Throughput(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        tokens_per_step=tokens,
        step_seconds=seconds,
        tokens_per_second=tokens / seconds,
        flops_per_token=fpt,
        achieved_tflops=achieved,
        hardware_tflops=hardware,
        peak_tflops=peak,
        mfu=achieved / peak if peak else None,
        hfu=hardware / peak if peak else None,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
