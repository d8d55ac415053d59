"""Training-step throughput of the dense arch on one device: tokens/s and model FLOPs utilisation.

Runs the real task (encoder, heads, next-item loss) forward and backward with random ids on full
in-memory tables, under the config's precision and activation checkpointing; the embedding
lookups are plain `F.embedding`, as TorchRec's sharded lookups are not what is measured here.
FLOPs per token follow the usual 6·N rule for the matmuls (forward + backward) plus attention
(causal: half of the S×S scores) and the next-item logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from argus_models.config import ModelSchema
from argus_models.model import ITEM, NEG_ITEM, ArgusDenseArch, ctx_feature, fb_feature
from argus_models.sizing import dense_parameter_count
from argus_models.task import ArgusObjective, SequenceBatch

from argus_platform.config import TrainJobConfig

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common training GPUs.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


@dataclass
class Throughput:
    device: str
    tokens_per_step: int
    step_seconds: float
    tokens_per_second: float
    flops_per_token: float
    achieved_tflops: float
    peak_tflops: float | None
    mfu: float | None
    peak_memory_gib: float | None


def flops_per_token(cfg: TrainJobConfig, schema: ModelSchema, negatives: int) -> float:
    """Training FLOPs per token: 6·(dense parameters) + attention (causal) + next-item logits."""
    m = cfg.model
    params = dense_parameter_count(m, schema)["total"]
    seq = m.max_seq_len * (2 + bool(schema.actions) if m.tokenization == "three_token" else 1)
    attention = 6 * m.num_layers * seq * m.embedding_dim  # QK^T and AV, fwd+bwd, causal half of 2·S·D each
    logits = 6 * negatives * m.embedding_dim
    recompute = 2 * params if m.activation_checkpointing else 0  # the forward runs again in backward
    return float(6 * params + recompute + attention + logits)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def measure(cfg: TrainJobConfig, schema: ModelSchema, device: torch.device, steps: int = 10, warmup: int = 3) -> Throughput:
    torch.manual_seed(0)
    m, B = cfg.model, cfg.optim.batch_size
    W = m.max_seq_len + 1
    full = cfg.loss.next_item == "full_softmax"
    n_neg = schema.num_items + 1 if full else cfg.loss.uniform_negatives
    dense = ArgusDenseArch(m, schema).to(device).train()
    objective = ArgusObjective(dense, torch.zeros(schema.num_items + 1), cfg.loss.next_item,
                               0 if full else cfg.loss.in_batch_negatives).to(device)
    tables = {ITEM: torch.randn(schema.num_items + 1, m.embedding_dim, device=device, requires_grad=True)}
    tables |= {ctx_feature(c): torch.randn(n, m.embedding_dim, device=device) for c, n in schema.contexts.items()}
    tables |= {fb_feature(a.name): torch.randn(a.num_codes, m.embedding_dim, device=device) for a in schema.actions}
    opt = torch.optim.AdamW(dense.parameters(), lr=1e-4)
    items = torch.randint(1, schema.num_items + 1, (B, W), device=device)
    lengths = torch.full((B,), W, device=device)
    neg_ids = torch.arange(schema.num_items + 1, device=device) if full else torch.randint(1, schema.num_items + 1, (n_neg,), device=device)
    actions = torch.zeros(B, W, len(schema.actions), device=device)
    batch = SequenceBatch(None, items, lengths, actions, neg_ids)
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
    tokens = B * m.max_seq_len
    fpt = flops_per_token(cfg, schema, n_neg + (0 if full else cfg.loss.in_batch_negatives))
    achieved = fpt * tokens / seconds / 1e12
    peak = peak_tflops(device)
    return Throughput(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        tokens_per_step=tokens, step_seconds=seconds, tokens_per_second=tokens / seconds, flops_per_token=fpt,
        achieved_tflops=achieved, peak_tflops=peak, mfu=achieved / peak if peak else None,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    )
