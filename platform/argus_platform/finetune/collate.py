"""Per-user Arrow rows with requests → `SlateBatch` (the last window of each user's events)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from argus_models.config import ModelSchema
from argus_models.contract import ITEM_COL, list_values
from argus_models.finetune import SlateBatch
from argus_platform.collate import Collator
from argus_platform.finetune.requests import REQ_CLICKED, REQ_ITEMS, REQ_POS, req_act


class SlateCollator:
    """Windows of `window` events (the last ones of each row) and the requests inside them.

    A request shown before window event p ≥ 1 is kept; one whose history starts before the window
    is counted in `outside_window` (the window is the model's max_seq_len + 1 events).
    """

    def __init__(
        self,
        schema: ModelSchema,
        action_kinds: dict[str, tuple[str, int]],
        window: int,
        slate_size: int,
        item_parts: np.ndarray | None = None,
    ) -> None:
        self.schema, self.window, self.slate_size = schema, window, slate_size
        self.sequences = Collator(schema, action_kinds, window, item_parts=item_parts)
        self.outside_window = 0

    def __call__(self, table: pa.Table) -> SlateBatch:
        _, offsets = list_values(table.column(ITEM_COL))
        lens = np.diff(offsets)
        start = lens - np.minimum(lens, self.window)  # first event of each row's window
        pos_vals, pos_off = list_values(table.column(REQ_POS))
        # nested list<list<…>> columns → (values, offsets) per request, requests in row order
        nested = {
            name: _per_request(table.column(name))
            for name in [REQ_ITEMS, REQ_CLICKED] + [req_act(a.name) for a in self.schema.actions]
        }
        rows, rel, picked = [], [], []
        for b in range(len(lens)):
            for r in range(pos_off[b], pos_off[b + 1]):
                p = int(pos_vals[r]) - int(start[b])
                if p < 1:
                    self.outside_window += 1
                    continue
                rows.append(b)
                rel.append(p)
                picked.append(r)
        R, K, A = len(rows), self.slate_size, len(self.schema.actions)
        slate = np.zeros((R, K), np.int64)
        clicked = np.zeros((R, K), np.float32)
        labels = np.zeros((R, K, A), np.float32)
        for i, r in enumerate(picked):
            values, offs = nested[REQ_ITEMS]
            a, n = offs[r], min(offs[r + 1] - offs[r], K)
            slate[i, :n] = values[a : a + n]
            clicked[i, :n] = nested[REQ_CLICKED][0][a : a + n]
            for j, head in enumerate(self.schema.actions):
                labels[i, :n, j] = nested[req_act(head.name)][0][a : a + n]
        seq = self.sequences(table, item_ids=slate.ravel())
        return SlateBatch(
            sparse_features=seq.sparse_features,
            items=seq.items,
            lengths=seq.lengths,
            req_row=torch.tensor(rows, dtype=torch.int64),
            req_pos=torch.tensor(rel, dtype=torch.int64),
            slate=torch.from_numpy(slate),
            clicked=torch.from_numpy(clicked),
            labels=torch.from_numpy(labels),
            times=seq.times,
        )


def _per_request(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list<list<T>> column → (flat values, offsets per request)."""
    return list_values(column.combine_chunks().flatten())
