"""Histories of the users a run was trained on, memory-mapped from one Arrow file per run.

Source: the run's prepared sequence tables (data/{train,validation,test}/*.parquet, one row per
user and split, list columns ordered by time). A user's history is their longest row: under
leave-last-out that is the test row, i.e. every event the run has seen for them.

The first load writes `<run>/serving/user_store.arrow` (`artifacts.serving_dir`) (Arrow IPC, uncompressed, one row per
user index, 64-bit list offsets) and every later load memory-maps it: a replica's resident memory
is the pages its requests touch, shared between the replicas of one machine through the page
cache, not a copy of every history. Raw ids are found by binary search in a sorted copy of the
vocabulary's user ids (`SortedIds`), not through a dict.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from argus_models.contract import ITEM_COL, TIME_COL, USER_IDX, Vocabulary, act_col, ctx_col, target_code
from argus_models.inference import Events, write_atomically
from argus_serve.artifacts import ActionInfo, ArtifactError, serving_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
STORE_FORMAT = 1
STORE_FILE = "user_store.arrow"


class SortedIds:
    """Raw id (str) → position in `raw`, by binary search: two arrays the size of the ids, no dict."""

    def __init__(self, raw: np.ndarray) -> None:
        raw = np.asarray(raw).astype(str)
        self._order = np.argsort(raw, kind="stable")
        self._sorted = raw[self._order]

    def __len__(self) -> int:
        return len(self._sorted)

    def get(self, key: str) -> int | None:
        i = int(np.searchsorted(self._sorted, key))
        if i < len(self._sorted) and self._sorted[i] == key:
            return int(self._order[i])
        return None

    def lookup(self, keys: list[str]) -> np.ndarray:
        """Positions of `keys` ([N] int64), −1 for the unknown ones."""
        if not keys:
            return np.zeros(0, dtype=np.int64)
        k = np.asarray(keys).astype(str)
        i = np.minimum(np.searchsorted(self._sorted, k), len(self._sorted) - 1)
        return np.where(self._sorted[i] == k, self._order[i], -1).astype(np.int64)


def _read_split(path: Path) -> pa.Table | None:
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        return None
    return pq.ParquetDataset(str(path)).read()


def build_store_file(run_dir: Path, vocab: Vocabulary, path: Path) -> dict:
    """Write the store of `run_dir`'s sequences to `path` (atomically) and return its metadata."""
    t0 = time.time()
    tables = [t for s in SPLITS if (t := _read_split(run_dir / "data" / s)) is not None]
    if not tables:
        raise ArtifactError(f"{run_dir}/data holds no train/validation/test sequences; cannot serve known users")
    table = pa.concat_tables(tables, promote_options="default")
    del tables
    lengths = pc.list_value_length(table.column(ITEM_COL)).to_numpy()
    users = table.column(USER_IDX).to_numpy()
    order = np.lexsort((-lengths, users))  # each user's longest row first
    first = np.ones(len(order), dtype=bool)
    first[1:] = users[order][1:] != users[order][:-1]
    chosen = order[first]
    if users[chosen].max(initial=-1) >= len(vocab.users):
        raise ArtifactError(
            f"{run_dir}/data has user_idx {int(users[chosen].max())}, beyond the vocabulary's {len(vocab.users)} users"
        )
    row_of = np.full(len(vocab.users), -1, dtype=np.int64)  # user_idx -> row of `table`; -1: no sequences
    row_of[users[chosen]] = chosen
    taken = table.drop_columns([USER_IDX]).take(pa.array(row_of, mask=row_of < 0))
    del table
    columns = {}
    for name in taken.column_names:
        col = taken.column(name).combine_chunks()
        if pa.types.is_list(col.type):
            col = col.cast(pa.large_list(col.type.value_type))
        columns[name] = col
    batch = pa.RecordBatch.from_pydict(columns)

    def write_batch(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)

    write_atomically(path, write_batch)
    meta = {
        "format": STORE_FORMAT,
        "vocab_version": vocab.version(),
        "users": int(len(chosen)),
        "events": int(lengths[chosen].sum()),
        "bytes": path.stat().st_size,
        "build_seconds": round(time.time() - t0, 2),
    }
    # the metadata last: it names the data file's size, so a file it does not match is built again
    write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    log.info(
        "user store: wrote %s (%d users, %d events, %.1f MiB) in %.1fs",
        path,
        meta["users"],
        meta["events"],
        meta["bytes"] / 2**20,
        meta["build_seconds"],
    )
    return meta


