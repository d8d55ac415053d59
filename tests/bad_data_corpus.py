"""A generated corpus of broken inputs for every reader (tests/test_bad_data.py).

Each reader has a small valid file (`Layout`: its columns, their roles, its format). Every case
writes that file broken in one way — the file itself (zero bytes, truncated, a directory, a gzip that
is not gzip, garbage, the wrong delimiter, no rows, a column missing or twice) or some of its rows
(null, padded or non-UTF-8 ids, NaN / negative / future / text timestamps, actions out of range or
not numbers, mixed types, ragged rows, a user with one event, only bad rows) — and says how many
rows it broke. The test holds every case to one contract: an error naming the file (and the column,
row or value when a row is at fault), or every row counted — rows in = rows kept + rows
quarantined — with each broken row quarantined, never kept as it was.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

NOW = 1_760_000_000  # seconds; the valid rows' timestamps lie before it
FUTURE = 4_102_444_800  # 2100-01-01


@dataclass
class Layout:
    """A reader's file: columns in order, which is which, how it is written."""

    name: str  # the reader (a test id)
    columns: list[str]
    user: str
    item: str
    time: str | None  # None: the reader has no timestamp (order is time)
    actions: dict[str, tuple[str, str]]  # column -> (an out-of-range value, a non-number)
    fmt: str  # "text" or "parquet"
    sep: str = ","
    header: bool = True
    suffix: str = ".csv"
    source: dict = field(default_factory=dict)  # the DataConfig keys that read it
    time_scale: int = 1  # stored time units per second (KuaiRand: ms)

    def rows(self, users: int = 12, per_user: int = 6) -> list[dict]:
        """A valid log: `users` users with `per_user` events each, time ascending per user."""
        out = []
        for u in range(users):
            for k in range(per_user):
                row = {self.user: str(100 + u), self.item: str(1 + (u * 7 + k * 3) % 40)}
                if self.time:
                    row[self.time] = str((NOW - 10_000 + u * 100 + k) * self.time_scale)
                for c in self.columns:
                    row.setdefault(c, self.default(c, k))
                out.append(row)
        return out

    def default(self, column: str, k: int) -> str:
        values = DEFAULTS.get(self.name, {}).get(column)
        return values[k % len(values)] if values else str(k % 2)


DEFAULTS = {
    "movielens": {"rating": ["4", "2", "5", "3"]},
    "kuairand": {"hourmin": ["1230", "0815"]},
    "yambda": {
        "is_organic": ["1", "0"],
        "played_ratio_pct": ["80", "30", "100"],
        "track_length_seconds": ["200"],
        "event_type": ["listen"],
    },
    "events_csv": {"source": ["home", "search"], "watch_ratio": ["0.5", "1.0", "0.1"]},
    "events_parquet": {"source": ["home", "search"], "watch_ratio": ["0.5", "1.0", "0.1"]},
}

EVENTS_SPEC = {
    "user_column": "uid",
    "item_column": "iid",
    "timestamp_column": "ts",
    "context_columns": ["source"],
    "actions": [{"name": "like", "kind": "binary"}, {"name": "watch_ratio", "kind": "ratio"}],
}
KUAIRAND = ["is_click", "long_view", "label", "is_comment", "is_follow", "is_forward", "is_profile_enter"]

