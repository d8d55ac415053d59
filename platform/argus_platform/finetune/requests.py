"""Impressions → per-user request tables (driver side).

Each impression (user, time, item, clicked, actions) is mapped through the pre-trained run's
vocabulary and placed before the first event of the user at or after its time, so its history is
exactly the events before it. Impressions of one (user, time) form a request; requests shown
before the user's validation or test event go to those splits, earlier ones to training. Rows that
cannot be used (bad values, unknown user or item, no history before them, past the sequence) are
counted by reason, never silently dropped: rows = placed + skipped. Rows unusable for their own
data are also written to `<out_dir>/quarantine.parquet` with the reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from argus_models.contract import TIME_COL, USER_IDX
from argus_platform.data.prepare import PreparedRun
from argus_platform.data.quarantine import _ids
from argus_platform.data.sources import UNREADABLE, DataSourceError, _header, _require_file, parquet_file, unreadable
from argus_platform.data.spec import DatasetSpec
from argus_platform.data.synthetic import CLICKED, IMPRESSIONS_FILE

REQ_POS, REQ_ITEMS, REQ_CLICKED = "req_pos", "req_items", "req_clicked"


def req_act(name: str) -> str:
    return f"req_act_{name}"


def default_impressions(run_dir: Path) -> Path:
    return run_dir / "data" / "synthetic" / IMPRESSIONS_FILE


def read_impressions(path: Path, spec: DatasetSpec) -> pd.DataFrame:
    """The impressions file (Parquet or CSV) with `_row`, its row numbers; a file that cannot be read
    as one is a DataSourceError naming it."""
    if not Path(path).exists():
        raise DataSourceError(
            f"no impressions at {path}: synthetic runs write them (data.synthetic.impressions_per_event > 0); "
            "for other data pass impressions=<file> with columns user_id, timestamp, item_id, clicked and the actions"
        )
    p = _require_file(path)
    need = ["user_id", "timestamp", "item_id", CLICKED] + [a.name for a in spec.actions]
    try:
        columns = parquet_file(p).schema_arrow.names if p.suffix == ".parquet" else _header(p)
        missing = [c for c in need if c not in columns]
        if missing:
            raise DataSourceError(f"{p}: missing column(s) {missing}; impressions need {need}")
        df = pq.read_table(p, columns=need).to_pandas() if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
    except UNREADABLE as exc:
        raise unreadable(p, exc) from None
    if df.empty:
        raise DataSourceError(f"{p}: no impressions (no rows)")
    return df[need].assign(_row=np.arange(len(df), dtype=np.int64))


def unusable_impressions(df: pd.DataFrame, spec: DatasetSpec) -> pd.Series:
    """Per row, why it cannot be used ('' when it can): a bad timestamp, a `clicked` that is not 0 or
    1, an action value outside its kind."""
    reason = pd.Series("", index=df.index, dtype=object)

    def flag(mask, text: str) -> None:
        reason[mask & reason.eq("")] = text

    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    flag(ts.isna() | (ts < 0), "bad timestamp")
    clicked = pd.to_numeric(df[CLICKED], errors="coerce")
    flag(~clicked.isin([0, 1]), f"{CLICKED} not 0 or 1")
    for a in spec.actions:
        values = pd.to_numeric(df[a.name], errors="coerce").to_numpy()
        flag(pd.Series(~a.valid(values), index=df.index), f"action {a.name} out of range ({a.kind})")
    return reason


def build_requests(
    prepared: PreparedRun,
    run_dir: Path,
    impressions: Path,
    slate_size: int,
    out_dir: Path,
    splits: tuple[str, ...] = ("train", "validation", "test"),
) -> dict:
    """Write <out_dir>/<split>.parquet for each of `splits` and summary.json; returns the summary.
    Impressions of the splits not asked for are counted as such."""
    spec, vocab = prepared.spec, prepared.vocab
    df = read_impressions(impressions, spec)
    reasons: Counter = Counter()
    unusable = unusable_impressions(df, spec)
    users, _ = _ids(df["user_id"])
    items, _ = _ids(df["item_id"])
    user_idx = _index(vocab.users, users.to_numpy(), start=0)
    item_idx = _index(vocab.items, items.to_numpy(), start=1)
    bad = unusable.ne("").to_numpy().copy()
    reasons.update(unusable[bad].tolist())
    for mask, why in ((user_idx < 0, "unknown user"), (item_idx < 0, "unknown item")):
        reasons[why] += int((mask & ~bad).sum())
        bad |= mask
    quarantine = out_dir / "quarantine.parquet"  # every row not placed for a reason of its data, with it
    why = np.where(unusable.ne(""), unusable, np.where(user_idx < 0, "unknown user", "unknown item"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if bad.any():
        df[bad].astype(str).assign(_reason=why[bad]).to_parquet(quarantine, index=False)
    elif quarantine.exists():
        quarantine.unlink()
    df = df.assign(_u=user_idx, _i=item_idx, timestamp=pd.to_numeric(df["timestamp"], errors="coerce"))[~bad]
    for a in [CLICKED, *(a.name for a in spec.actions)]:
        df[a] = pd.to_numeric(df[a], errors="coerce")
    placed = 0
    # The full sequences: the test split holds every event of every user.
    seqs = pq.ParquetDataset(prepared.paths["test"]).read().to_pandas().set_index(USER_IDX)
    targets = {a.name: a for a in spec.actions}
    out = {s: [] for s in splits}
    for u, group in df.groupby("_u", sort=True):
        if u not in seqs.index:
            reasons["user without a sequence"] += len(group)
            continue
        row = seqs.loc[u]
        times = np.asarray(row[TIME_COL])
        n = len(times)
        by_split: dict[str, list] = {s: [] for s in out}
        for t, req in group.groupby("timestamp", sort=True):
            pos = int(np.searchsorted(times, t, side="left"))
            if pos < 1:
                reasons["no history before it"] += len(req)
                continue
            if pos >= n:
                reasons["after the last event"] += len(req)
                continue
            split = "test" if pos == n - 1 else "validation" if pos == n - 2 else "train"
            if split not in out:
                reasons[f"{split} (not asked for)"] += len(req)
                continue
            req = req.sort_values(CLICKED, ascending=False, kind="stable")
            reasons["beyond slate_size"] += max(0, len(req) - slate_size)
            req = req.head(slate_size)
            placed += len(req)
            acts = {name: a.target(req[name].to_numpy()).astype(np.float32) for name, a in targets.items()}
            by_split[split].append((pos, req["_i"].to_numpy(np.int32), req[CLICKED].to_numpy(np.float32), acts))
        for split, reqs in by_split.items():
            if reqs:
                # training rows stop before the validation event: fine-tuning never reads held-out events
                end = n - 2 if split == "train" else n
                out[split].append(_user_row(u, row, end, reqs, spec))
    paths, rows = {}, {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, records in out.items():
        table = _table(records, prepared, spec)
        path = out_dir / f"{split}.parquet"
        pq.write_table(table, path)
        paths[split], rows[split] = str(path), table.num_rows
    summary = {
        "impressions": str(impressions),
        "rows": len(user_idx),
        "placed": placed,  # rows = placed + the skipped ones, by reason
        "skipped": dict(reasons),
        "quarantine_file": str(quarantine) if bad.any() else None,
        "users": rows,
        "paths": paths,
        "requests": {s: int(sum(len(r[REQ_POS]) for r in out[s])) for s in out},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _index(raw: np.ndarray, values: np.ndarray, start: int) -> np.ndarray:
    """Vocabulary index of raw ids (-1 when unknown)."""
    lookup = pd.Index(raw)
    pos = lookup.get_indexer(values)
    return np.where(pos >= 0, pos + start, -1)


def _user_row(u: int, row: pd.Series, end: int, reqs: list, spec: DatasetSpec) -> dict:
    rec = {USER_IDX: u}
    for col, value in row.items():
        rec[col] = np.asarray(value)[:end]
    rec[REQ_POS] = np.array([r[0] for r in reqs], np.int32)
    rec[REQ_ITEMS] = [r[1] for r in reqs]
    rec[REQ_CLICKED] = [r[2] for r in reqs]
    for a in spec.actions:
        rec[req_act(a.name)] = [r[3][a.name] for r in reqs]
    return rec


def _table(records: list[dict], prepared: PreparedRun, spec: DatasetSpec) -> pa.Table:
    seq_schema = pq.ParquetDataset(prepared.paths["test"]).schema
    fields = list(seq_schema) + [
        pa.field(REQ_POS, pa.list_(pa.int32())),
        pa.field(REQ_ITEMS, pa.list_(pa.list_(pa.int32()))),
        pa.field(REQ_CLICKED, pa.list_(pa.list_(pa.float32()))),
    ]
    fields += [pa.field(req_act(a.name), pa.list_(pa.list_(pa.float32()))) for a in spec.actions]
    schema = pa.schema(fields)
    if not records:
        return schema.empty_table()
    return pa.Table.from_pylist(records, schema=schema)
