"""Arrow batches of per-user sequences → `SequenceBatch` (windowing, padding, KJT, negatives)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
from torchrec import KeyedJaggedTensor

from argus_models.config import ModelSchema
from argus_models.contract import ITEM_COL, TIME_COL, act_col, ctx_col, list_values, target_code
from argus_models.model import (
    ITEM,
    ctx_feature,
    fb_feature,
    item_part_features,
    negative_features,
    sequence_features,
)
from argus_models.task import SequenceBatch


def window_index(
    offsets: np.ndarray, window: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
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


def length_buckets(
    batches: Iterable[pa.Table], group: int, window: int, rng: np.random.Generator | None = None
) -> Iterator[pa.Table]:
    """Regroups every `group` consecutive batches so that each new batch holds rows of similar length.

    A batch is padded to its longest (windowed) row, so mixing a 20-event user with a 200-event one
    computes 180 padded positions. The rows of `group` batches are sorted by min(length, window)
    (random tie-break) and cut into batches of the same sizes as the ones read, emitted in random order
    (`rng`; a fixed seed without it). Rows and the number and sizes of batches are unchanged, so
    distributed workers still take the same number of steps; given the same `rng` seed, every worker
    emits its length quantiles in the same order, so the workers (which wait for each other every step)
    process batches of similar length together. group <= 1 passes the batches through.
    """
    if group <= 1:
        yield from batches
        return
    rng = rng or np.random.default_rng(0)
    held: list[pa.Table] = []
    for batch in batches:
        held.append(batch)
        if len(held) == group:
            yield from _by_length(held, window, rng)
            held = []
    if held:
        yield from _by_length(held, window, rng)


def _by_length(tables: list[pa.Table], window: int, rng: np.random.Generator) -> Iterator[pa.Table]:
    merged = pa.concat_tables(tables)
    lengths = np.minimum(np.diff(list_values(merged.column(ITEM_COL))[1]), window)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    bounds = np.cumsum([0] + [t.num_rows for t in tables])
    for i in rng.permutation(len(tables)):
        yield merged.take(order[bounds[i] : bounds[i + 1]])


class Collator:
    """Builds SequenceBatches for one schema.

    window: events per row (max_seq_len history + 1 target event).
    random_windows: sample a random window from rows longer than `window` (training) instead of the last.
    negatives: "uniform" (n uniform ids per batch), "catalogue" (all ids, for full softmax) or "none".
    item_parts: [C+1, K] every item's row in each item part table when the schema has them
      (`model.item_part_features`): its bucket in each multi-hash table (`hashing.catalogue_hash_codes`)
      or its code in each RecJPQ sub-item table (`recjpq.assign_codes`); the KJT then carries them.
    """

    def __init__(
        self,
        schema: ModelSchema,
        action_kinds: dict[str, tuple[str, int]],
        window: int,
        negatives: str = "none",
        num_uniform: int = 0,
        seed: int = 0,
        random_windows: bool = False,
        item_parts: np.ndarray | None = None,
    ) -> None:
        self.part_keys = item_part_features(schema)
        n_parts = len(self.part_keys)
        if n_parts and (item_parts is None or item_parts.shape != (schema.num_items + 1, n_parts)):
            got = None if item_parts is None else item_parts.shape
            kind = "RecJPQ sub-item" if schema.recjpq_splits else "multi-hash"
            raise ValueError(
                f"the schema has {n_parts} {kind} tables: the collator needs item_parts of shape "
                f"{(schema.num_items + 1, n_parts)}, got {got}"
            )
        self.item_parts = np.asarray(item_parts, dtype=np.int64) if n_parts else None
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
        if self.item_parts is not None:
            for k, key in enumerate(self.part_keys):
                per_feature[key] = self.item_parts[per_feature[ITEM], k]
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
        times = None
        if self.schema.time_buckets:  # an HSTU encoder with a time-gap bias reads them
            times = np.zeros((B, W), dtype=np.int64)
            times[rows, cols] = list_values(batch.column(TIME_COL))[0][idx]
        if item_ids is not None:
            neg = np.asarray(item_ids, dtype=np.int64)
        elif self.negatives == "uniform":
            neg = self.rng.integers(1, self.schema.num_items + 1, size=self.num_uniform)
        elif self.negatives == "catalogue":
            neg = np.arange(self.schema.num_items + 1)
        else:
            neg = np.zeros(0, dtype=np.int64)
        neg = neg.astype(np.int64)
        seq_keys, neg_keys = sequence_features(self.schema), negative_features(self.schema)
        neg_values = [neg] + [self.item_parts[neg, k] for k in range(len(neg_keys) - 1)]
        keys = seq_keys + neg_keys
        values = np.concatenate([per_feature[k] for k in seq_keys] + neg_values)
        neg_lengths = np.zeros(B, dtype=np.int64)
        neg_lengths[0] = len(neg)
        all_lengths = np.concatenate([lengths] * len(seq_keys) + [neg_lengths] * len(neg_keys))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys, values=torch.from_numpy(values), lengths=torch.from_numpy(all_lengths.astype(np.int32))
        )
        return SequenceBatch(
            sparse_features=kjt,
            items=torch.from_numpy(items),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
            actions=torch.from_numpy(actions),
            neg_ids=torch.from_numpy(neg.astype(np.int64)),
            times=None if times is None else torch.from_numpy(times),
        )

    def id_features(self, ids: np.ndarray) -> KeyedJaggedTensor:
        """A KJT that looks up `ids` [n] as NEG_ITEM (with their multi-hash buckets) beside one row of
        one padding event: the catalogue's rows through the same (sharded) lookup as training."""
        ids = np.asarray(ids, dtype=np.int64)
        seq_keys, neg_keys = sequence_features(self.schema), negative_features(self.schema)
        pad = {key: int(self.item_parts[0, k]) for k, key in enumerate(self.part_keys)}
        neg_values = [ids] + [self.item_parts[ids, k] for k in range(len(neg_keys) - 1)]
        values = np.concatenate([np.array([pad.get(k, 0) for k in seq_keys], dtype=np.int64)] + neg_values)
        lengths = np.array([1] * len(seq_keys) + [len(ids)] * len(neg_keys), dtype=np.int32)
        return KeyedJaggedTensor.from_lengths_sync(
            keys=seq_keys + neg_keys, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths)
        )


def history_items(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Whole history (all events but the last) of each evaluation row: (values, offsets)."""
    values, offsets = list_values(batch.column(ITEM_COL))
    lens = np.diff(offsets) - 1
    keep = np.ones(len(values), dtype=bool)
    keep[offsets[1:] - 1] = False
    return values[keep], np.concatenate([[0], np.cumsum(lens)])