EVENTS_CSV = Layout(
    "events_csv",
    ["uid", "iid", "ts", "source", "like", "watch_ratio"],
    "uid",
    "iid",
    "ts",
    {"like": ("2", "yes"), "watch_ratio": ("1.5", "most")},
    "text",
    source={"source": "events", "spec": EVENTS_SPEC},
)
LAYOUTS = [
    Layout("sasrec", ["user", "item"], "user", "item", None, {}, "text", " ", False, ".txt", {"source": "sasrec"}),
    Layout(
        "movielens",
        ["user", "item", "rating", "ts"],
        "user",
        "item",
        "ts",
        {"rating": ("7", "good")},
        "text",
        "\t",
        False,
        ".data",
        {"source": "movielens"},
    ),
    Layout(
        "kuairand",
        ["user_id", "video_id", "time_ms", "hourmin", *KUAIRAND],
        "user_id",
        "video_id",
        "time_ms",
        {"is_click": ("3", "yes"), "label": ("-1", "liked")},
        "text",
        "\t",
        True,
        ".csv",
        {"source": "kuairand"},
        time_scale=1000,
    ),
    Layout(
        "yambda",
        ["uid", "item_id", "timestamp", "is_organic", "played_ratio_pct", "track_length_seconds", "event_type"],
        "uid",
        "item_id",
        "timestamp",
        {"is_organic": ("7", "maybe"), "event_type": ("skip", "42")},
        "parquet",
        suffix=".parquet",
        source={"source": "yambda"},
    ),
    EVENTS_CSV,
    replace(
        EVENTS_CSV,
        name="events_parquet",
        actions={"like": ("2", "yes"), "watch_ratio": ("-0.5", "most")},
        fmt="parquet",
        suffix=".parquet",
    ),
]


@dataclass
class Case:
    reader: str
    name: str
    path: Path
    rows_written: int | None  # data rows in the file (None: not a readable table)
    broken_rows: int  # rows that must not be kept as they are (quarantined, or the case errors)
    source: dict
    must_fail: bool = False  # the file as a whole is unusable: only an error will do
    column: str | None = None  # the column at fault, for the error's text
    one_event_users: int = 0  # users the case left with one event (counted too short, not dropped)


