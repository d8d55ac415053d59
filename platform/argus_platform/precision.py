"""`optim.precision: auto`: bf16 on CUDA GPUs with bf16 and on CPUs with AMX, fp32 on CPUs without
native bf16, and on CPUs with AVX512-BF16 but no AMX whichever a timed training step of the model
says (pre-training; fine-tuning keeps fp32 there).

Without native bf16 every bf16 matmul is emulated through fp32 conversions and runs several times
slower than fp32 (an AVX2-only EPYC: 65.5 ms against 4.8 ms for a [6400, 64] × [64, 256] matmul).
AVX512-BF16 alone (no AMX) pays for some models and not for others: on a 2-core EPYC with it, the
default model's epoch ran 2.17 s in bf16 against 1.90 s in fp32 (and on a 1M-item catalogue 16,424
against 26,612 events/s; 21,050 once the heads' rows were padded for oneDNN, `argus_models.rows`),
while the MovieLens-1M recipe's model (width 128, 200-event windows, the full softmax over 3,706
items) ran its epoch in 38.5 s in bf16 against 55.6 s in fp32. So there `auto` times this model's
step (`bench_train.measure`: encoder, heads and next-item loss, forward and backward on full-length
rows of the batch size) in both precisions and takes bf16 when it is at least `BF16_MIN_SPEEDUP`
times faster; a model whose fp32 step is under `TIMED_MIN_STEP_S` keeps fp32 untimed (its epochs are
short whichever precision runs them). The timed step flatters bf16 (1.22x for the default model,
whose epoch is slower in bf16; 1.95x for the ML-1M one, whose epoch is 1.44x faster): the rows of
a real batch vary in length, and oneDNN's bf16 kernels are per shape; hence the margin.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 where a timed step is at least this much faster (CPUs with AVX512-BF16, no AMX): the timed step, of
# full-length rows, overstated bf16's epoch speed-up 1.35-1.39x on the two models measured (1.95x timed -> 1.44x
# an epoch; 1.22x timed -> 0.88x), so 1.5x here is ~1.1x an epoch
BF16_MIN_SPEEDUP = 1.5
TIMED_MIN_STEP_S = 0.1  # ... and only models whose fp32 step takes at least this long are timed
TIMED_MAX_ITEMS = 65_536  # sampled losses are timed on a catalogue of at most this many rows (same step cost)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why) — the why is printed with the choice."""
    if device.type == "cuda":
        if not torch.cuda.is_available():  # planning a GPU run on a machine without one
            return True, "planned for CUDA GPUs with bf16"
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 detection for device {device.type}"
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("amx_bf16"):
        return True, "this CPU has AMX (amx_bf16)"
    if caps.get("avx512_bf16"):
        return False, (
            "this CPU has AVX512-BF16 but no AMX, where bf16 is faster for some models only: pre-training times "
            "the model's step in both once the model is known"
        )
    return False, f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has neither AMX nor AVX512-BF16"


def resolve_precision(requested: str, device: torch.device, collective: bool = True) -> tuple[str, str]:
    """("fp32" | "bf16", the reason). "auto" chooses bf16 only when every rank's device computes it
    natively (collective when distributed and `collective`), so all ranks run the same precision."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {PRECISIONS}")
    ok, why = native_bf16(device)
    if requested != "auto":
        note = ""
        if requested == "bf16" and not ok:
            note = (
                "; this CPU has AVX512-BF16 but no AMX: faster than fp32 for some models only (optim.precision=auto "
                "times the model's step)"
                if bf16_worth_timing(device)
                else f"; slow here: {why}, so bf16 is emulated (optim.precision=auto picks fp32)"
            )
        return requested, f"set in the config{note}"
    if collective and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(ok)], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if bool(flag.item()) != ok:
            ok, why = False, why + "; another rank's device does not"
    return ("bf16" if ok else "fp32"), f"auto: {why}"


def bf16_worth_timing(device: torch.device) -> bool:
    """A CPU with AVX512-BF16 but no AMX: where `auto` times the model's step in both precisions."""
    if device.type != "cpu" or not hasattr(torch.cpu, "get_capabilities"):
        return False
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16")) and not caps.get("amx_bf16")


def slowest_rank(seconds: float, device: torch.device) -> float:
    """The slowest rank's figure (collective when distributed), so every rank makes the same choice."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def timed_precision(cfg, schema, device: torch.device, steps: int = 2) -> tuple[str, str]:
    """("fp32" | "bf16", the reason) for `optim.precision: auto` on a CPU where `bf16_worth_timing`:
    the model of `cfg` (every value resolved) timed on one training step of full-length rows, fp32
    first, then bf16 unless the fp32 step is under `TIMED_MIN_STEP_S`; bf16 when it is at least
    `BF16_MIN_SPEEDUP` times faster. Collective when distributed (the slowest rank's times). The
    process's random state is left as it was."""
    from argus_platform.bench_train import measure
    from argus_platform.config import resolve_next_item_loss

    # the encoder, heads and loss are what is timed: item rows as one plain table (the item tower, hash and
    # RecJPQ parts add lookups that run at the same precision either way)
    schema = replace(schema, item_features=[], item_hash_buckets=[], recjpq_splits=0, recjpq_sub_items=0)
    if resolve_next_item_loss(cfg.loss, schema.num_items)[0].next_item != "full_softmax":
        schema = replace(schema, num_items=min(schema.num_items, TIMED_MAX_ITEMS))

    def step_seconds(precision: str) -> float:
        with torch.random.fork_rng(devices=[]):
            c = replace(cfg, optim=replace(cfg.optim, precision=precision))
            return slowest_rank(measure(c, schema, device, steps=steps, warmup=1).step_seconds, device)

    fp32 = step_seconds("fp32")
    if fp32 < TIMED_MIN_STEP_S:
        return "fp32", f"auto: a training step of this model takes {fp32 * 1e3:.0f} ms in fp32, too short to time bf16"
    bf16 = step_seconds("bf16")
    speedup = fp32 / bf16 if bf16 > 0 else math.inf
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return chosen, (
        f"auto, timed: a training step of this model took {bf16 * 1e3:.4g} ms in bf16 against "
        f"{fp32 * 1e3:.4g} ms in fp32, {speedup:.2f}x (bf16 from {BF16_MIN_SPEEDUP:g}x)"
    )
