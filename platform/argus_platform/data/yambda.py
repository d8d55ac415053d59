"""Yambda (Yandex Music) flat `multi_event` Parquet → the canonical event log.

Columns: uid, item_id, timestamp (seconds, 5-s granularity), is_organic (0/1), played_ratio_pct and
track_length_seconds (listens only; the ratio can exceed 100), event_type in listen / like /
dislike / unlike / undislike. One canonical event per **listen**:

    context   source = organic | recommended (from is_organic)
    actions   played_ratio = min(played_ratio_pct, 100) / 100   (ratio)
              listen_plus  = played_ratio_pct >= 50              (binary: Yambda's "Listen+")
              like, dislike                                       (binary)

A like (dislike) that a later unlike (undislike) of the same item cancels counts for nothing; one
that stands marks the user's latest listen of that item at or before it. A standing like or
dislike with no such listen has no event to mark: it is quarantined with that reason, so nothing
is lost silently. unlike/undislike rows are consumed by the cancellation. The reader streams the
file by row group and needs it grouped by uid, as published (sorted by uid and timestamp).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from argus_platform.data.quarantine import REJECT
from argus_platform.data.spec import ITEM, TIME, USER, ActionSpec, DatasetSpec

COLUMNS = ["uid", "item_id", "timestamp", "is_organic", "played_ratio_pct", "track_length_seconds", "event_type"]
EVENT_TYPES = {"listen", "like", "dislike", "unlike", "undislike"}
LISTEN_PLUS_PCT = 50
BATCH_ROWS = 1_000_000


def yambda_spec() -> DatasetSpec:
    return DatasetSpec(
        context_columns=["source"],
        actions=[
            ActionSpec(name="played_ratio", kind="ratio", buckets=10),
            ActionSpec(name="listen_plus", kind="binary"),
            ActionSpec(name="like", kind="binary"),
            ActionSpec(name="dislike", kind="binary"),
        ],
    )


def read_yambda(path: str | Path) -> tuple[DatasetSpec, Iterator[pd.DataFrame]]:
    from argus_platform.data.sources import DataSourceError, _require_file, parquet_file

    p = _require_file(path)
    names = parquet_file(p).schema_arrow.names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataSourceError(f"{p}: not a Yambda flat multi_event file: missing column(s) {missing}; found {names}")

    def chunks() -> Iterator[pd.DataFrame]:
        carry, done_users, row0 = None, -1, 0
        batches = parquet_file(p).iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS)
        batch = next(batches, None)
        while batch is not None:
            nxt = next(batches, None)
            df = batch.to_pandas()
            df["_row"] = np.arange(row0, row0 + len(df), dtype=np.int64)
            row0 += len(df)
            df = pd.concat([carry, df], ignore_index=True) if carry is not None else df
            uid = pd.to_numeric(df["uid"], errors="coerce")
            if len(df) and uid.notna().any() and uid.min() <= done_users:
                bad = int(df["_row"][uid <= done_users].iloc[0])
                raise DataSourceError(
                    f"{p}: row {bad} has uid {uid[uid <= done_users].iloc[0]:.0f} after uid "
                    f"{done_users} was complete: the reader needs the file grouped by uid (as published; "
                    "sort it by uid and timestamp first)"
                )
            if nxt is not None and len(df):
                last = uid.iloc[-1]
                carry, df = df[uid == last], df[uid != last]
            else:
                carry = None
            if len(df):
                top = pd.to_numeric(df["uid"], errors="coerce").max()  # NaN when every uid is null
                done_users = max(done_users, int(top)) if pd.notna(top) else done_users
                yield to_events(df)
            batch = nxt
        if carry is not None and len(carry):
            yield to_events(carry)

    return yambda_spec(), chunks()


def _standing(marks: pd.DataFrame, mark: str, cancel: str) -> pd.Series:
    """Mask of `mark` rows not cancelled by a later `cancel` of the same (uid, item) before the next mark."""
    ordered = marks.sort_values(["uid", "item_id", "timestamp", "_row"], kind="stable")
    nxt = ordered.groupby(["uid", "item_id"], sort=False)["event_type"].shift(-1)
    return ((ordered["event_type"] == mark) & (nxt != cancel)).reindex(marks.index)


def to_events(df: pd.DataFrame) -> pd.DataFrame:
    """One chunk of whole users → canonical rows (listens, plus rejected marks with their reason)."""
    kind = df["event_type"].astype(str).str.strip().str.lower()
    df = df.assign(event_type=kind)
    unknown = ~kind.isin(EVENT_TYPES)
    listens = df[kind.eq("listen") | unknown].copy()  # unknown types fail validation below, with the value
    pct = pd.to_numeric(listens["played_ratio_pct"], errors="coerce")
    out = pd.DataFrame(
        {
            USER: listens["uid"],
            ITEM: listens["item_id"],
            TIME: listens["timestamp"],
            "source": np.where(pd.to_numeric(listens["is_organic"], errors="coerce") == 1, "organic", "recommended"),
            "played_ratio": pct.clip(upper=100) / 100.0,
            "listen_plus": (pct >= LISTEN_PLUS_PCT).astype(float).where(pct.notna()),
            "like": 0.0,
            "dislike": 0.0,
            "_row": listens["_row"],
            REJECT: "",
        },
        index=listens.index,
    )
    organic = listens["is_organic"].astype(object).map(lambda v: "null" if pd.isna(v) else str(v).strip())
    off = ~organic.isin(["0", "1", "0.0", "1.0"])
    out.loc[off[off].index, REJECT] = "is_organic not 0 or 1: " + organic[off]
    out.loc[unknown[unknown].index, REJECT] = "unknown event_type: " + kind[unknown]
    out.loc[pct.isna() & ~unknown.loc[listens.index], REJECT] = "listen without played_ratio_pct"
    rejected = []
    for mark, cancel in (("like", "unlike"), ("dislike", "undislike")):
        marks = df[kind.isin([mark, cancel])]
        if marks.empty:
            continue
        stand = marks[_standing(marks, mark, cancel)]
        hit = _latest_listen(stand, listens)
        found = hit.notna()
        out.loc[hit[found].astype(np.int64).to_numpy(), mark] = 1.0
        orphan = stand[~found]
        if len(orphan):
            rejected.append(
                pd.DataFrame(
                    {
                        USER: orphan["uid"],
                        ITEM: orphan["item_id"],
                        TIME: orphan["timestamp"],
                        "source": "recommended",
                        "played_ratio": 0.0,
                        "listen_plus": 0.0,
                        "like": 0.0,
                        "dislike": 0.0,
                        "_row": orphan["_row"],
                        REJECT: f"{mark} without an earlier listen of the item",
                    }
                )
            )
    return pd.concat([out, *rejected], ignore_index=True) if rejected else out.reset_index(drop=True)


def _latest_listen(marks: pd.DataFrame, listens: pd.DataFrame) -> pd.Series:
    """Per mark, the index (in `listens`) of the user's latest listen of the item at or before it (NaN: none)."""
    if marks.empty or listens.empty:
        return pd.Series(np.nan, index=marks.index)
    left = marks[["uid", "item_id", "timestamp"]].assign(_mark=marks.index).sort_values("timestamp", kind="stable")
    right = (
        listens[["uid", "item_id", "timestamp"]]
        .assign(_listen=listens.index.astype(float))
        .sort_values("timestamp", kind="stable")
    )
    for frame in (left, right):
        frame["timestamp"] = pd.to_numeric(frame["timestamp"], errors="coerce").astype("float64")
    left, right = left.dropna(subset=["timestamp"]), right.dropna(subset=["timestamp"])
    merged = pd.merge_asof(left, right, on="timestamp", by=["uid", "item_id"], direction="backward")
    return merged.set_index("_mark")["_listen"].reindex(marks.index)
