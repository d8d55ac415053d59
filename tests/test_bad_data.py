"""Every reader against the generated corpus of broken inputs (tests/bad_data_corpus.py): one clear
error naming the file (and the column, row or value at fault), or every row counted — rows in =
rows kept + rows quarantined — with each broken row quarantined, never kept as it was."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest
from bad_data_corpus import LAYOUTS, corpus

from argus_platform.configlib import from_dict
from argus_platform.data.config import DataConfig
from argus_platform.data.quarantine import TooManyBadRows, write_canonical
from argus_platform.data.sources import DataSourceError, open_source
from argus_platform.data.spec import ITEM, USER

CLEAR = (DataSourceError, TooManyBadRows)  # the errors a user gets; anything else is a crash


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("corpus"))


def _validate(case, out):
    cfg = from_dict(DataConfig, case.source | {"path": str(case.path), "max_bad_fraction": 0.5})
    spec, chunks, source = open_source(cfg, out / "synthetic")
    return write_canonical(
        spec, chunks, source, out / "events.parquet", out / "quarantine.parquet", cfg.max_bad_fraction
    )


def test_the_corpus_has_twenty_broken_inputs_for_every_reader(cases):
    per_reader = Counter(c.reader for c in cases if c.name != "valid")
    assert set(per_reader) == {layout.name for layout in LAYOUTS}
    assert min(per_reader.values()) >= 20, per_reader


def test_every_broken_input_is_named_or_counted(cases, tmp_path):
    outcomes, problems = Counter(), []
    for n, case in enumerate(cases):
        where = f"{case.reader}/{case.name}"
        out = tmp_path / str(n)
        try:
            summary = _validate(case, out)
        except CLEAR as exc:
            text = str(exc)
            outcomes["error"] += 1
            if case.path.name not in text:
                problems.append(f"{where}: the error does not name the file: {text[:200]}")
            if case.column and case.column not in text:
                problems.append(f"{where}: the error does not name the column {case.column}: {text[:200]}")
            continue
        except Exception as exc:  # noqa: BLE001 - the point: no other exception may reach the user
            problems.append(f"{where}: {type(exc).__name__} instead of a clear error: {str(exc)[:200]}")
            continue
        outcomes["counted"] += 1
        if case.must_fail:
            problems.append(f"{where}: read without an error: {summary}")
            continue
        kept = pq.read_table(out / "events.parquet")
        quarantined = pq.read_table(out / "quarantine.parquet").num_rows if summary["quarantined_rows"] else 0
        counts = (summary["rows"], summary["clean_rows"], summary["quarantined_rows"], kept.num_rows, quarantined)
        if summary["rows"] != summary["clean_rows"] + summary["quarantined_rows"]:
            problems.append(f"{where}: rows in != kept + quarantined: {counts}")
        if (kept.num_rows, quarantined) != (summary["clean_rows"], summary["quarantined_rows"]):
            problems.append(f"{where}: the files do not hold what the summary counts: {counts}")
        if case.rows_written is not None and summary["rows"] != case.rows_written:
            problems.append(f"{where}: {summary['rows']} rows read of {case.rows_written} written")
        if summary["quarantined_rows"] != case.broken_rows:
            problems.append(
                f"{where}: {summary['quarantined_rows']} rows quarantined, {case.broken_rows} broken "
                f"({summary['quarantine_reasons']})"
            )
        for column in (USER, ITEM):
            ids = kept.column(column).to_pylist()
            odd = [i for i in ids if i != i.strip() or any(ord(ch) < 32 or ch == "\ufffd" for ch in i)]
            if odd:
                problems.append(f"{where}: kept {column} values {odd[:3]}")
    assert not problems, "\n".join(problems)
    assert outcomes["error"] >= 30 and outcomes["counted"] >= 60, outcomes


def test_a_user_with_one_event_is_kept_in_the_log_and_counted_as_too_short(cases, ray_local, tmp_path):
    from argus_platform.data.prepare import prepare_data

    lonely = [c for c in cases if c.one_event_users]
    assert len(lonely) == len(LAYOUTS)
    for n, case in enumerate(lonely):
        cfg = from_dict(DataConfig, case.source | {"path": str(case.path), "min_events_per_user": 2})
        prepared = prepare_data(cfg, tmp_path / str(n))
        summary = prepared.summary
        assert summary["validation"]["rows"] == case.rows_written, case.reader
        assert summary["validation"]["quarantined_rows"] == 0, case.reader
        assert summary["users_too_short"] == case.one_event_users, (case.reader, summary["users_too_short"])
