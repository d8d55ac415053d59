"""Each item's rows in the item part tables: multi-hash buckets (from the raw ids, on every rank)
or RecJPQ codes (from the training split, once on the driver: `<run dir>/recjpq_codes.npy`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from argus_models.config import ModelSchema
from argus_models.contract import ITEM_COL
from argus_models.hashing import catalogue_hash_codes
from argus_models.recjpq import assign_codes, distinct_items

RECJPQ_CODES = "recjpq_codes.npy"


def write_recjpq_codes(train_split: str | Path, schema: ModelSchema, run_dir: Path, dim: int, seed: int) -> str:
    """Assign the RecJPQ codes from the training split's histories (one row per user) and save them
    in the run directory, unless a resumed run already has them; returns the line to print."""
    path = run_dir / RECJPQ_CODES
    m, k = schema.recjpq_splits, schema.recjpq_sub_items
    if path.is_file() and np.load(path).shape == (schema.num_items + 1, m):
        codes, how = np.load(path), f"kept from {path}"
    else:
        started = time.time()
        column = pads.dataset(str(train_split), format="parquet").to_table(columns=[ITEM_COL]).column(ITEM_COL)
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        items = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
        users = np.repeat(np.arange(len(lengths)), lengths)
        codes = assign_codes(users, items, len(lengths), schema.num_items, m, k, seed)
        np.save(path, codes)
        how = f"from a rank-{m} SVD of {len(lengths):,} training histories in {time.time() - started:.1f}s"
    width = dim // m if dim else "dim/M"
    full = (schema.num_items + 1) * dim if dim else 0
    small = m * (k + 1) * (dim // m) if dim else 0
    ratio = f", {full / small:.1f}x fewer weights than one row per item" if small else ""
    return (
        f"RecJPQ item codes {how}: {m} sub-item tables of {k} rows x {width} wide{ratio}; "
        f"{distinct_items(codes):,} distinct code tuples for {schema.num_items:,} items"
    )


def item_part_rows(schema: ModelSchema, vocab_items, run_dir: Path) -> np.ndarray | None:
    """[C+1, parts] every item's row in each part table, or None when items have one row each."""
    if schema.recjpq_splits:
        path = run_dir / RECJPQ_CODES
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the driver writes the RecJPQ codes before training starts")
        return np.load(path)
    if schema.item_hash_buckets:
        return catalogue_hash_codes(vocab_items, schema.item_hash_buckets)
    return None
