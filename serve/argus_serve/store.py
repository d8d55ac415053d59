"""Histories of the users a run was trained on, keyed by raw user id, loaded once at start.

Source: the run's prepared sequence tables (data/{train,validation,test}/*.parquet, one row per
user and split, list columns ordered by time). A user's history is their longest row: under
leave-last-out that is the test row, i.e. every event the run has seen for them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from argus_models.contract import ITEM_COL, USER_IDX, Vocabulary, act_col, ctx_col, list_values, target_code
from argus_models.inference import Events

from argus_serve.artifacts import ActionInfo, ArtifactError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _read_split(path: Path, columns: list[str]) -> pa.Table | None:
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        return None
    return pq.ParquetDataset(str(path)).read(columns=columns)


class UserStore:
    """Raw user id → full history (model indices), from one training run's data."""

    def __init__(self, users: dict[str, int], table: pa.Table, contexts: list[str], actions: list[ActionInfo]) -> None:
        self._row = users  # raw id -> row of `table`
        self.contexts, self.actions = contexts, actions
        self._cols = {name: list_values(table.column(name)) for name in table.column_names if name != USER_IDX}

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._row

    def _get(self, name: str, row: int) -> np.ndarray:
        values, offsets = self._cols[name]
        return values[offsets[row]:offsets[row + 1]]

    def get(self, user_id: str) -> Events | None:
        row = self._row.get(user_id)
        if row is None:
            return None
        return Events(
            items=self._get(ITEM_COL, row).astype(np.int64),
            contexts={c: self._get(ctx_col(c), row).astype(np.int64) for c in self.contexts},
            feedback={a.name: target_code(a.kind, a.num_codes, self._get(act_col(a.name), row)) for a in self.actions},
        )

    @classmethod
    def load(cls, run_dir: Path, vocab: Vocabulary, actions: list[ActionInfo]) -> "UserStore":
        contexts = list(vocab.contexts)
        columns = [USER_IDX, ITEM_COL] + [ctx_col(c) for c in contexts] + [act_col(a.name) for a in actions]
        tables = [t for s in SPLITS if (t := _read_split(run_dir / "data" / s, columns)) is not None]
        if not tables:
            raise ArtifactError(f"{run_dir}/data holds no train/validation/test sequences; cannot serve known users")
        table = pa.concat_tables(tables)
        # keep each user's longest row
        lengths = pc.list_value_length(table.column(ITEM_COL)).to_numpy()
        users = table.column(USER_IDX).to_numpy()
        order = np.lexsort((-lengths, users))
        first = np.ones(len(order), dtype=bool)
        first[1:] = users[order][1:] != users[order][:-1]
        chosen = order[first]
        table = table.take(pa.array(chosen))
        raw = vocab.users[table.column(USER_IDX).to_numpy()]
        store = cls({u: i for i, u in enumerate(raw.tolist())}, table, contexts, actions)
        log.info("user store: %d users, %d events from %s", len(store), int(lengths[chosen].sum()), run_dir / "data")
        return store
