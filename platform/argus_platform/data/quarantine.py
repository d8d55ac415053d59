"""Validate event chunks into the canonical log; quarantine and count unusable rows.

Nothing is dropped silently: each unusable row is written to `quarantine/events.parquet` with the
reason and its row number in the source file, counted per reason, and the job fails when the
quarantined fraction exceeds `data.max_bad_fraction`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from argus_platform.data.sources import DataSourceError
from argus_platform.data.spec import ITEM, TIME, USER, DatasetSpec
from argus_platform.progress import Progress

log = logging.getLogger(__name__)

REJECT = "_reject"  # optional chunk column: a reader's reason to quarantine the row (empty = usable)
MISSING = "__missing__"  # context value for a null context cell (kept: context is optional per event)


class TooManyBadRows(ValueError):
    """More rows were quarantined than `data.max_bad_fraction` allows."""


def canonical_schema(spec: DatasetSpec) -> pa.Schema:
    return pa.schema(
        [(USER, pa.string()), (ITEM, pa.string()), (TIME, pa.int64())]
        + [(c, pa.string()) for c in spec.context_columns]
        + [(a.name, pa.float32()) for a in spec.actions]
    )


def _timestamps(col: pd.Series) -> pd.Series:
    """Seconds as float (NaN where unparsable). Numbers pass through; date strings are parsed."""
    num = pd.to_numeric(col, errors="coerce")
    if col.dtype == object and num.isna().mean() > 0.5:
        dt = pd.to_datetime(col, errors="coerce", utc=True)
        num = (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return num.astype("float64")


def _ids(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(ids as strings, null mask). Integral floats lose their '.0' so 12 and 12.0 are one id;
    surrounding whitespace is not part of an id."""
    bad = col.isna()
    if pd.api.types.is_float_dtype(col):
        col = col.astype("Int64")
    s = col.astype(str).str.strip()
    bad |= s.eq("") | s.str.lower().isin(["nan", "none", "null", "<na>"])
    return s, bad


# a control character, or U+FFFD (what a reader put where the bytes were not valid UTF-8): an id
# holding one is damaged text, never a real id
_DAMAGED = r"[\x00-\x1f\x7f\x{fffd}]"  # RE2 syntax: Arrow's regex, 4x faster than pandas' str.contains
FUTURE_SLACK_S = 86_400  # clocks differ; a day ahead of this machine's is the future


def _damaged(s: pd.Series) -> pd.Series:
    found = pc.match_substring_regex(pa.array(s, pa.string()), _DAMAGED)
    return pd.Series(found.to_numpy(zero_copy_only=False), index=s.index)


def _shown(col: pd.Series) -> pd.Series:
    """Values as text for a quarantine reason; missing values read 'null' (pandas 3 keeps NaN in astype(str))."""
    return col.astype(object).map(lambda v: "null" if pd.isna(v) else str(v))


def validate_chunk(df: pd.DataFrame, spec: DatasetSpec, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one chunk into (clean canonical rows, quarantined rows with `_reason`)."""
    required = [USER, ITEM, TIME, *spec.context_columns, *(a.name for a in spec.actions)]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataSourceError(f"{source}: missing column(s) {missing}; found {[c for c in df.columns if c != '_row']}")
    reason = pd.Series("", index=df.index, dtype=object)

    def flag(mask: pd.Series, text) -> None:
        mask = mask & reason.eq("")
        if mask.any():
            reason[mask] = text if isinstance(text, str) else text[mask]

    if REJECT in df.columns:  # rows a reader already found unusable, with its reason
        flag(df[REJECT].fillna("").astype(str).ne(""), df[REJECT].fillna("").astype(str))
    users, bad_user = _ids(df[USER])
    items, bad_item = _ids(df[ITEM])
    flag(bad_user, f"null {USER}")
    flag(bad_item, f"null {ITEM}")
    flag(_damaged(users), f"damaged {USER} (control character or undecodable bytes): " + users.map(repr))
    flag(_damaged(items), f"damaged {ITEM} (control character or undecodable bytes): " + items.map(repr))
    ts = _timestamps(df[TIME])
    flag(ts.isna() | (ts < 0), "bad timestamp: " + _shown(df[TIME]))
    future = ts > time.time() + FUTURE_SLACK_S
    flag(future, "timestamp in the future (seconds since 1970 expected): " + _shown(df[TIME]))
    clean = {USER: users, ITEM: items, TIME: ts}
    for c in spec.context_columns:
        clean[c] = df[c].astype(object).where(df[c].notna(), MISSING).astype(str)
    for a in spec.actions:
        v = pd.to_numeric(df[a.name], errors="coerce")
        flag(
            ~pd.Series(a.valid(v.to_numpy()), index=df.index),
            f"action {a.name} out of range ({a.kind}): " + _shown(df[a.name]),
        )
        clean[a.name] = v
    ok = reason.eq("")
    good = pd.DataFrame({k: v[ok] for k, v in clean.items()})
    good[TIME] = good[TIME].astype(np.int64)
    for a in spec.actions:
        good[a.name] = good[a.name].astype(np.float32)
    bad = df[~ok].drop(columns=[REJECT], errors="ignore").astype(str).assign(_reason=reason[~ok].astype(str))
    return good, bad


def write_canonical(
    spec: DatasetSpec,
    chunks: Iterator[pd.DataFrame],
    source: str,
    events_path: Path,
    quarantine_path: Path,
    max_bad_fraction: float,
    total_rows: int | None = None,
) -> dict:
    """Stream chunks into the canonical Parquet log; returns the validation summary.
    `total_rows`: the source's row count when known (progress with an ETA)."""
    schema = canonical_schema(spec)
    events_path.parent.mkdir(parents=True, exist_ok=True)
    total, bad_total, reasons = 0, 0, Counter()
    qwriter = None
    progress = Progress(f"prepare: checking {Path(source).name}", total_rows, "rows")
    with pq.ParquetWriter(events_path, schema) as writer:
        for df in chunks:
            good, bad = validate_chunk(df, spec, source)
            total += len(df)
            progress.update(len(df))
            writer.write_table(pa.Table.from_pandas(good, schema=schema, preserve_index=False))
            if len(bad):
                bad_total += len(bad)
                reasons.update(bad["_reason"].str.split(":").str[0])
                qtable = pa.Table.from_pandas(bad, preserve_index=False)
                if qwriter is None:
                    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
                    qwriter = pq.ParquetWriter(quarantine_path, qtable.schema)
                qwriter.write_table(qtable.cast(qwriter.schema))
    if qwriter is not None:
        qwriter.close()
    summary = {
        "source": source,
        "rows": total,
        "clean_rows": total - bad_total,
        "quarantined_rows": bad_total,
        "quarantined_fraction": bad_total / max(total, 1),
        "quarantine_reasons": dict(reasons),
        "quarantine_file": str(quarantine_path) if bad_total else None,
    }
    if total == 0:
        raise DataSourceError(f"{source}: no rows read")
    if bad_total:
        log.warning("quarantined %d of %d rows (%s) → %s", bad_total, total, dict(reasons), quarantine_path)
    if summary["quarantined_fraction"] > max_bad_fraction:
        raise TooManyBadRows(
            f"{source}: {bad_total} of {total} rows ({summary['quarantined_fraction']:.1%}) are unusable, above "
            f"data.max_bad_fraction={max_bad_fraction}; reasons {dict(reasons)}; see {quarantine_path}"
        )
    return summary
