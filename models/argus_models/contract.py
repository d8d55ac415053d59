"""The files a run leaves for every reader (training, evaluation, Serve, Tune): vocabulary,
sequence columns and feedback codes. Pure numpy/pyarrow, so Serve reads a run without the
training code.

Index 0 is padding everywhere; items are numbered 1..N by descending frequency in the log,
context values 1..V likewise, users 0..U-1 in sorted order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Columns of the per-user sequence tables (one row per user, list columns ordered by time).
USER_IDX = "user_idx"
ITEM_COL = "item_id"
TIME_COL = "timestamp"


def ctx_col(name: str) -> str:
    return f"ctx_{name}"


def act_col(name: str) -> str:
    return f"act_{name}"


def list_values(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets [B+1] from 0) of a list column, whatever its chunking or slicing."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def action_valid(kind: str, levels: list[float], values: np.ndarray) -> np.ndarray:
    """Mask of usable raw action values (NaN, out-of-range and unknown levels are not)."""
    v = np.asarray(values).astype(np.float64)
    if kind == "binary":
        return (v == 0) | (v == 1)
    if kind == "ratio":
        return (v >= 0) & (v <= 1)
    return np.isin(v, np.asarray(levels, dtype=np.float64))


def action_target(kind: str, levels: list[float], values: np.ndarray) -> np.ndarray:
    """Training target of raw values: 0/1 (binary), the ratio, or the level index (graded)."""
    v = np.asarray(values).astype(np.float64)
    if kind == "graded":
        return np.searchsorted(np.asarray(levels, dtype=np.float64), v).astype(np.float32)
    return v.astype(np.float32)


def target_code(kind: str, num_codes: int, targets: np.ndarray) -> np.ndarray:
    """Feedback-token code (row of the action's embedding table) of training targets."""
    t = np.asarray(targets)
    if kind == "ratio":
        return np.minimum((t * num_codes).astype(np.int64), num_codes - 1)
    return t.astype(np.int64)


FORMAT_VERSION = 1


@dataclass
class Vocabulary:
    items: np.ndarray  # raw item ids (str), position p ↔ index p+1
    users: np.ndarray  # raw user ids (str), position p ↔ index p
    contexts: dict[str, np.ndarray] = field(default_factory=dict)  # raw values, position p ↔ index p+1

    @property
    def num_items(self) -> int:
        return len(self.items)

    def context_sizes(self) -> dict[str, int]:
        """Table rows per context column (values + padding)."""
        return {c: len(v) + 1 for c, v in self.contexts.items()}

    def version(self) -> str:
        h = hashlib.sha256()
        for arr in [self.items, self.users, *self.contexts.values()]:
            h.update("\x00".join(arr.tolist()).encode())
        return h.hexdigest()[:16]

    def item_index(self) -> dict[str, int]:
        return {raw: i + 1 for i, raw in enumerate(self.items.tolist())}

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table({"raw_id": self.items, "index": np.arange(1, len(self.items) + 1)}), d / "items.parquet"
        )
        pq.write_table(pa.table({"raw_id": self.users, "index": np.arange(len(self.users))}), d / "users.parquet")
        for c, values in self.contexts.items():
            pq.write_table(
                pa.table({"value": values, "index": np.arange(1, len(values) + 1)}), d / f"context_{c}.parquet"
            )
        meta = {
            "format_version": FORMAT_VERSION,
            "version": self.version(),
            "num_items": self.num_items,
            "num_users": len(self.users),
            "contexts": list(self.contexts),
        }
        (d / "vocab.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Vocabulary":
        d = Path(directory)
        meta_path = d / "vocab.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no vocabulary at {d} (vocab.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: vocabulary format {meta['format_version']}, this code reads {FORMAT_VERSION}"
            )
        col = lambda name, f: pq.read_table(d / name).column(f).to_numpy(zero_copy_only=False).astype(str)  # noqa: E731
        vocab = cls(
            items=col("items.parquet", "raw_id"),
            users=col("users.parquet", "raw_id"),
            contexts={c: col(f"context_{c}.parquet", "value") for c in meta["contexts"]},
        )
        if vocab.version() != meta["version"]:
            raise ValueError(f"{d}: vocabulary files do not match the recorded version {meta['version']}")
        return vocab