def _store_meta(path: Path, vocab_version: str) -> dict | None:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if (
        meta.get("format") != STORE_FORMAT
        or meta.get("vocab_version") != vocab_version
        or meta.get("bytes") != path.stat().st_size
    ):
        return None
    return meta


class UserStore:
    """Raw user id → full history (model indices), memory-mapped from the run's store file."""

    def __init__(self, path: Path, meta: dict, ids: SortedIds, contexts: list[str], actions: list[ActionInfo]) -> None:
        self.path, self.meta = path, meta
        self._ids = ids
        self.contexts, self.actions = contexts, actions
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()  # zero-copy views of the mapping
        wanted = [ITEM_COL, TIME_COL] + [ctx_col(c) for c in contexts] + [act_col(a.name) for a in actions]
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise ArtifactError(f"{path} lacks the column(s) {missing} the model needs; delete it to rebuild")
        self._cols = {}
        for name in wanted:
            arr = table.column(name).chunk(0)
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
            values = arr.values.to_numpy(zero_copy_only=True)
            self._cols[name] = (values, offsets)
        self._offsets = self._cols[ITEM_COL][1]

    def __len__(self) -> int:
        return int(self.meta["users"])

    def _row(self, user_id: str) -> int | None:
        row = self._ids.get(user_id)
        if row is None or self._offsets[row + 1] == self._offsets[row]:  # in the vocabulary, without sequences
            return None
        return row

    def __contains__(self, user_id: str) -> bool:
        return self._row(user_id) is not None

    def _get(self, name: str, row: int) -> np.ndarray:
        values, offsets = self._cols[name]
        return values[offsets[row] : offsets[row + 1]]

    def get(self, user_id: str) -> Events | None:
        row = self._row(user_id)
        return None if row is None else self.get_row(row)

    def histories(self, raw_ids: np.ndarray):
        """(raw user id, history) of every user with events, in user-index order; `raw_ids` is
        the vocabulary's user column (the raw id of each row)."""
        for row in np.flatnonzero(np.diff(self._offsets) > 0):
            yield str(raw_ids[row]), self.get_row(int(row))

    def get_row(self, row: int) -> Events:
        return Events(
            items=self._get(ITEM_COL, row).astype(np.int64),
            contexts={c: self._get(ctx_col(c), row).astype(np.int64) for c in self.contexts},
            feedback={a.name: target_code(a.kind, a.num_codes, self._get(act_col(a.name), row)) for a in self.actions},
            times=self._get(TIME_COL, row).astype(np.int64),
        )

    def stats(self) -> dict:
        return {
            "users": len(self),
            "events": int(self.meta["events"]),
            "file": str(self.path),
            "file_bytes": int(self.meta["bytes"]),
            "build_seconds": self.meta.get("build_seconds"),
        }

    @classmethod
    def load(cls, run_dir: Path, vocab: Vocabulary, actions: list[ActionInfo]) -> "UserStore":
        """Memory-map `<run_dir>/serving/user_store.arrow`, building it first if it is absent or
        was built for another vocabulary or format."""
        path = serving_dir(Path(run_dir)) / STORE_FILE
        meta = _store_meta(path, vocab.version()) or build_store_file(Path(run_dir), vocab, path)
        store = cls(path, meta, SortedIds(vocab.users), list(vocab.contexts), actions)
        log.info("user store: %d users, %d events, memory-mapped from %s", len(store), meta["events"], path)
        return store
