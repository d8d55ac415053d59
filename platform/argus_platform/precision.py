"""`optim.precision: auto`: bf16 on CUDA GPUs with bf16 and on CPUs with AMX, fp32 elsewhere.

Without native bf16 every bf16 matmul is emulated through fp32 conversions and runs several times
slower than fp32 (an AVX2-only EPYC: 65.5 ms against 4.8 ms for a [6400, 64] × [64, 256] matmul).
AVX512-BF16 alone (no AMX) does not make bf16 pay for the default model: on a 2-core EPYC with it,
the default model's 2-worker epoch on a 1M-item catalogue ran at 26,612 events/s in fp32 against
16,424 in bf16 (21,050 once the heads' rows were padded for oneDNN, `argus_models.rows`), while an
ML-1M-sized step alone (width 128, 200-event windows, full softmax, `jobs/bench_train.py`) ran 1.5×
faster in bf16 — set `optim.precision: bf16` for such models on such CPUs. Timing the first steps of
a run in both precisions did not predict the epoch (174 ms fp32 vs 173 ms bf16 per step over the
first 20 steps, then 183 vs 231 ms), so `auto` does not try.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16")


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
            "this CPU has AVX512-BF16 but no AMX, where bf16 was slower than fp32 for the default model "
            "(set optim.precision=bf16 to use it)"
        )
    return False, f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has neither AMX nor AVX512-BF16"


def resolve_precision(requested: str, device: torch.device, collective: bool = True) -> tuple[str, str]:
    """("fp32" | "bf16", the reason). "auto" chooses bf16 only when every rank's device computes it
    natively (collective when distributed and `collective`), so all ranks run the same precision."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {PRECISIONS}")
    ok, why = native_bf16(device)
    if requested != "auto":
        note = (
            ""
            if ok or requested == "fp32"
            else f"; slow here: {why}, so bf16 is emulated (optim.precision=auto picks fp32)"
        )
        return requested, f"set in the config{note}"
    if collective and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(ok)], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if bool(flag.item()) != ok:
            ok, why = False, why + "; another rank's device does not"
    return ("bf16" if ok else "fp32"), f"auto: {why}"
