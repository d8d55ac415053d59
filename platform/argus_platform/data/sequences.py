"""Per-user sequences and evaluation splits, built with Ray Data.

canonical events ──encode ids──▶ group by user, sort by time ──▶ one row per user with list columns
  item [int32], timestamp [int64], ctx_<c> [int32], act_<a> [float32 targets]
then split per user:
  leave_last_out  train = all but the last two events; validation window ends at the
                  second-to-last event, test window at the last one
  temporal        global cut times at quantiles of the event time; train = events before
                  T_val; validation/test windows end at the user's first event in [T_val, T_test) /
                  after T_test
  temporal_windows  the same with windows at the end of the log (test = its last day, validation
                  the day before, a gap before each; Yambda's split): train = events before the gap
                  that precedes validation
An evaluation row holds the whole history before the target plus the target as its last event.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from argus_models.contract import USER_IDX, Vocabulary
from argus_platform.data.config import DataConfig
from argus_platform.data.sorted_sequences import build_sorted, encode, grouped_by_user
from argus_platform.data.spec import ITEM, TIME, DatasetSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_RESOLVED: dict[str, object] = {}


def _resolve(ref: "ray.ObjectRef"):
    """Fetch a broadcast object once per worker process (Ray Data passes refs through unresolved)."""
    key = ref.hex()
    if key not in _RESOLVED:
        _RESOLVED.clear()
        _RESOLVED[key] = ray.get(ref)
    return _RESOLVED[key]


def _encode(batch: pa.Table, vocab_ref: "ray.ObjectRef", spec: DatasetSpec) -> pa.Table:
    return encode(batch, _resolve(vocab_ref), spec)


def _lists(columns: dict[str, list[np.ndarray]], users: np.ndarray) -> pa.Table:
    """Explicit Arrow list columns (pandas cells of arrays would become tensor extension types)."""
    out = {USER_IDX: pa.array(users, type=pa.int64())}
    for name, values in columns.items():
        out[name] = pa.array(values, type=pa.list_(pa.from_numpy_dtype(values[0].dtype) if values else pa.int64()))
    return pa.table(out)


def _to_sequence(group: dict[str, np.ndarray]) -> pa.Table:
    order = np.argsort(group[TIME], kind="stable")
    cols = {c: [v[order]] for c, v in group.items() if c != USER_IDX}
    return _lists(cols, group[USER_IDX][:1])


def _cut(
    batch: pa.Table, split: str, protocol: str, cuts: tuple[float, float, float, float], min_events: int
) -> pa.Table:
    """Rows of one split from full per-user sequences (list columns sliced per user)."""
    list_cols = [c for c in batch.column_names if c != USER_IDX]
    times = batch.column(TIME).to_pylist()
    keep, ends = [], []
    for i, ts in enumerate(times):
        ts = np.asarray(ts)
        n = len(ts)
        if n < min_events:
            continue
        if protocol == "leave_last_out":
            end = {"train": n - 2, "validation": n - 1, "test": n}[split]
        elif split == "train":
            end = int(np.searchsorted(ts, cuts[0], side="left"))
        else:
            lo, hi = (cuts[1], cuts[2]) if split == "validation" else (cuts[3], np.inf)
            inside = np.nonzero((ts >= lo) & (ts < hi))[0]
            end = int(inside[0]) + 1 if inside.size else 0
        if end >= 2:  # at least one history event before the (last) target
            keep.append(i)
            ends.append(end)
    users = batch.column(USER_IDX).to_numpy()[keep]
    cols = {}
    for c in list_cols:
        col = batch.column(c)
        cols[c] = [col[i].values.to_numpy(zero_copy_only=False)[:e] for i, e in zip(keep, ends)]
    schema = batch.schema
    table = _lists(cols, users) if keep else pa.table({f.name: pa.array([], type=f.type) for f in schema})
    return table.cast(schema)


@dataclass
class PreparedData:
    """Where the prepared splits live and what they contain."""

    paths: dict[str, str]
    rows: dict[str, int]
    item_counts: np.ndarray  # [N+1] training-split item frequencies (index 0 = padding)
    users_too_short: int
    temporal_cuts: tuple[float, float, float, float] | None  # train end, validation start/end, test start


def temporal_cuts(events_path: Path, cfg: DataConfig) -> tuple[float, float, float, float] | None:
    """(train end, validation start, validation end, test start) of a temporal split; None for
    leave_last_out. temporal: T_val, T_val, T_test, T_test at quantiles of the event times;
    temporal_windows: the windows at the end of the log, with a gap before each."""
    if cfg.split == "leave_last_out":
        return None
    ts = pq.read_table(events_path, columns=[TIME]).column(TIME).to_numpy()
    if cfg.split == "temporal":
        t_val, t_test = (
            float(np.quantile(ts, cfg.temporal_val_quantile)),
            float(np.quantile(ts, cfg.temporal_test_quantile)),
        )
        return t_val, t_val, t_test, t_test
    test = float(ts.max()) - cfg.test_window_seconds + 1  # the last test_window_seconds, inclusive of the last event
    val_end = test - cfg.gap_seconds
    val = val_end - cfg.val_window_seconds
    return val - cfg.gap_seconds, val, val_end, test


def build_sequences(
    events_path: Path, vocab: Vocabulary, spec: DatasetSpec, cfg: DataConfig, out_dir: Path
) -> PreparedData:
    """Encode, group and split the canonical log; write Parquet per split. A log grouped by user
    takes one streaming pass (`sorted_sequences`); any other goes through a Ray Data group-by."""
    cuts = temporal_cuts(events_path, cfg)
    if grouped_by_user(events_path, vocab):
        return build_sorted(events_path, vocab, spec, cfg, out_dir, cuts)
    events = pq.ParquetFile(events_path).metadata.num_rows
    print(
        f"[argus] prepare: the log is not grouped by user: grouping {events:,} events with a Ray Data "
        "shuffle (Ray Data's progress below)",
        flush=True,
    )
    context = ray.data.DataContext.get_current()
    shown, context.enable_progress_bars = context.enable_progress_bars, True
    try:
        return _build_shuffled(events_path, vocab, spec, cfg, out_dir, cuts)
    finally:
        context.enable_progress_bars = shown


def _build_shuffled(
    events_path: Path,
    vocab: Vocabulary,
    spec: DatasetSpec,
    cfg: DataConfig,
    out_dir: Path,
    cuts: tuple[float, float] | None,
) -> PreparedData:
    vocab_ref = ray.put(
        (pa.array(vocab.items), pa.array(vocab.users), {c: pa.array(v) for c, v in vocab.contexts.items()})
    )
    encoded = ray.data.read_parquet(str(events_path)).map_batches(
        _encode, batch_format="pyarrow", fn_kwargs={"vocab_ref": vocab_ref, "spec": spec}
    )
    # ~100k events per shuffle partition: the default 200 partitions cost more than they save on small logs.
    partitions = int(np.clip(pq.ParquetFile(events_path).metadata.num_rows // 100_000, 2, 200))
    sequences = (
        encoded.groupby(USER_IDX, num_partitions=partitions)
        .map_groups(_to_sequence, batch_format="numpy")
        .materialize()
    )
    paths, rows = {}, {}
    for split in SPLITS:
        path = out_dir / split
        shutil.rmtree(path, ignore_errors=True)  # leftovers of an interrupted preparation would add rows
        ds = sequences.map_batches(
            _cut,
            batch_format="pyarrow",
            fn_kwargs=dict(
                split=split, protocol=cfg.split, cuts=cuts or (0.0,) * 4, min_events=cfg.min_events_per_user
            ),
        )
        ds.write_parquet(str(path))
        paths[split], rows[split] = str(path), pq.ParquetDataset(str(path)).read(columns=[USER_IDX]).num_rows
    n_users = sequences.count()
    train_items = pc.list_flatten(pq.ParquetDataset(paths["train"]).read(columns=[ITEM]).column(ITEM)).to_numpy()
    counts = np.bincount(train_items, minlength=vocab.num_items + 1).astype(np.int64)
    return PreparedData(
        paths=paths,
        rows=rows,
        item_counts=counts,
        users_too_short=n_users - rows["test"] if cfg.split == "leave_last_out" else 0,
        temporal_cuts=cuts,
    )
