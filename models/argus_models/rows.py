"""Row counts that oneDNN's bf16 kernels can reuse.

Under a CPU bf16 autocast, matmuls go to oneDNN, which builds (JIT-compiles) a kernel for each new
shape. The heads and the next-item loss run on the N valid positions of a batch, and N differs in
almost every step, so nearly every step paid for new kernels: on a 2-core EPYC with AVX512-BF16 a
[N, 64] → 256 → 64 MLP, forward and backward, took 13.8 ms for N drawn anywhere in 1,900–3,264
against 7.6 ms for N a multiple of 64 (fp32: 12 ms either way), and the default model's 2-worker
epoch ran at 16.4k events/s in bf16 against 26.6k in fp32. Padding those rows to a multiple of 64
keeps the set of shapes small. fp32 and CUDA are left as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROW_MULTIPLE = 64


def pad_rows(x: torch.Tensor, bf16: bool | None = None, multiple: int = ROW_MULTIPLE) -> torch.Tensor:
    """`x` with zero rows appended up to a multiple of `multiple` rows when it feeds a CPU bf16
    matmul (`bf16`; default: a CPU bf16 autocast is on), else `x` itself. Callers slice what they
    compute back to `x.shape[0]` rows; the zero rows' gradients are dropped with them."""
    if bf16 is None:
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not bf16 or x.device.type != "cpu" or x.shape[0] % multiple == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, -x.shape[0] % multiple))


# TrainPipelineSparseDist FX-traces the training task: keep this call one node of its graph.
torch.fx.wrap("pad_rows")
