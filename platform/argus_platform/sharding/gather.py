"""Full embedding tables on every rank, gathered from their shards (evaluation and export)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor


def gather_tables(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full embedding tables on every rank (collective), keyed by table name, on the collective's device.

    Used to evaluate and export with plain lookups; for catalogues too large for one host this is
    where a per-rank scoring pass would go instead.
    """
    out = {}
    # nccl only moves CUDA tensors; gloo moves CPU tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    state = model.state_dict()
    for key in sorted(state):
        if ".embeddings." not in key or not key.endswith(".weight"):
            continue
        name = key.split(".")[-2]
        t = state[key]
        if isinstance(t, ShardedTensor):
            full = torch.empty(t.size(), dtype=t.dtype, device=device) if dist.get_rank() == 0 else None
            t.gather(dst=0, out=full)
            if full is None:
                full = torch.empty(t.size(), dtype=t.dtype, device=device)
            dist.broadcast(full, src=0)
        elif hasattr(t, "full_tensor"):  # DTensor
            full = t.full_tensor()
        else:
            full = t.detach().clone()
        out[name] = full
    return out
