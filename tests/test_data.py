"""Readers, validation/quarantine, vocabulary, Ray Data sequences and splits, collate."""

import gzip

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus_platform.configlib import ConfigError, from_dict
from argus_platform.data.config import DataConfig, SyntheticConfig
from argus_platform.data.prepare import prepare_data
from argus_platform.data.quarantine import TooManyBadRows, validate_chunk, write_canonical
from argus_platform.data.sources import DataSourceError, read_events, read_movielens, read_sasrec
from argus_platform.data.spec import ActionSpec, DatasetSpec
from argus_platform.data.synthetic import generate

SPEC = DatasetSpec(
    context_columns=["source"],
    actions=[
        ActionSpec("like", "binary"),
        ActionSpec("ratio", "ratio"),
        ActionSpec("stars", "graded", levels=[1, 2, 3]),
    ],
)


def _frame(**overrides):
    base = {
        "user_id": ["u1", "u1", "u2", "u2"],
        "item_id": ["a", "b", "a", "c"],
        "timestamp": [1, 2, 3, 4],
        "source": ["x", None, "y", "x"],
        "like": [0, 1, 1, 0],
        "ratio": [0.1, 0.5, 1.0, 0.0],
        "stars": [1, 2, 3, 3],
        "_row": [0, 1, 2, 3],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_clean_chunk_passes_and_null_context_is_kept():
    good, bad = validate_chunk(_frame(), SPEC, "f.csv")
    assert len(good) == 4 and len(bad) == 0
    assert good["source"].tolist()[1] == "__missing__"


@pytest.mark.parametrize(
    "column, value, reason",
    [
        ("user_id", None, "null user_id"),
        ("timestamp", None, "bad timestamp: null"),
        ("like", None, "action like out of range (binary): null"),
        ("item_id", "", "null item_id"),
        ("timestamp", "yesterday-ish", "bad timestamp"),
        ("timestamp", -5, "bad timestamp"),
        ("like", 2, "action like out of range"),
        ("ratio", 1.5, "action ratio out of range"),
        ("stars", 2.5, "action stars out of range"),
    ],
)
def test_unusable_rows_are_quarantined_with_reason(column, value, reason):
    df = _frame()
    df[column] = df[column].astype(object)
    df.loc[2, column] = value
    good, bad = validate_chunk(df, SPEC, "f.csv")
    assert len(good) == 3 and len(bad) == 1
    assert bad["_reason"].iloc[0].startswith(reason) and bad["_row"].iloc[0] == "2"


def test_missing_column_names_file_and_column():
    with pytest.raises(DataSourceError, match=r"events.csv: missing column\(s\) \['stars'\]"):
        validate_chunk(_frame().drop(columns="stars"), SPEC, "events.csv")


def test_quarantine_file_and_failure_threshold(tmp_path):
    df = _frame(like=[0, 7, 1, 9])
    summary = write_canonical(
        SPEC, iter([df]), "src", tmp_path / "e.parquet", tmp_path / "q.parquet", max_bad_fraction=0.5
    )
    assert summary["quarantined_rows"] == 2 and summary["clean_rows"] == 2
    q = pq.read_table(tmp_path / "q.parquet").to_pandas()
    assert q["_row"].tolist() == ["1", "3"] and all(q["_reason"].str.startswith("action like"))
    with pytest.raises(TooManyBadRows, match="2 of 4 rows"):
        write_canonical(
            SPEC, iter([df]), "src", tmp_path / "e2.parquet", tmp_path / "q2.parquet", max_bad_fraction=0.25
        )


def test_events_reader_checks_mapping(tmp_path):
    path = tmp_path / "log.csv"
    pd.DataFrame({"uid": [1], "iid": [2], "ts": [3]}).to_csv(path, index=False)
    spec = DatasetSpec(
        user_column="uid", item_column="iid", timestamp_column="ts", actions=[ActionSpec("like", "binary")]
    )
    with pytest.raises(DataSourceError, match=r"log.csv: missing column\(s\) \['like'\]"):
        read_events(path, spec)
    with pytest.raises(DataSourceError, match="does not exist"):
        read_events(tmp_path / "nope.parquet", spec)


def test_sasrec_reader_keeps_line_order(tmp_path):
    path = tmp_path / "seq.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("1 10\n1 11\n2 10\n")
    spec, chunks = read_sasrec(path)
    df = pd.concat(chunks)
    assert spec.actions == [] and df["timestamp"].tolist() == [0, 1, 2] and df["item_id"].tolist() == ["10", "11", "10"]


def test_only_timestamps_that_are_times_give_hstu_a_time_bias(tmp_path):
    """The line numbers of a SASRec file, or a log read without a timestamp column, only order the
    events: HSTU then has no time-gap bias. Real timestamps (MovieLens, a mapped column) give it one,
    unless the spec says they only order events; other encoders never have one."""
    from argus_models.config import ModelConfig, time_buckets

    (tmp_path / "seq.txt").write_text("1 10\n1 11\n")
    (tmp_path / "u.data").write_text("1\t5\t4\t100\n")
    pd.DataFrame({"u": ["1"], "i": ["5"], "t": [100]}).to_csv(tmp_path / "log.csv", index=False)
    hstu = ModelConfig(encoder="hstu")
    spec_of = {
        "sasrec": read_sasrec(tmp_path / "seq.txt")[0],
        "movielens": read_movielens(tmp_path / "u.data")[0],
        "csv with time": read_events(
            tmp_path / "log.csv", DatasetSpec(user_column="u", item_column="i", timestamp_column="t")
        )[0],
        "csv, order only": read_events(
            tmp_path / "log.csv", DatasetSpec(user_column="u", item_column="i", timestamp_column="t", event_time=False)
        )[0],
        "csv without time": read_events(
            tmp_path / "log.csv", DatasetSpec(user_column="u", item_column="i", timestamp_column="")
        )[0],
    }
    got = {name: time_buckets(hstu, spec.event_time) for name, spec in spec_of.items()}
    assert got == {"sasrec": 0, "movielens": 128, "csv with time": 128, "csv, order only": 0, "csv without time": 0}
    assert (
        time_buckets(ModelConfig(), True) == 0
        and time_buckets(ModelConfig(encoder="hstu", hstu_time_buckets=0), True) == 0
    )
    with pytest.raises(ValueError, match="model.hstu_time_buckets is -1"):
        time_buckets(ModelConfig(encoder="hstu", hstu_time_buckets=-1), True)


def test_movielens_udata_ratings_become_actions(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t5\t4\t100\n1\t6\t2\t101\n2\t5\t3\t50\n")
    spec, chunks = read_movielens(path)
    df = pd.concat(chunks)
    assert [a.name for a in spec.actions] == ["like", "dislike", "rating"]
    assert df["like"].tolist() == [1.0, 0.0, 0.0] and df["dislike"].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(DataSourceError, match="not a MovieLens ratings file"):
        (tmp_path / "x.txt").write_text("hello world\n")
        read_movielens(tmp_path / "x.txt")


def test_synthetic_is_deterministic_and_records_ground_truth(tmp_path):
    cfg = SyntheticConfig(num_users=40, num_items=50, events_per_user=10, min_events=5, chunk_users=16)
    a = pq.read_table(generate(cfg, tmp_path / "a"))
    b = pq.read_table(generate(cfg, tmp_path / "b"))
    assert a.equals(b) and a.num_rows >= 40 * 5
    gt = np.load(tmp_path / "a" / "ground_truth.npz")
    assert gt["item_factors"].shape == (50, cfg.latent_dim) and gt["user_final_factors"].shape[0] == 40
    c = pq.read_table(generate(SyntheticConfig(**{**cfg.__dict__, "seed": 8}), tmp_path / "c"))
    assert not a.equals(c)


def test_clickbait_items_are_skipped_and_disliked_more_and_the_share_changes_nothing_else(tmp_path):
    cfg = SyntheticConfig(
        num_users=300, num_items=200, events_per_user=30, clickbait_share=0.3, impressions_per_event=0
    )
    log = pq.read_table(generate(cfg, tmp_path / "bait")).to_pandas()
    gt = np.load(tmp_path / "bait" / "ground_truth.npz")
    bait = pd.Series(gt["item_bait"], index=gt["item_raw_ids"])
    assert 0.2 < (bait > 0).mean() < 0.4 and bait[bait > 0].between(0.3, 1.0).all()
    is_bait = bait.reindex(log["item_id"]).to_numpy() > 0
    rates = log.groupby(is_bait)[["skip", "dislike"]].mean()
    assert rates.loc[True, "skip"] > rates.loc[False, "skip"] + 0.2
    assert rates.loc[True, "dislike"] > rates.loc[False, "dislike"] + 0.1
    none = SyntheticConfig(**{**cfg.__dict__, "clickbait_share": 0.0})
    generate(none, tmp_path / "none")
    plain = np.load(tmp_path / "none" / "ground_truth.npz")
    np.testing.assert_array_equal(plain["item_factors"], gt["item_factors"])  # the share changes nothing else
    assert not plain["item_bait"].any()
    with pytest.raises(ConfigError, match="clickbait_share"):
        from_dict(SyntheticConfig, {"clickbait_share": 1.0})


@pytest.mark.parametrize("n", [1, 7, 1000, 200_000])
def test_guide_table_sampling_equals_the_binary_search(n):
    from argus_platform.data.synthetic import InverseCdf

    rng = np.random.default_rng(n)
    p = (rng.permutation(n) + 1.0) ** -0.8
    cdf = np.cumsum(p / p.sum())
    u = rng.random((500, 64))
    u[0, :3] = [0.0, cdf[0], np.nextafter(cdf[min(1, n - 1)], 0)]  # the edges of a step
    assert np.array_equal(InverseCdf(cdf)(u), np.searchsorted(cdf, u))


def _seq_cfg(**kw):
    return DataConfig(synthetic=SyntheticConfig(num_users=30, num_items=40, events_per_user=8, min_events=4), **kw)


def test_leave_last_out_splits(ray_local, tmp_path):
    prepared = prepare_data(_seq_cfg(), tmp_path)
    tables = {s: pq.ParquetDataset(p).read().to_pandas().set_index("user_idx") for s, p in prepared.paths.items()}
    assert len(tables["test"]) == 30
    for u, row in tables["test"].iterrows():
        full = row["item_id"]
        assert list(tables["validation"].loc[u, "item_id"]) == list(full[:-1])
        assert list(tables["train"].loc[u, "item_id"]) == list(full[:-2])
        assert np.all(np.diff(row["timestamp"]) >= 0)
    # train-split counts exclude the held-out events
    assert prepared.item_counts.sum() == sum(len(x) for x in tables["train"]["item_id"])
    # the prepared data is reused for the same config and refused for a different one
    assert prepare_data(_seq_cfg(), tmp_path).summary == prepared.summary
    with pytest.raises(ValueError, match="different data config"):
        prepare_data(_seq_cfg(min_events_per_user=5), tmp_path)


def test_splits_reach_ray_data_whole_and_in_file_blocks(ray_local, tmp_path, monkeypatch):
    """A small split is read in the driver, one block per Parquet file; a large one streams from
    storage. Both give the same rows."""
    from ray.data.dataset import MaterializedDataset

    from argus_platform import train_argus

    path = tmp_path / "split"
    path.mkdir()
    frame = pd.DataFrame({"user_idx": np.arange(10), "item_id": [[i, i + 1] for i in range(10)]})
    for i, part in enumerate((frame[:3], frame[3:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path / f"part-{i}.parquet")
    small = train_argus.split_dataset(str(path))
    assert small.num_blocks() == 2
    assert small.to_pandas().sort_values("user_idx")["user_idx"].tolist() == list(range(10))
    monkeypatch.setattr(train_argus, "MATERIALIZE_BELOW_BYTES", 1)
    large = train_argus.split_dataset(str(path))
    assert sorted(large.to_pandas()["user_idx"]) == list(range(10))
    assert isinstance(small, MaterializedDataset) and not isinstance(large, MaterializedDataset)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no Parquet files"):
        train_argus.split_dataset(str(tmp_path / "empty"))


def test_temporal_split(ray_local, tmp_path):
    prepared = prepare_data(_seq_cfg(split="temporal"), tmp_path)
    t_val, _, _, t_test = prepared.summary["temporal_cuts"]
    train = pq.ParquetDataset(prepared.paths["train"]).read().to_pandas()
    test = pq.ParquetDataset(prepared.paths["test"]).read().to_pandas()
    assert all(max(ts) < t_val for ts in train["timestamp"])
    assert len(test) > 0
    # each test window ends at the user's first event after T_test, with history before it
    assert all(np.sum(np.asarray(ts) >= t_test) == 1 and ts[-1] >= t_test for ts in test["timestamp"])


@pytest.mark.parametrize("split", ["leave_last_out", "temporal_windows"])  # temporal: the same cuts without gaps
def test_grouped_logs_skip_the_shuffle_and_give_the_same_splits(ray_local, tmp_path, split):
    """The one-pass builder for logs grouped by user writes the same rows as the Ray Data group-by,
    and a log that is not grouped is recognised as such."""
    from argus_platform.data.sequences import _build_shuffled, temporal_cuts
    from argus_platform.data.sorted_sequences import build_sorted, grouped_by_user
    from argus_platform.data.vocab import Vocabulary

    windows = dict(test_window_seconds=4 * 86400, val_window_seconds=4 * 86400, gap_seconds=3600)
    cfg = _seq_cfg(split=split, min_events_per_user=6, **(windows if split == "temporal_windows" else {}))
    prepare_data(cfg, tmp_path / "run")
    events = tmp_path / "run" / "data" / "events.parquet"
    vocab, spec = Vocabulary.load(tmp_path / "run" / "vocab"), prepare_data(cfg, tmp_path / "run").spec
    assert grouped_by_user(events, vocab)
    cuts = temporal_cuts(events, cfg)
    fast = build_sorted(events, vocab, spec, cfg, tmp_path / "fast", cuts)
    slow = _build_shuffled(events, vocab, spec, cfg, tmp_path / "slow", cuts)
    assert fast.rows == slow.rows and fast.users_too_short == slow.users_too_short
    assert np.array_equal(fast.item_counts, slow.item_counts)
    for name in ("train", "validation", "test"):
        a, b = (pq.ParquetDataset(d.paths[name]).read() for d in (fast, slow))
        assert a.schema.equals(b.schema), (a.schema, b.schema)
        a, b = (t.sort_by("user_idx").to_pylist() for t in (a, b))
        assert a == b and len(a) > 0, name
    shuffled = pq.read_table(events).take(np.random.default_rng(0).permutation(pq.read_metadata(events).num_rows))
    pq.write_table(shuffled, tmp_path / "shuffled.parquet")
    assert not grouped_by_user(tmp_path / "shuffled.parquet", vocab)


def test_collate_windows_and_kjt():
    from argus_models.config import ActionHead, ModelSchema
    from argus_platform.collate import Collator, history_items

    schema = ModelSchema(num_items=9, contexts={}, actions=[ActionHead("like", "binary", 2)])
    table = pa.table(
        {
            "user_idx": [0, 1],
            "item_id": pa.array([[1, 2, 3, 4, 5], [7, 8]], pa.list_(pa.int32())),
            "act_like": pa.array([[0, 1, 0, 1, 1], [1, 0]], pa.list_(pa.float32())),
        }
    )
    batch = Collator(schema, {"like": ("binary", 2)}, window=3, negatives="uniform", num_uniform=4)(table)
    assert batch.items.tolist() == [[3, 4, 5], [7, 8, 0]] and batch.lengths.tolist() == [3, 2]
    assert batch.actions[..., 0].tolist() == [[0, 1, 1], [1, 0, 0]]
    kjt = batch.sparse_features
    assert kjt.keys() == ["item", "fb_like", "neg_item"]
    assert kjt["item"].values().tolist() == [3, 4, 5, 7, 8] and kjt["neg_item"].lengths().tolist() == [4, 0]
    assert all(1 <= i <= 9 for i in batch.neg_ids.tolist())
    values, offsets = history_items(table)
    assert values.tolist() == [1, 2, 3, 4, 7] and offsets.tolist() == [0, 4, 5]


def test_random_windows_cover_long_histories():
    from argus_platform.collate import window_index

    offsets = np.array([0, 10, 12])
    idx, lens = window_index(offsets, 4)
    assert idx.tolist() == [6, 7, 8, 9, 10, 11] and lens.tolist() == [4, 2]
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx, lens = window_index(offsets, 4, rng)
        first = idx[:4]
        assert np.all(np.diff(first) == 1) and 0 <= first[0] <= 6  # contiguous, inside row 0
        assert idx[4:].tolist() == [10, 11]  # short rows are untouched
        starts.add(int(first[0]))
    assert starts == set(range(7))


def test_movielens_ratings_dat_format(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::x::978300000\n")
    spec, chunks = read_movielens(path)
    good, bad = validate_chunk(pd.concat(chunks), spec, "ratings.dat")
    assert good["item_id"].tolist() == ["1193", "661"] and good["timestamp"].tolist() == [978300760, 978302109]
    assert good["like"].tolist() == [1.0, 0.0] and good["rating"].tolist() == [5.0, 3.0]
    assert len(bad) == 1 and bad["_reason"].iloc[0] == "action like out of range (binary): null"


def test_item_features_are_encoded_and_bad_rows_quarantined(tmp_path):
    from argus_models.contract import Vocabulary
    from argus_platform.data.config import ItemFeaturesConfig
    from argus_platform.data.item_features import build_item_features

    vocab = Vocabulary(items=np.array(["a", "b", "c", "d"]), users=np.array(["u"]))  # indices 1..4
    pd.DataFrame(
        {
            "sku": ["a", "b", None, "b", "zzz", "c", "12.0"],
            "genre": ["rock|pop", "pop", "jazz", "jazz", "pop", "pop|rock|jazz|folk", "x"],
            "label": ["L1", None, "L2", "L2", "L1", "L2", "L1"],
        }
    ).to_csv(tmp_path / "items.csv", index=False)
    cfg = ItemFeaturesConfig(
        path=str(tmp_path / "items.csv"), item_column="sku", columns=["genre", "label"], max_values=3
    )
    table = build_item_features(cfg, vocab, tmp_path / "q" / "item_features.parquet")
    assert [(f.name, f.num_values, f.slots) for f in table.features] == [("genre", 5, 3), ("label", 3, 1)]
    assert table.values == {"genre": ["pop", "rock", "folk", "jazz"], "label": ["L1", "L2"]}  # by frequency, then name
    # columns: genre slots 1-3, label slot; item d has no row; c keeps 3 of its 4 genres
    assert table.codes.tolist() == [[0, 0, 0, 0], [2, 1, 0, 1], [1, 0, 0, 0], [1, 2, 4, 2], [0, 0, 0, 0]]
    st = table.stats
    assert st["quarantined_rows"] == 2 and st["quarantine_reasons"] == {
        "null item id": 1,
        "repeated item id (first row kept)": 1,
    }
    assert st["rows_outside_catalogue"] == 2 and st["catalogue_items_without_features"] == 1  # zzz, 12; d
    assert st["values_cut_by_max_values"] == {"genre": 1, "label": 0}
    bad = pd.read_parquet(tmp_path / "q" / "item_features.parquet")
    assert sorted(bad["_row"]) == [2, 3] and set(bad["reason"]) == {"null item id", "repeated item id (first row kept)"}
    with pytest.raises(DataSourceError, match=r"missing column\(s\) \['genres'\]"):
        build_item_features(
            ItemFeaturesConfig(path=str(tmp_path / "items.csv"), item_column="sku", columns=["genres"]),
            vocab,
            tmp_path / "q2.parquet",
        )


def _users(rng, n, first_user=0):
    lengths = np.clip(rng.lognormal(4.3, 0.9, n), 2, 600).astype(int)  # ML-1M-like: median ~75, long tail
    return pa.table(
        {
            "user_idx": np.arange(first_user, first_user + n),
            "item_id": pa.array([rng.integers(1, 50, k).tolist() for k in lengths], pa.list_(pa.int32())),
        }
    )


def test_length_buckets_regroup_rows_by_length_without_losing_any():
    from argus_models.contract import list_values
    from argus_platform.collate import length_buckets

    rng = np.random.default_rng(0)
    users = _users(rng, 1000)
    batches = [users.slice(i, 64) for i in range(0, users.num_rows, 64)]  # 15 full batches and one of 40
    window = 201

    def widths(tables):
        return [int(np.minimum(np.diff(list_values(t.column("item_id"))[1]), window).max()) for t in tables]

    out = list(length_buckets(iter(batches), 4, window, np.random.default_rng(1)))
    assert sorted(t.num_rows for t in out) == sorted(t.num_rows for t in batches)  # same number and sizes of batches
    assert sorted(np.concatenate([t.column("user_idx").to_numpy() for t in out])) == list(range(1000))
    assert sum(64 * w for w in widths(out)) < 0.8 * sum(64 * w for w in widths(batches))  # fewer padded positions
    for g in range(0, 16, 4):  # each group of 4 holds the same users as before, cut by length
        group = out[g : g + 4]
        assert set(np.concatenate([t.column("user_idx").to_numpy() for t in group])) == set(
            np.concatenate([t.column("user_idx").to_numpy() for t in batches[g : g + 4]])
        )
        spans = sorted(
            (
                min(np.minimum(np.diff(list_values(t.column("item_id"))[1]), window)),
                max(np.minimum(np.diff(list_values(t.column("item_id"))[1]), window)),
            )
            for t in group
        )
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # disjoint length ranges
    assert [t.num_rows for t in length_buckets(iter(batches), 0, window)] == [t.num_rows for t in batches]
    assert list(length_buckets(iter(batches), 1, window))[3].equals(batches[3])  # off: as read


def test_length_buckets_step_workers_through_the_same_length_quantiles():
    """Workers wait for each other every step: with the same seed, two workers' k-th batches come
    from the same length quantile of their own data."""
    from argus_models.contract import list_values
    from argus_platform.collate import length_buckets

    rng = np.random.default_rng(0)
    shards = [_users(rng, 512, first_user=r * 512) for r in range(2)]
    per_rank = []
    for shard in shards:
        batches = [shard.slice(i, 32) for i in range(0, 512, 32)]
        out = length_buckets(iter(batches), 16, 1000, np.random.default_rng([0, 5]))
        per_rank.append([float(np.median(np.diff(list_values(t.column("item_id"))[1]))) for t in out])
    ranks_a, ranks_b = np.argsort(np.argsort(per_rank[0])), np.argsort(np.argsort(per_rank[1]))
    assert np.corrcoef(ranks_a, ranks_b)[0, 1] > 0.95  # (neighbouring quantiles may swap: different users)
    assert np.abs(ranks_a - ranks_b).max() <= 3
