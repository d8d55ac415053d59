"""What the training histories look like: their lengths and how often a user's item repeats.

Measured once on the prepared train split (its item-list column only) and kept in the run's
summary.json; the `auto` choices of the model and the loss (`argus_platform.recipe`) read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from argus_models.contract import ITEM_COL

QUANTILES = (50, 90, 95, 99)


def history_stats(train_split: str | Path) -> dict:
    """{"rows", "events", "mean", "p50", "p90", "p95", "p99", "max", "repeat_share"} of the training
    histories in `train_split` (a Parquet dataset with one row per user and a list column of item
    ids). repeat_share: the share of events whose item the user already had earlier in the history."""
    column = pads.dataset(str(train_split), format="parquet").to_table(columns=[ITEM_COL]).column(ITEM_COL)
    lengths, seen, repeats = [], 0, 0
    for chunk in column.chunks:
        offsets = np.asarray(chunk.offsets)
        items = np.asarray(chunk.flatten()).astype(np.int64)
        n = np.diff(offsets)
        lengths.append(n)
        rows = np.repeat(np.arange(len(n), dtype=np.int64), n)
        pairs = rows * (int(items.max(initial=0)) + 1) + items  # one key per (user row, item)
        repeats += len(pairs) - len(np.unique(pairs))
        seen += len(pairs)
    n = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if len(n) == 0:
        return {
            "rows": 0,
            "events": 0,
            "mean": 0.0,
            **{f"p{q}": 0 for q in QUANTILES},
            "max": 0,
            "repeat_share": 0.0,
            "percentiles": [0] * 101,
        }
    percentiles = [round(float(v), 1) for v in np.percentile(n, np.arange(101))]  # 0..100, interpolated
    return {
        "rows": int(len(n)),
        "events": int(n.sum()),
        "mean": round(float(n.mean()), 2),
        **{f"p{q}": int(np.percentile(n, q, method="higher")) for q in QUANTILES},
        "max": int(n.max()),
        "repeat_share": round(repeats / max(seen, 1), 4),
        "percentiles": percentiles,
    }


def mean_windowed(stats: dict, window: int) -> float:
    """About the mean of min(length, window) over the histories (from their percentiles)."""
    p = np.minimum(np.asarray(stats["percentiles"], dtype=np.float64), window)
    return float((p[:-1] + p[1:]).mean() / 2)


def describe(stats: dict) -> str:
    return (
        f"training histories: {stats['rows']:,} users, median {stats['p50']} events (p90 {stats['p90']}, "
        f"p99 {stats['p99']}, max {stats['max']}); {stats['repeat_share']:.1%} of events repeat an item "
        f"the user had before"
    )
