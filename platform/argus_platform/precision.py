"""`optim.precision: auto`: bf16 where the hardware computes it natively, fp32 elsewhere.

bf16 autocast pays on CUDA GPUs with bf16 support and on CPUs with AMX or AVX512-BF16 (oneDNN's bf16
kernels); on other CPUs every bf16 matmul is emulated through fp32 conversions and runs several
times slower than fp32 (an AVX2-only EPYC: 65.5 ms against 4.8 ms for a [6400, 64] × [64, 256] matmul).
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
    found = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has neither AMX nor AVX512-BF16"


def resolve_precision(requested: str, device: torch.device, collective: bool = True) -> tuple[str, str]:
    """("fp32" | "bf16", the reason). "auto" chooses bf16 only when every rank's device computes it
    natively (collective when distributed and `collective`), so all ranks run the same precision."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; use one of {PRECISIONS}")
    ok, why = native_bf16(device)
    if requested != "auto":
        note = "" if ok or requested == "fp32" else f"; slow here: {why}, so bf16 is emulated (optim.precision=auto picks fp32)"
        return requested, f"set in the config{note}"
    if collective and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([int(ok)], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if bool(flag.item()) != ok:
            ok, why = False, why + "; another rank's device does not"
    return ("bf16" if ok else "fp32"), f"auto: {why}"
