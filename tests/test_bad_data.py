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


def _clear_error(call, path) -> str | None:
    """None when `call()` fails with a clear error naming `path`, else what went wrong."""
    try:
        call()
    except CLEAR as exc:
        return None if path.name in str(exc) else f"the error does not name {path.name}: {str(exc)[:200]}"
    except Exception as exc:  # noqa: BLE001 - the point: no other exception may reach the user
        return f"{type(exc).__name__} instead of a clear error: {str(exc)[:200]}"
    return "read without an error"


def test_every_broken_impressions_file_is_named_or_its_rows_counted(tiny_run, tmp_path):
    """The fine-tuning and replay input: an error naming the file, or rows = placed + skipped (by
    reason), each broken row among the skipped and in the quarantine file."""
    import pandas as pd
    from bad_data_corpus import impressions_corpus

    from argus_platform.data.prepare import load_prepared
    from argus_platform.finetune.requests import build_requests, default_impressions

    prepared = load_prepared(tiny_run)
    valid = pd.read_parquet(default_impressions(tiny_run)).head(400)
    files, rows = impressions_corpus(tmp_path / "corpus", valid)
    problems = []
    for _, name, path in files:
        problem = _clear_error(lambda: build_requests(prepared, tiny_run, path, 8, tmp_path / name), path)
        if problem:
            problems.append(f"{name}: {problem}")
    placement = ("no history before it", "after the last event", "beyond slate_size")  # not the data's fault

    def unusable(summary) -> tuple[int, int]:
        bad = sum(v for k, v in summary["skipped"].items() if k not in placement and "not asked for" not in k)
        file = summary["quarantine_file"]
        return bad, len(pd.read_parquet(file)) if file else 0

    baseline = None
    for name, path, written, broken in rows:
        s = build_requests(prepared, tiny_run, path, 8, tmp_path / name)
        if s["rows"] != written or s["rows"] != s["placed"] + sum(s["skipped"].values()):
            problems.append(f"{name}: rows {s['rows']} of {written}, placed {s['placed']} + skipped {s['skipped']}")
        if name.startswith("valid"):  # the run's own impressions: some items are unknown to the run already
            baseline = baseline or unusable(s)
            continue
        counted, quarantined = unusable(s)
        if counted - baseline[0] != broken or quarantined - baseline[1] != broken:
            problems.append(f"{name}: {broken} broken rows, skipped {s['skipped']}, {quarantined} in quarantine")
    assert len(files) + len(rows) - 2 >= 20
    assert not problems, "\n".join(problems)


def test_every_broken_item_feature_file_is_named_or_its_rows_counted(tiny_run, tmp_path):
    """Item-side features: an error naming the file, or rows = kept + quarantined + outside the
    catalogue, with the broken rows quarantined."""
    import pandas as pd
    from bad_data_corpus import item_feature_corpus

    from argus_platform.data.config import ItemFeaturesConfig
    from argus_platform.data.item_features import build_item_features
    from argus_platform.data.prepare import load_prepared

    vocab = load_prepared(tiny_run).vocab
    files, rows = item_feature_corpus(tmp_path / "corpus", [str(i) for i in vocab.items.tolist()[:30]])

    def build(path):
        cfg = ItemFeaturesConfig(path=str(path), columns=["genre", "brand"])
        return build_item_features(cfg, vocab, tmp_path / "q" / "item_features.parquet")

    problems = [f"{name}: {p}" for _, name, path in files if (p := _clear_error(lambda: build(path), path))]
    for name, path, written, quarantined, outside in rows:
        stats = build(path).stats
        counted = (stats["rows"], stats["rows_kept"], stats["quarantined_rows"], stats["rows_outside_catalogue"])
        if stats["rows"] != written or stats["rows"] != sum(counted[1:]):
            problems.append(f"{name}: rows in != kept + quarantined + outside: {counted} of {written}")
        if (stats["quarantined_rows"], stats["rows_outside_catalogue"]) != (quarantined, outside):
            problems.append(f"{name}: {counted}, expected {quarantined} quarantined, {outside} outside")
        if quarantined and len(pd.read_parquet(tmp_path / "q" / "item_features.parquet")) != quarantined:
            problems.append(f"{name}: the quarantine file does not hold the {quarantined} rows")
    assert len(files) + len(rows) - 1 >= 18
    assert not problems, "\n".join(problems)
