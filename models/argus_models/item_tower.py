"""Item-side features in the item tower.

An item's vector is its id embedding (a sharded TorchRec table row) plus the pooled embeddings of
its side features (genre, artist, year, ...):

    v(i) = E_item(i) + Σ_f mean_{x ∈ values_f(i)} E_f(x)          (a feature with no value adds 0)

The side tables are small (feature values, not items), so they are dense parameters replicated with
the transformer; the item → values map is a buffer [C+1, S] saved with the model, so a checkpoint
carries everything Serve needs. Every place that turns item ids into vectors goes through
`ArgusDenseArch.item_repr`/`item_vectors` (inputs, targets, negatives, the evaluation catalogue,
Serve's index, Tune's and fine-tuning's candidates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from argus_models.config import ItemFeature


class ItemFeatureTower(nn.Module):
    """side(ids) [..., D] from the item → feature-values buffer.

    codes: [C+1, S] global rows of `table` (0 = none), feature f owning a contiguous block of
    `slots` columns; weights: [C+1, S] 1/(values of that feature) where a value is present, so the
    embedding bag's weighted sum is the sum over features of per-feature means.
    """

    def __init__(self, features: list[ItemFeature], num_items: int, dim: int) -> None:
        super().__init__()
        self.features = features
        self.num_slots = sum(f.slots for f in features)
        self.table = nn.Embedding(1 + sum(f.num_values - 1 for f in features), dim)
        nn.init.normal_(self.table.weight, std=dim**-0.5)
        self.register_buffer("codes", torch.zeros(num_items + 1, self.num_slots, dtype=torch.int64))
        self.register_buffer("weights", torch.zeros(num_items + 1, self.num_slots))

    @torch.no_grad()
    def set_codes(self, local: torch.Tensor) -> None:
        """local: [C+1, S] per-feature codes (1..V_f-1, 0 = none) as the data preparation wrote them."""
        if tuple(local.shape) != tuple(self.codes.shape):
            raise ValueError(
                f"item feature codes have shape {tuple(local.shape)}; the model expects {tuple(self.codes.shape)}"
            )
        local = local.to(torch.int64)
        col, base = 0, 0
        for f in self.features:
            block = local[:, col : col + f.slots]
            if int(block.max()) >= f.num_values or int(block.min()) < 0:
                raise ValueError(f"item feature {f.name!r}: codes outside 0..{f.num_values - 1}")
            present = block > 0
            self.codes[:, col : col + f.slots] = torch.where(present, block + base, 0)
            count = present.sum(dim=1, keepdim=True).clamp_min(1)
            self.weights[:, col : col + f.slots] = present.float() / count
            col, base = col + f.slots, base + f.num_values - 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        weight = self.table.weight  # bf16 under FSDP2 mixed precision; the per-slot weights follow it
        slot_weights = self.weights[flat].to(weight.dtype)
        out = F.embedding_bag(self.codes[flat], weight, per_sample_weights=slot_weights, mode="sum")
        return out.view(*ids.shape, self.table.embedding_dim)  # explicit width: ids may be empty
