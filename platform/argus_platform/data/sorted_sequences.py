"""Per-user sequences in one streaming pass, for logs whose events are grouped by user.

Most logs arrive that way (the synthetic generator, SASRec files, Yambda's flat Parquet, exports
sorted by user and time), and then grouping needs no shuffle: the canonical log is read in chunks
of `CHUNK_EVENTS`, each user's events are contiguous (the last user of a chunk is carried into the
next), events are ordered by time within a user (a stable sort: ties keep their file order), and
every split is cut with array arithmetic on the users' offsets. Memory is one chunk; cost is
linear in the events. Each chunk's rows are written in a seeded random order, so a training epoch
that reads blocks in random order does not see users in id order.

`grouped_by_user` tells whether a log qualifies (the number of runs of equal users equals the
number of users); other logs go through the Ray Data group-by (`sequences.build_sequences`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from argus_models.contract import USER_IDX, Vocabulary, act_col, ctx_col
from argus_platform.data.config import DataConfig
from argus_platform.data.spec import ITEM, TIME, USER, DatasetSpec
from argus_platform.progress import Progress

CHUNK_EVENTS = 1_000_000
SPLITS = ("train", "validation", "test")


def user_codes(column: pa.ChunkedArray | pa.Array, users: pa.Array) -> np.ndarray:
    return pc.index_in(column, value_set=users).to_numpy(zero_copy_only=False).astype(np.int64)


def grouped_by_user(events_path: Path, vocab: Vocabulary) -> bool:
    """Whether every user's events are contiguous in the log (reads the user column once)."""
    users = pa.array(vocab.users)
    runs, prev = 0, None
    for batch in pq.ParquetFile(events_path).iter_batches(batch_size=CHUNK_EVENTS, columns=[USER]):
        u = user_codes(batch.column(0), users)
        if len(u) == 0:
            continue
        runs += int(np.count_nonzero(u[1:] != u[:-1])) + int(prev is None or u[0] != prev)
        prev = u[-1]
    return runs == len(vocab.users)


def encode(batch: pa.Table, vocab: tuple[pa.Array, pa.Array, dict[str, pa.Array]], spec: DatasetSpec) -> pa.Table:
    """Canonical events → index columns (user_idx, item 1..N, timestamp, ctx_* 1..V, act_* targets)."""
    items, users, contexts = vocab
    cols = {
        USER_IDX: pc.index_in(batch.column(USER), value_set=users).cast(pa.int64()),
        ITEM: pc.add(pc.index_in(batch.column(ITEM), value_set=items), 1).cast(pa.int32()),
        TIME: batch.column(TIME),
    }
    for c in spec.context_columns:
        cols[ctx_col(c)] = pc.add(pc.index_in(batch.column(c), value_set=contexts[c]), 1).cast(pa.int32())
    for a in spec.actions:
        values = batch.column(a.name).to_numpy(zero_copy_only=False)
        cols[act_col(a.name)] = pa.array(a.target(values), type=pa.float32())
    return pa.table(cols)


def split_ends(
    lengths: np.ndarray,
    starts: np.ndarray,
    times: np.ndarray,
    split: str,
    protocol: str,
    cuts: tuple[float, float, float, float],
) -> np.ndarray:
    """Per user, how many of its (time-ordered) events the split's row holds; the last is the target.

    leave_last_out: n − 2 / n − 1 / n. Temporal splits, cuts = (train end, validation start,
    validation end, test start): train = the events before the train end; validation ends at the
    user's first event in [validation start, validation end), test at the first event from the test
    start (0 = no row)."""
    if protocol == "leave_last_out":
        return lengths - {"train": 2, "validation": 1, "test": 0}[split]
    user = np.repeat(np.arange(len(lengths)), lengths)
    if split == "train":
        return np.bincount(user[times < cuts[0]], minlength=len(lengths))
    lo, hi = (cuts[1], cuts[2]) if split == "validation" else (cuts[3], np.inf)
    before = np.bincount(user[times < lo], minlength=len(lengths))
    inside = before < lengths
    nxt = times[np.minimum(starts + before, len(times) - 1)] if len(times) else np.zeros(0)
    inside &= nxt < hi
    return np.where(inside, before + 1, 0)


def _rows(chunk: pa.Table, starts: np.ndarray, ends: np.ndarray, keep: np.ndarray) -> pa.Table:
    """One row per kept user: the first `ends` events of each, as list columns."""
    starts, ends = starts[keep], ends[keep]
    offsets = np.concatenate([[0], np.cumsum(ends)]).astype(np.int64)
    idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - starts, ends)
    take = pa.array(idx)
    out = {USER_IDX: chunk.column(USER_IDX).take(pa.array(starts))}
    for name in chunk.column_names:
        if name == USER_IDX:
            continue
        values = chunk.column(name).take(take).combine_chunks()
        out[name] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    return pa.table(out)


