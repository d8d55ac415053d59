"""Readers for every supported input, each yielding DataFrame chunks plus the spec that describes them.

  synthetic   the embedded generator
  sasrec      `user item` per line, chronological within a user (no time, no feedback)
  movielens   raw `ratings.dat` (`u::i::r::t`), `u.data` (tab-separated) or `ratings.csv`
              rating → like (≥ 4), dislike (≤ 2) and a graded `rating` action
  kuairand    the KuaiRand multi-feedback slice (tab-separated; many binary action columns)
  yambda      Yandex Music's flat multi_event Parquet (listens with like/dislike marks; `yambda.py`)
  events      any Parquet/CSV log, read through `data.spec` (a column mapping)

Chunks carry a `_row` column (row number in the source file) so quarantined rows can be traced.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from argus_platform.data.config import DataConfig
from argus_platform.data.spec import ITEM, TIME, USER, ActionSpec, DatasetSpec

CHUNK_ROWS = 500_000


class DataSourceError(ValueError):
    """An input file that cannot be read as declared (missing file, wrong columns)."""


# what a file that is not what its name or format says raises while being read
UNREADABLE = (
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    UnicodeDecodeError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    pa.ArrowException,
    OSError,
)


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise DataSourceError(f"input {p} is a directory, not a file (set data.path to the file itself)")
    if not p.is_file():
        raise DataSourceError(f"input file {p} does not exist (set data.path)")
    if p.stat().st_size == 0:
        raise DataSourceError(f"input file {p} is empty (0 bytes)")
    if p.suffix == ".gz":
        with open(p, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise DataSourceError(f"{p}: named .gz but not gzip-compressed (rename it or compress it)")
    return p


def unreadable(p: Path, exc: BaseException) -> DataSourceError:
    """The error for a file that could not be read as its reader expects, naming the file."""
    what = {
        UnicodeDecodeError: "not text in the expected encoding",
        pd.errors.EmptyDataError: "no data",
        pd.errors.ParserError: "malformed rows",
    }
    reason = next((text for kind, text in what.items() if isinstance(exc, kind)), type(exc).__name__)
    return DataSourceError(f"{p}: {reason}: {str(exc).strip()[:300]}")


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """The Parquet file at `path`; a file that is not one (truncated, another format) is named."""
    p = Path(path)
    try:
        f = pq.ParquetFile(p)
    except UNREADABLE as exc:
        raise DataSourceError(f"{p}: not a readable Parquet file ({str(exc).strip()[:200]})") from None
    names = f.schema_arrow.names
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DataSourceError(f"{p}: column(s) {twice} appear more than once; each column must be unique")
    return f


def _header(p: Path, sep: str = ",") -> list[str]:
    """The column names of a CSV file's first line as written (pandas renames a repeated one `x.1`);
    a repeated name is an error naming it."""
    try:
        with (
            gzip.open(p, "rt", encoding="utf-8", errors="replace")
            if p.suffix == ".gz"
            else open(p, encoding="utf-8", errors="replace") as fh
        ):
            first = fh.readline().rstrip("\r\n")
    except UNREADABLE as exc:
        raise unreadable(p, exc) from None
    names = [c.strip().strip('"') for c in first.split(sep)]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DataSourceError(f"{p}: column(s) {twice} appear more than once in the header; each must be unique")
    return names


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="latin-1")
    return open(path, encoding="latin-1")


def _with_row(chunks: Iterator[pd.DataFrame], p: Path) -> Iterator[pd.DataFrame]:
    """Each chunk with `_row` (its rows' numbers in the file); read errors name the file."""
    start = 0
    try:
        for df in chunks:
            df = df.reset_index(drop=True)
            df["_row"] = np.arange(start, start + len(df), dtype=np.int64)
            start += len(df)
            yield df
    except UNREADABLE as exc:
        raise unreadable(p, exc) from None


def read_sasrec(path: str | Path) -> tuple[DatasetSpec, Iterator[pd.DataFrame]]:
    """`user item` lines; the line number is the timestamp, so order within a user is kept."""
    p = _require_file(path)

    def chunks() -> Iterator[pd.DataFrame]:
        with _open_text(p) as fh:
            reader = pd.read_csv(
                fh, sep=r"\s+", header=None, names=[USER, ITEM, "_extra"], dtype=str, chunksize=CHUNK_ROWS, engine="c"
            )
            offset = 0
            for df in reader:
                if "_extra" in df and df["_extra"].notna().any():
                    bad = df.index[df["_extra"].notna()][0]
                    raise DataSourceError(
                        f"{p}: line {offset + bad + 1} has more than two fields; expected `user item`"
                    )
                df = df.drop(columns="_extra")
                df[TIME] = np.arange(offset, offset + len(df), dtype=np.int64)
                offset += len(df)
                yield df

    return DatasetSpec(event_time=False), _with_row(chunks(), p)


def _movielens_levels(ratings: str) -> list[float]:
    return [x / 2 for x in range(1, 11)] if ratings == "half" else [1.0, 2.0, 3.0, 4.0, 5.0]


def read_movielens(path: str | Path) -> tuple[DatasetSpec, Iterator[pd.DataFrame]]:
    """ratings.dat (`::`), u.data (tab) or ratings.csv (header) → like / dislike / graded rating."""
    p = _require_file(path)
    with _open_text(p) as fh:
        first = fh.readline()
    names = [USER, ITEM, "rating", TIME, "_extra"]  # _extra: a fifth field would shift the others
    if "::" in first:
        kwargs = dict(sep="::", engine="python", header=None, names=names)
        levels = _movielens_levels("whole")
    elif "\t" in first:
        kwargs = dict(sep="\t", header=None, names=names)
        levels = _movielens_levels("whole")
    elif first.lower().startswith("userid,"):
        _header(p)  # with a header, a row with a fifth field is a parse error (named, with its line)
        kwargs = dict(sep=",", header=0, names=names[:4])
        levels = _movielens_levels("half")
    else:
        raise DataSourceError(
            f"{p}: not a MovieLens ratings file (expected `u::i::r::t` ratings.dat, tab-separated u.data "
            f"or ratings.csv with a userId header); first line: {first.strip()[:80]!r}"
        )
    spec = DatasetSpec(
        actions=[
            ActionSpec(name="like", kind="binary"),
            ActionSpec(name="dislike", kind="binary"),
            ActionSpec(name="rating", kind="graded", levels=levels),
        ]
    )

    def chunks() -> Iterator[pd.DataFrame]:
        with _open_text(p) as fh:
            offset = 0
            for df in pd.read_csv(fh, dtype=str, chunksize=CHUNK_ROWS, **kwargs):
                if "_extra" in df and df["_extra"].notna().any():
                    bad = int(np.flatnonzero(df["_extra"].notna().to_numpy())[0])
                    raise DataSourceError(
                        f"{p}: line {offset + bad + 1} has more than 4 fields; expected user, item, rating, time"
                    )
                df = df.drop(columns="_extra", errors="ignore")
                offset += len(df)
                r = pd.to_numeric(df["rating"], errors="coerce")
                # Derived actions stay NaN where the rating is unusable, so the row is quarantined once.
                df["like"] = np.where(r.isna(), np.nan, (r >= 4).astype(float))
                df["dislike"] = np.where(r.isna(), np.nan, (r <= 2).astype(float))
                yield df

    return spec, _with_row(chunks(), p)


KUAIRAND_ACTIONS = {
    "click": "is_click",
    "long_view": "long_view",
    "like": "label",
    "comment": "is_comment",
    "follow": "is_follow",
    "forward": "is_forward",
    "profile_enter": "is_profile_enter",
}


def read_kuairand(path: str | Path) -> tuple[DatasetSpec, Iterator[pd.DataFrame]]:
    """KuaiRand slice: video → item, time_ms → seconds, hour-of-day as context, 7 binary actions."""
    p = _require_file(path)
    spec = DatasetSpec(
        context_columns=["hour"],
        actions=[ActionSpec(name=name, kind="binary") for name in KUAIRAND_ACTIONS],
    )
    needed = ["user_id", "video_id", "time_ms", "hourmin", *KUAIRAND_ACTIONS.values()]
    _header(p, "\t")

    def chunks() -> Iterator[pd.DataFrame]:
        # bytes that are not UTF-8 become U+FFFD, and an id holding one is quarantined
        for df in pd.read_csv(p, sep="\t", dtype=str, chunksize=CHUNK_ROWS, encoding_errors="replace"):
            missing = [c for c in needed if c not in df.columns]
            if missing:
                raise DataSourceError(f"{p}: missing KuaiRand column(s) {missing}; found {list(df.columns)}")
            ms = pd.to_numeric(df["time_ms"], errors="coerce")
            hourmin = pd.to_numeric(df["hourmin"], errors="coerce")
            out = pd.DataFrame(
                {
                    USER: df["user_id"],
                    ITEM: df["video_id"],
                    TIME: (ms // 1000).astype("Int64"),
                    "hour": (hourmin // 100).astype("Int64").astype(str),
                }
            )
            for name, col in KUAIRAND_ACTIONS.items():
                out[name] = df[col]
            yield out

    return spec, _with_row(chunks(), p)


def require_columns(p: Path, wanted: list[str], named_in: str) -> None:
    """Raise DataSourceError naming the file, the missing columns and the config key that named them."""
    if p.suffix == ".parquet":
        columns = parquet_file(p).schema_arrow.names
    else:
        columns = _header(p)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataSourceError(f"{p}: missing column(s) {missing} named in {named_in}; the file has {columns}")


def read_events(path: str | Path, spec: DatasetSpec) -> tuple[DatasetSpec, Iterator[pd.DataFrame]]:
    """A Parquet or CSV event log read through a column mapping (`data.spec`)."""
    p = _require_file(path)
    wanted = [spec.user_column, spec.item_column, *([spec.timestamp_column] if spec.timestamp_column else [])]
    wanted += spec.context_columns + [a.source_column for a in spec.actions]
    require_columns(p, wanted, "data.spec")
    rename = {spec.user_column: USER, spec.item_column: ITEM}
    if spec.timestamp_column:
        rename[spec.timestamp_column] = TIME
    rename.update({a.source_column: a.name for a in spec.actions})

    def chunks() -> Iterator[pd.DataFrame]:
        if p.suffix == ".parquet":
            batches = (b.to_pandas() for b in parquet_file(p).iter_batches(batch_size=CHUNK_ROWS, columns=wanted))
        else:  # bytes that are not UTF-8 become U+FFFD, and an id holding one is quarantined; every
            # column is parsed (not `usecols`), so a row with more fields than the header is an error
            batches = pd.read_csv(p, dtype=str, chunksize=CHUNK_ROWS, encoding_errors="replace")
        offset = 0
        for df in batches:
            df = df[wanted].rename(columns=rename)
            if not spec.timestamp_column:
                df[TIME] = np.arange(offset, offset + len(df), dtype=np.int64)
            offset += len(df)
            yield df

    return spec.canonical(), _with_row(chunks(), p)


def open_source(cfg: DataConfig, synthetic_dir: Path) -> tuple[DatasetSpec, Iterator[pd.DataFrame], str]:
    """(spec of the canonical log, chunks, a name for messages) for the configured source."""
    if cfg.source == "synthetic":
        from argus_platform.data.synthetic import generate, synthetic_spec

        path = generate(cfg.synthetic, synthetic_dir)
        _, chunks = read_events(path, synthetic_spec())
        return synthetic_spec(), chunks, str(path)
    from argus_platform.data.yambda import read_yambda

    readers = {"sasrec": read_sasrec, "movielens": read_movielens, "kuairand": read_kuairand, "yambda": read_yambda}
    if cfg.source in readers:
        spec, chunks = readers[cfg.source](cfg.path)
        return spec, chunks, cfg.path
    spec, chunks = read_events(cfg.path, cfg.spec)
    return spec, chunks, cfg.path
