"""Arrow batches of per-user sequences → `SequenceBatch` (windowing, padding, KJT, negatives)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torchrec import KeyedJaggedTensor

from argus_models.config import ModelSchema
from argus_models.contract import ITEM_COL, act_col, ctx_col, list_values, target_code
from argus_models.model import ITEM, NEG_ITEM, ctx_feature, fb_feature, sequence_features
from argus_models.task import SequenceBatch


def window_index(offsets: np.ndarray, window: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the flat values of each row's window of `window` events, and the new lengths.

    Without `rng` the window is the row's last events; with it, rows longer than the window get a
    uniformly random window, so long histories are seen in full over the epochs.
    """
    lens = np.diff(offsets)
    new_len = np.minimum(lens, window)
    shift = np.zeros_like(lens) if rng is None else rng.integers(0, lens - new_len + 1)
    start = offsets[:-1] + lens - new_len - shift
    row_start = np.repeat(np.cumsum(new_len) - new_len, new_len)
    idx = np.arange(new_len.sum()) - row_start + np.repeat(start, new_len)
    return idx, new_len


class Collator:
    """Builds SequenceBatches for one schema.

    window: events per row (max_seq_len history + 1 target event).
    random_windows: sample a random window from rows longer than `window` (training) instead of the last.
    negatives: "uniform" (n uniform ids per batch), "catalogue" (all ids, for full softmax) or "none".
    """

    def __init__(self, schema: ModelSchema, action_kinds: dict[str, tuple[str, int]], window: int,
                 negatives: str = "none", num_uniform: int = 0, seed: int = 0, random_windows: bool = False) -> None:
        self.schema, self.window, self.random_windows = schema, window, random_windows
        self.action_kinds = action_kinds  # name -> (kind, codes)
        self.negatives, self.num_uniform = negatives, num_uniform
        self.rng = np.random.default_rng(seed)

    def _codes(self, name: str, targets: np.ndarray) -> np.ndarray:
        kind, codes = self.action_kinds[name]
        return target_code(kind, codes, targets)

    def __call__(self, batch: pa.Table, item_ids: np.ndarray | None = None) -> SequenceBatch:
        """item_ids: ids to look up as NEG_ITEM instead of the configured negatives (e.g. slates)."""
        items_flat, offsets = list_values(batch.column(ITEM_COL))
        idx, lengths = window_index(offsets, self.window, self.rng if self.random_windows else None)
        B, W = len(lengths), int(lengths.max())
        per_feature = {ITEM: items_flat[idx].astype(np.int64)}
        for c in self.schema.contexts:
            per_feature[ctx_feature(c)] = list_values(batch.column(ctx_col(c)))[0][idx].astype(np.int64)
        actions = np.zeros((B, W, len(self.schema.actions)), dtype=np.float32)
        rows = np.repeat(np.arange(B), lengths)
        cols = np.arange(len(idx)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        for a_i, head in enumerate(self.schema.actions):
            targets = list_values(batch.column(act_col(head.name)))[0][idx]
            actions[rows, cols, a_i] = targets
            per_feature[fb_feature(head.name)] = self._codes(head.name, targets)
        items = np.zeros((B, W), dtype=np.int64)
        items[rows, cols] = per_feature[ITEM]
        if item_ids is not None:
            neg = np.asarray(item_ids, dtype=np.int64)
        elif self.negatives == "uniform":
            neg = self.rng.integers(1, self.schema.num_items + 1, size=self.num_uniform)
        elif self.negatives == "catalogue":
            neg = np.arange(self.schema.num_items + 1)
        else:
            neg = np.zeros(0, dtype=np.int64)
        keys = sequence_features(self.schema) + [NEG_ITEM]
        values = np.concatenate([per_feature[k] for k in keys[:-1]] + [neg.astype(np.int64)])
        neg_lengths = np.zeros(B, dtype=np.int64)
        neg_lengths[0] = len(neg)
        all_lengths = np.concatenate([lengths] * (len(keys) - 1) + [neg_lengths])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(values), lengths=torch.from_numpy(all_lengths.astype(np.int32))
        )
        return SequenceBatch(
            sparse_features=kjt,
            items=torch.from_numpy(items),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
            actions=torch.from_numpy(actions),
            neg_ids=torch.from_numpy(neg.astype(np.int64)),
        )


def history_items(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Whole history (all events but the last) of each evaluation row: (values, offsets)."""
    values, offsets = list_values(batch.column(ITEM_COL))
    lens = np.diff(offsets) - 1
    keep = np.ones(len(values), dtype=bool)
    keep[offsets[1:] - 1] = False
    return values[keep], np.concatenate([[0], np.cumsum(lens)])