def write(layout: Layout, path: Path, rows: list[dict], columns: list[str] | None = None, sep: str | None = None):
    """The rows in the layout's format (`columns`: another header, e.g. one column dropped or doubled)."""
    columns = columns or layout.columns
    if layout.fmt == "parquet":
        arrays = {}
        for i, c in enumerate(columns):
            values = [r.get(c) for r in rows]
            arrays[c if columns.count(c) == 1 else f"{c}\0{i}"] = values
        table = pa.table({k: pa.array(v, pa.string()) for k, v in arrays.items()})
        if len(set(columns)) < len(columns):  # a column twice: Arrow allows duplicate field names
            table = table.rename_columns([k.split("\0")[0] for k in arrays])
        pq.write_table(_typed(layout, table), path)
        return
    sep = layout.sep if sep is None else sep
    lines = [sep.join(columns)] if layout.header else []
    lines += [sep.join("" if r.get(c) is None else r[c] for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _typed(layout: Layout, table: pa.Table) -> pa.Table:
    """Parquet as its producers write it: numbers as numbers where every value is one."""
    cols = []
    for name, col in zip(table.column_names, table.columns):
        if name in (layout.user, layout.item) or name in ("event_type", "source"):
            cols.append(col)
            continue
        try:
            cols.append(pa.array(pd.to_numeric(pd.Series(col.to_pylist()), errors="raise"), pa.float64()))
        except (ValueError, TypeError):
            cols.append(col)
    return pa.table(cols, names=table.column_names)


def corpus(root: Path) -> list[Case]:
    cases = []
    for layout in LAYOUTS:
        d = root / layout.name
        d.mkdir(parents=True, exist_ok=True)
        cases += list(_cases(layout, d))
    return cases


def _cases(layout: Layout, d: Path):
    base = layout.rows()
    n = len(base)

    def case(name: str, rows: list[dict] | None, broken: int, **kw) -> Case:
        path = d / f"{name}{layout.suffix}"
        if rows is not None:
            write(layout, path, rows, kw.pop("columns", None), kw.pop("sep", None))
        return Case(
            layout.name,
            name,
            path,
            kw.pop("rows_written", len(rows) if rows is not None else None),
            broken,
            layout.source,
            **kw,
        )

    def with_cell(column: str, value, rows_at=(5, 17)) -> list[dict]:
        rows = [dict(r) for r in base]
        for i in rows_at:
            rows[i][column] = value
        return rows

    # -- the file as a whole
    yield case("valid", base, 0)
    empty = d / f"zero_bytes{layout.suffix}"
    empty.write_bytes(b"")
    yield Case(layout.name, "zero_bytes", empty, None, 0, layout.source, must_fail=True)
    full = d / f"full{layout.suffix}"
    write(layout, full, base)
    data = full.read_bytes()
    truncated = d / f"truncated{layout.suffix}"
    if layout.fmt == "parquet":
        truncated.write_bytes(data[: len(data) * 2 // 3])
        yield Case(layout.name, "truncated", truncated, None, 0, layout.source, must_fail=True)
    else:  # cut inside the last row, after its first field: a row with its other fields missing
        last = data.rstrip(b"\n").rsplit(b"\n", 1)
        cut = last[0] + b"\n" + last[1].split(layout.sep.encode())[0] + layout.sep.encode()
        truncated.write_bytes(cut)
        yield Case(layout.name, "truncated", truncated, n, 1, layout.source)
    directory = d / f"a_directory{layout.suffix}"
    directory.mkdir(exist_ok=True)
    yield Case(layout.name, "a_directory", directory, None, 0, layout.source, must_fail=True)
    not_gzip = d / f"not_gzip{layout.suffix}.gz"
    not_gzip.write_bytes(data)
    yield Case(layout.name, "gzip_that_is_not_gzip", not_gzip, None, 0, layout.source, must_fail=True)
    real_gzip = d / f"gzip{layout.suffix}.gz"
    real_gzip.write_bytes(gzip.compress(data))
    if layout.fmt == "text":
        yield Case(layout.name, "gzip", real_gzip, n, 0, layout.source)  # text is read through gzip
    else:
        yield Case(layout.name, "gzip_of_parquet", real_gzip, None, 0, layout.source, must_fail=True)
    garbage = d / f"garbage{layout.suffix}"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    yield Case(layout.name, "garbage_bytes", garbage, None, 0, layout.source, must_fail=True)
    if layout.fmt == "text":
        wrong = ";" if layout.sep != ";" else ","
        yield case("wrong_delimiter", base, n, sep=wrong, must_fail=True)
    else:
        csv = d / "csv_named_parquet.parquet"
        csv.write_text("\n".join(",".join(r[c] for c in layout.columns) for r in base))
        yield Case(layout.name, "csv_named_parquet", csv, None, 0, layout.source, must_fail=True)
    yield case("no_rows", [], 0, must_fail=True)
    required = [c for c in layout.columns if c != layout.user]
    if layout.header or layout.fmt == "parquet":
        dropped = [c for c in layout.columns if c != required[-1]]
        yield case("missing_column", base, 0, columns=dropped, must_fail=True, column=required[-1])
        doubled = layout.columns + [layout.item]
        yield case("duplicated_column", base, 0, columns=doubled, must_fail=True, column=layout.item)
    else:  # headerless: a missing or doubled column is a row with too few or too many fields
        yield case("missing_column", base, n, columns=layout.columns[:-1], must_fail=True)
        yield case("duplicated_column", base, n, columns=layout.columns + [layout.item], must_fail=True)
    yield case("only_bad_rows", [r | {layout.user: None} for r in base], n, must_fail=True)

    # -- some rows
    yield case("null_user", with_cell(layout.user, None), 2)
    yield case("null_item", with_cell(layout.item, None), 2)
    yield case("null_item_as_text", with_cell(layout.item, "NULL"), 2)
    padded = [dict(r) for r in base]
    padded[3][layout.user] = f"  {padded[3][layout.user]}\t" if layout.sep != "\t" else f"  {padded[3][layout.user]}"
    if layout.sep != " ":  # space-separated: padding is field separation, not part of the id
        yield case("id_with_whitespace", padded, 0)
    if layout.fmt == "text":  # a lone \xe9 byte (Latin-1 é) in an id of UTF-8 text
        path = d / f"non_utf8_id{layout.suffix}"
        write(layout, path, [dict(r) | ({layout.item: "MARK"} if i == 8 else {}) for i, r in enumerate(base)])
        path.write_bytes(path.read_bytes().replace(b"MARK", b"caf\xe9"))
        latin1_readers = ("sasrec", "movielens")  # read as Latin-1 by design: every byte is a character
        yield Case(layout.name, "non_utf8_id", path, n, 0 if layout.name in latin1_readers else 1, layout.source)
    else:
        yield case("nul_in_id", with_cell(layout.item, "caf\ufffd\x00", rows_at=(8,)), 1)  # a NUL in an id
    if layout.time:
        yield case("nan_timestamp", with_cell(layout.time, "NaN"), 2)
        yield case("negative_timestamp", with_cell(layout.time, str(-5 * layout.time_scale)), 2)
        yield case("future_timestamp", with_cell(layout.time, str(FUTURE * layout.time_scale)), 2)
        yield case("text_timestamp", with_cell(layout.time, "yesterday"), 2)
        mixed = with_cell(layout.time, "2025-01-01T00:00:00Z", rows_at=(2, 3, 4))
        yield case("mixed_types_in_timestamps", mixed, 3)  # dates among numbers: the dates are the odd ones
    for column, (out_of_range, not_a_number) in layout.actions.items():
        yield case(f"{column}_out_of_range", with_cell(column, out_of_range), 2)
        yield case(f"{column}_not_a_number", with_cell(column, not_a_number), 2)
    mixed_items = [dict(r) for r in base]
    for i in range(0, n, 5):
        mixed_items[i][layout.item] = f"x{mixed_items[i][layout.item]}"  # text ids among numbers: all kept
    yield case("mixed_types_in_item_ids", mixed_items, 0)
    lonely = base + [{**base[0], layout.user: "999"}]
    yield case("user_with_one_event", lonely, 0, one_event_users=1)
    if layout.fmt == "text":
        ragged = [dict(r) for r in base]
        ragged[9][layout.columns[-1]] = f"{ragged[9][layout.columns[-1]]}{layout.sep}extra"
        yield case("ragged_row", ragged, 1)
        blank = d / f"blank_lines{layout.suffix}"
        write(layout, blank, base)
        blank.write_text(blank.read_text().replace("\n", "\n\n", 3))
        yield Case(layout.name, "blank_lines", blank, n, 0, layout.source)
        crlf = d / f"crlf{layout.suffix}"
        write(layout, crlf, base)
        crlf.write_bytes(crlf.read_bytes().replace(b"\n", b"\r\n"))
        yield Case(layout.name, "crlf_line_ends", crlf, n, 0, layout.source)


def _file_cases(kind: str, d: Path, valid: pd.DataFrame, columns: list[str], broken_column: str):
    """The file-level cases for a table read from Parquet or CSV (impressions, item features): each
    must be an error naming the file."""

    def parquet(name, frame):
        path = d / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        return path

    yield kind, "zero_bytes", _bytes(d / "zero_bytes.parquet", b"")
    data = parquet("full", valid).read_bytes()
    yield kind, "truncated_parquet", _bytes(d / "truncated.parquet", data[: len(data) // 2])
    (d / "a_directory.parquet").mkdir(exist_ok=True)
    yield kind, "a_directory", d / "a_directory.parquet"
    yield kind, "gzip_that_is_not_gzip", _bytes(d / "not_gzip.csv.gz", valid.to_csv(index=False).encode())
    yield kind, "garbage_bytes", _bytes(d / "garbage.parquet", np.random.default_rng(1).bytes(2048))
    yield kind, "csv_named_parquet", _bytes(d / "csv.parquet", valid.to_csv(index=False).encode())
    yield kind, "missing_column", parquet("missing_column", valid.drop(columns=[broken_column]))
    doubled = pa.Table.from_pandas(valid, preserve_index=False)
    doubled = doubled.append_column(broken_column, doubled.column(broken_column))
    pq.write_table(doubled, d / "duplicated_column.parquet")
    yield kind, "duplicated_column", d / "duplicated_column.parquet"
    yield (
        kind,
        "duplicated_column_csv",
        _bytes(
            d / "duplicated_column.csv",
            (",".join(columns + [broken_column]) + "\n" + "1," * len(columns) + "1\n").encode(),
        ),
    )
    yield kind, "no_rows", parquet("no_rows", valid.head(0))
    yield kind, "wrong_delimiter_csv", _bytes(d / "semicolons.csv", valid.to_csv(index=False, sep=";").encode())
    ragged = valid.head(5).to_csv(index=False) + ",".join(["1"] * (len(columns) + 2)) + "\n"
    yield kind, "ragged_row_csv", _bytes(d / "ragged.csv", ragged.encode())


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def impressions_corpus(root: Path, valid: pd.DataFrame) -> tuple[list[tuple], list[tuple]]:
    """(file cases (kind, name, path) that must fail, row cases (name, path, rows, broken rows)) for
    an impressions file whose valid rows are `valid` (a run's own impressions)."""
    d = root / "impressions"
    d.mkdir(parents=True, exist_ok=True)
    valid = valid.reset_index(drop=True)
    files = list(_file_cases("impressions", d, valid, list(valid.columns), "clicked"))
    rows = []

    def broken(name: str, column: str, value, at=(3, 11, 40), csv: bool = False):
        frame = valid.astype(object).copy()
        for i in at:
            frame.loc[i, column] = value
        path = d / f"{name}.{'csv' if csv else 'parquet'}"
        if csv:
            frame.to_csv(path, index=False)
        else:
            frame.astype({c: str for c in frame.columns if frame[c].map(type).nunique() > 1}).to_parquet(path)
        rows.append((name, path, len(frame), len(at)))

    rows.append(("valid", d / "full.parquet", len(valid), 0))
    valid.to_csv(d / "valid.csv", index=False)
    rows.append(("valid_csv", d / "valid.csv", len(valid), 0))
    broken("null_user", "user_id", None)
    broken("unknown_item", "item_id", 99_999_999)
    broken("nan_timestamp", "timestamp", float("nan"))
    broken("text_timestamp", "timestamp", "yesterday", csv=True)
    broken("negative_timestamp", "timestamp", -5)
    broken("clicked_out_of_range", "clicked", 2)
    broken("clicked_not_a_number", "clicked", "yes", csv=True)
    broken("action_out_of_range", "like", 3)
    broken("ratio_out_of_range", "played_ratio", 1.7)
    broken("control_character_in_id", "item_id", "10\x0001", csv=True)
    return files, rows


def item_feature_corpus(root: Path, items: list[str]) -> tuple[list[tuple], list[tuple]]:
    """The same for an item-feature table (`item_id`, `genre` "a|b", `brand`) over catalogue `items`:
    row cases are (name, path, rows, rows that must be quarantined, rows outside the catalogue)."""
    d = root / "item_features"
    d.mkdir(parents=True, exist_ok=True)
    valid = pd.DataFrame(
        {
            "item_id": items,
            "genre": [("a|b", "b", "c|a|d", "")[i % 4] for i in range(len(items))],
            "brand": [f"brand{i % 5}" for i in range(len(items))],
        }
    )
    files = list(_file_cases("item_features", d, valid, list(valid.columns), "genre"))
    rows = [("valid", d / "full.parquet", len(valid), 0, 0)]

    def case(name, frame, quarantined, outside, csv=False):
        path = d / f"{name}.{'csv' if csv else 'parquet'}"
        frame.to_csv(path, index=False) if csv else frame.to_parquet(path, index=False)
        rows.append((name, path, len(frame), quarantined, outside))

    null = valid.copy()
    null.loc[[2, 5], "item_id"] = None
    case("null_item_id", null, 2, 0)
    case("repeated_item_id", pd.concat([valid, valid.head(3)], ignore_index=True), 3, 0)
    case("unknown_items", pd.concat([valid, valid.head(4).assign(item_id=["zz1", "zz2", "zz3", "zz4"])]), 0, 4)
    padded = valid.copy()
    padded.loc[1, "item_id"] = f" {padded.loc[1, 'item_id']} "
    case("id_with_whitespace", padded, 0, 0, csv=True)
    control = valid.copy()
    control.loc[4, "item_id"] = "caf\x00"
    case("control_character_in_id", control, 1, 0)
    empty_cells = valid.copy()
    empty_cells.loc[[0, 1, 2], "genre"] = None
    case("empty_feature_cells", empty_cells, 0, 0)  # an item without a value: kept, counted as such
    return files, rows