def _complete_users(table: pa.Table, final: bool) -> tuple[pa.Table, pa.Table]:
    """(rows of the users complete in `table`, rows of its last user to carry into the next chunk)."""
    if final or table.num_rows == 0:
        return table, table.slice(0, 0)
    u = table.column(USER_IDX).to_numpy()
    last_start = int(np.nonzero(u != u[-1])[0][-1]) + 1 if (u != u[-1]).any() else 0
    return table.slice(0, last_start), table.slice(last_start)


def build_sorted(
    events_path: Path,
    vocab: Vocabulary,
    spec: DatasetSpec,
    cfg: DataConfig,
    out_dir: Path,
    cuts: tuple[float, float, float, float] | None,
    seed: int = 0,
):
    """Write {train,validation,test}/part-*.parquet from a log grouped by user; returns PreparedData."""
    from argus_platform.data.sequences import PreparedData  # (the two builders return the same thing)

    arrays = (pa.array(vocab.items), pa.array(vocab.users), {c: pa.array(v) for c, v in vocab.contexts.items()})
    cuts = cuts or (0.0,) * 4
    paths = {s: out_dir / s for s in SPLITS}
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)  # leftovers of an interrupted preparation would add rows
        path.mkdir(parents=True)
    rows = {s: 0 for s in SPLITS}
    counts = np.zeros(vocab.num_items + 1, dtype=np.int64)
    pf = pq.ParquetFile(events_path)
    progress = Progress(
        "prepare: per-user sequences (log grouped by user: one streaming pass)", pf.metadata.num_rows, "events"
    )
    carry, part, users_seen, schema = None, 0, 0, None
    batches = pf.iter_batches(batch_size=CHUNK_EVENTS)
    batch = next(batches, None)
    while batch is not None:
        nxt = next(batches, None)
        encoded = encode(pa.Table.from_batches([batch]), arrays, spec)
        table = pa.concat_tables([carry, encoded]) if carry is not None else encoded
        chunk, carry = _complete_users(table, final=nxt is None)
        users_seen += _write_chunk(chunk, cfg, cuts, paths, part, rows, counts, seed)
        schema = schema or chunk.schema
        part += 1
        progress.update(batch.num_rows)
        batch = nxt
    progress.close(f"{users_seen:,} users; rows {rows}")
    for split, path in paths.items():
        if not any(path.iterdir()):  # an empty split still has a schema for its readers
            pq.write_table(
                _rows(_empty(schema), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)),
                path / "part-00000.parquet",
            )
    return PreparedData(
        paths={s: str(p) for s, p in paths.items()},
        rows=rows,
        item_counts=counts,
        users_too_short=users_seen - rows["test"] if cfg.split == "leave_last_out" else 0,
        temporal_cuts=cuts if cfg.split != "leave_last_out" else None,
    )


def _empty(schema: pa.Schema | None) -> pa.Table:
    return schema.empty_table() if schema is not None else pa.table({USER_IDX: pa.array([], pa.int64())})


def _write_chunk(
    chunk: pa.Table,
    cfg: DataConfig,
    cuts: tuple[float, float, float, float],
    paths: dict[str, Path],
    part: int,
    rows: dict[str, int],
    counts: np.ndarray,
    seed: int,
) -> int:
    """Cut one chunk of complete users into the splits; returns its number of users."""
    if chunk.num_rows == 0:
        return 0
    u = chunk.column(USER_IDX).to_numpy()
    times = chunk.column(TIME).to_numpy()
    first = np.concatenate([[True], u[1:] != u[:-1]])
    run = np.cumsum(first) - 1
    order = np.lexsort((times, run))  # time order within each user; equal times keep the file order
    chunk, times = chunk.take(pa.array(order)), times[order]
    starts = np.nonzero(first)[0]
    lengths = np.diff(np.append(starts, len(u)))
    shuffle = np.random.default_rng([seed, part]).permutation(len(starts))
    for split, path in paths.items():
        ends = split_ends(lengths, starts, times, split, cfg.split, cuts)
        keep = (lengths >= cfg.min_events_per_user) & (ends >= 2)
        if not keep.any():
            continue
        table = _rows(chunk, starts[shuffle], ends[shuffle], keep[shuffle])
        pq.write_table(table, path / f"part-{part:05d}.parquet")
        rows[split] += table.num_rows
        if split == "train":
            counts += np.bincount(pc.list_flatten(table.column(ITEM)).to_numpy(), minlength=len(counts))
    return len(starts)
