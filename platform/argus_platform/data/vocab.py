"""Raw id ↔ dense index vocabularies, saved with the run (Serve translates back with them).

Index 0 is padding everywhere; items are numbered 1..N by descending frequency in the log.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from argus_platform.data.spec import ITEM, USER, DatasetSpec

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
        pq.write_table(pa.table({"raw_id": self.items, "index": np.arange(1, len(self.items) + 1)}), d / "items.parquet")
        pq.write_table(pa.table({"raw_id": self.users, "index": np.arange(len(self.users))}), d / "users.parquet")
        for c, values in self.contexts.items():
            pq.write_table(pa.table({"value": values, "index": np.arange(1, len(values) + 1)}), d / f"context_{c}.parquet")
        meta = {"format_version": FORMAT_VERSION, "version": self.version(), "num_items": self.num_items,
                "num_users": len(self.users), "contexts": list(self.contexts)}
        (d / "vocab.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Vocabulary":
        d = Path(directory)
        meta_path = d / "vocab.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no vocabulary at {d} (vocab.json missing)")
        meta = json.loads(meta_path.read_text())
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: vocabulary format {meta['format_version']}, this code reads {FORMAT_VERSION}")
        col = lambda name, f: pq.read_table(d / name).column(f).to_numpy(zero_copy_only=False).astype(str)  # noqa: E731
        vocab = cls(
            items=col("items.parquet", "raw_id"),
            users=col("users.parquet", "raw_id"),
            contexts={c: col(f"context_{c}.parquet", "value") for c in meta["contexts"]},
        )
        if vocab.version() != meta["version"]:
            raise ValueError(f"{d}: vocabulary files do not match the recorded version {meta['version']}")
        return vocab


def build_vocabulary(events_path: Path, spec: DatasetSpec) -> Vocabulary:
    """Count ids and context values over the canonical log, streaming row groups."""
    counts = {USER: Counter(), ITEM: Counter(), **{c: Counter() for c in spec.context_columns}}
    pf = pq.ParquetFile(events_path)
    for batch in pf.iter_batches(batch_size=1_000_000, columns=list(counts)):
        for name in counts:
            vc = batch.column(name).value_counts()
            counts[name].update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))

    def ranked(c: Counter) -> np.ndarray:
        return np.array(sorted(c, key=lambda k: (-c[k], k)), dtype=str)

    return Vocabulary(
        items=ranked(counts[ITEM]),
        users=np.array(sorted(counts[USER]), dtype=str),
        contexts={c: ranked(counts[c]) for c in spec.context_columns},
    )
