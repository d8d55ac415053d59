"""The Yambda reader on generated files of the published flat multi_event schema, and Yambda's
global temporal split (test = the last day, validation the day before, 30-minute gaps)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus_platform.data.config import DataConfig
from argus_platform.data.quarantine import write_canonical
from argus_platform.data.sources import DataSourceError

DAY = 86_400


def _write(path, rows):
    """rows: (uid, item, t, is_organic, played_ratio_pct, event_type); the schema as published."""
    uid, item, t, org, pct, kind = zip(*rows)
    table = pa.table(
        {
            "uid": pa.array(uid, pa.uint32()),
            "item_id": pa.array(item, pa.uint32()),
            "timestamp": pa.array(t, pa.uint32()),
            "is_organic": pa.array(org, pa.uint8()),
            "played_ratio_pct": pa.array(pct, pa.uint16()),
            "track_length_seconds": pa.array([180 if k == "listen" else None for k in kind], pa.uint32()),
            "event_type": pa.array(kind).dictionary_encode(),  # an enum column, as the published files have
        }
    )
    pq.write_table(table, path, row_group_size=3)
    return path


ROWS = [
    (1, 10, 100, 1, 80, "listen"),
    (1, 10, 105, 1, None, "like"),  # the like marks that listen
    (1, 11, 200, 0, 30, "listen"),
    (1, 11, 210, 0, None, "like"),
    (1, 11, 220, 0, None, "unlike"),  # cancelled
    (1, 12, 230, 0, None, "dislike"),  # no listen of item 12: quarantined
    (1, 10, 300, 1, 120, "listen"),  # ratio above 100 %
    (2, 10, 50, 0, 10, "listen"),
    (2, 10, 60, 0, None, "dislike"),
    (2, 10, 70, 0, None, "undislike"),
    (2, 10, 80, 0, None, "dislike"),  # disliked again: stands, marks the t=50 listen
    (2, 13, 90, 0, None, "listen"),  # a listen without its ratio: quarantined
    (3, 14, 40, 1, 50, "listen"),
]


@pytest.mark.parametrize("batch_rows", [2, 1_000_000])  # users cut across reader batches, or all in one
def test_listens_become_events_with_their_marks(tmp_path, monkeypatch, batch_rows):
    from argus_platform.data import yambda

    monkeypatch.setattr(yambda, "BATCH_ROWS", batch_rows)
    spec, chunks = yambda.read_yambda(_write(tmp_path / "multi_event.parquet", ROWS))
    summary = write_canonical(spec, chunks, "yambda", tmp_path / "events.parquet", tmp_path / "q.parquet", 0.5)
    events = pq.read_table(tmp_path / "events.parquet").to_pandas().sort_values(["user_id", "timestamp"])
    got = [
        tuple(r)
        for r in events[
            ["user_id", "item_id", "timestamp", "source", "played_ratio", "listen_plus", "like", "dislike"]
        ].itertuples(index=False)
    ]
    assert got == [
        ("1", "10", 100, "organic", pytest.approx(0.8), 1.0, 1.0, 0.0),
        ("1", "11", 200, "recommended", pytest.approx(0.3), 0.0, 0.0, 0.0),
        ("1", "10", 300, "organic", 1.0, 1.0, 0.0, 0.0),
        ("2", "10", 50, "recommended", pytest.approx(0.1), 0.0, 0.0, 1.0),
        ("3", "14", 40, "organic", 0.5, 1.0, 0.0, 0.0),
    ]
    assert summary["quarantined_rows"] == 2
    assert summary["quarantine_reasons"] == {
        "dislike without an earlier listen of the item": 1,
        "listen without played_ratio_pct": 1,
    }
    q = pq.read_table(tmp_path / "q.parquet").to_pandas()
    assert sorted(q["_row"].astype(int)) == [5, 11]  # row numbers in the source file


def test_reader_refuses_files_not_grouped_by_uid_and_other_schemas(tmp_path, monkeypatch):
    from argus_platform.data import yambda

    monkeypatch.setattr(yambda, "BATCH_ROWS", 2)
    shuffled = ROWS[7:] + ROWS[:7] + [(2, 15, 400, 1, 90, "listen")]  # uid 2 again after uid 1
    spec, chunks = yambda.read_yambda(_write(tmp_path / "m.parquet", shuffled))
    with pytest.raises(DataSourceError, match="grouped by uid"):
        list(chunks)
    pq.write_table(pa.table({"uid": [1], "item_id": [2]}), tmp_path / "other.parquet")
    with pytest.raises(DataSourceError, match=r"missing column\(s\) \['timestamp'"):
        yambda.read_yambda(tmp_path / "other.parquet")


def test_global_temporal_split_has_the_last_day_as_test_and_gaps_before_each_window(tmp_path):
    from argus_platform.data.prepare import prepare_data

    end = 10 * DAY
    rows = []
    for u in range(1, 6):
        # one listen an hour over ten days, items cycling; user u starts u hours in
        times = np.arange(u * 3600, end, 3600 * 5)
        rows += [(u, 100 + (k % 37), int(t), k % 2, 60, "listen") for k, t in enumerate(times)]
    path = _write(tmp_path / "multi_event.parquet", rows)
    cfg = DataConfig(source="yambda", path=str(path), split="temporal_windows", min_events_per_user=3)
    prepared = prepare_data(cfg, tmp_path / "run")
    t_max = max(t for _, _, t, *_ in rows)
    train_end, val_start, val_end, test_start = prepared.summary["temporal_cuts"]
    assert test_start == t_max - DAY + 1 and val_end == test_start - 1800 and val_start == val_end - DAY
    assert train_end == val_start - 1800
    splits = {s: pq.ParquetDataset(p).read().to_pandas() for s, p in prepared.paths.items()}
    assert all(max(ts) < train_end for ts in splits["train"]["timestamp"])
    assert all(
        val_start <= ts[-1] < val_end and (len(ts) < 2 or ts[-2] < val_start)
        for ts in splits["validation"]["timestamp"]
    )
    assert all(ts[-1] >= test_start and ts[-2] < test_start for ts in splits["test"]["timestamp"])
    assert len(splits["test"]) == len(splits["validation"]) == 5
    assert prepared.spec.context_columns == ["source"] and [a.name for a in prepared.spec.actions] == [
        "played_ratio",
        "listen_plus",
        "like",
        "dislike",
    ]
