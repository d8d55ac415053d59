"""The memory-mapped user store and the sorted-id lookup, on a run directory written here."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus_models.contract import ITEM_COL, TIME_COL, USER_IDX, Vocabulary, act_col, ctx_col, target_code
from argus_serve.artifacts import ActionInfo, ArtifactError
from argus_serve.store import STORE_FILE, SortedIds, UserStore

ACTIONS = [ActionInfo("like", "binary", 2), ActionInfo("played_ratio", "ratio", 10)]


def _write_run(run_dir, num_users=50, without=(3, 17), seed=0):
    """Sequences per split in the prepared-data layout; users in `without` have none."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(
        items=np.array([f"i{j}" for j in range(40)]),
        users=np.array([f"user-{u:03d}" for u in range(num_users)]),
        contexts={"device": np.array(["web", "app"])},
    )
    vocab.save(run_dir / "vocab")
    full = {}
    for u in range(num_users):
        if u in without:
            continue
        n = int(rng.integers(3, 12))
        full[u] = {
            ITEM_COL: rng.integers(1, 41, n),
            TIME_COL: 1_700_000_000 + np.cumsum(rng.integers(0, 10**5, n)),
            ctx_col("device"): rng.integers(0, 3, n),
            act_col("like"): rng.integers(0, 2, n).astype(np.float32),
            act_col("played_ratio"): rng.random(n).astype(np.float32),
        }
    for split, cut in (("train", 2), ("validation", 1), ("test", 0)):
        rows = [{USER_IDX: u} | {k: v[: len(v) - cut].tolist() for k, v in seq.items()} for u, seq in full.items()]
        (run_dir / "data" / split).mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(rows[::-1]), run_dir / "data" / split / "part-0.parquet"
        )  # order does not matter
    return vocab, full


def test_store_returns_each_users_longest_row_and_nothing_for_others(tmp_path):
    vocab, full = _write_run(tmp_path)
    store = UserStore.load(tmp_path, vocab, ACTIONS)
    assert len(store) == len(full) and (tmp_path / "serving" / STORE_FILE).is_file()
    for u, seq in full.items():
        ev = store.get(vocab.users[u])
        np.testing.assert_array_equal(ev.items, seq[ITEM_COL])
        np.testing.assert_array_equal(ev.times, seq[TIME_COL])  # HSTU's time-gap bias reads them
        np.testing.assert_array_equal(ev.contexts["device"], seq[ctx_col("device")])
        np.testing.assert_array_equal(ev.feedback["like"], target_code("binary", 2, seq[act_col("like")]))
        np.testing.assert_array_equal(
            ev.feedback["played_ratio"], target_code("ratio", 10, seq[act_col("played_ratio")])
        )
    assert store.get("user-003") is None and "user-017" not in store  # in the vocabulary, no sequences
    assert store.get("nobody") is None and store.get("user-0000000000000001") is None and store.get("") is None
    assert store.stats()["events"] == sum(len(s[ITEM_COL]) for s in full.values())


def test_store_file_is_reused_and_rebuilt_for_another_vocabulary(tmp_path):
    vocab, _ = _write_run(tmp_path)
    UserStore.load(tmp_path, vocab, ACTIONS)
    path = tmp_path / "serving" / STORE_FILE
    built = path.stat().st_mtime_ns
    UserStore.load(tmp_path, vocab, ACTIONS)
    assert path.stat().st_mtime_ns == built  # memory-mapped again, not rebuilt
    with open(path, "ab") as f:  # a data file its metadata does not describe (e.g. a write cut short) is built again
        f.write(b"x")
    UserStore.load(tmp_path, vocab, ACTIONS)
    assert path.stat().st_mtime_ns != built
    built = path.stat().st_mtime_ns
    other = Vocabulary(items=vocab.items, users=np.concatenate([vocab.users, ["user-new"]]), contexts=vocab.contexts)
    store = UserStore.load(tmp_path, other, ACTIONS)
    assert path.stat().st_mtime_ns != built and store.meta["vocab_version"] == other.version()


def test_store_names_a_missing_column(tmp_path):
    vocab, _ = _write_run(tmp_path)
    with pytest.raises(ArtifactError, match="act_skip"):
        UserStore.load(tmp_path, vocab, ACTIONS + [ActionInfo("skip", "binary", 2)])


def test_store_refuses_a_run_without_sequences(tmp_path):
    Vocabulary(items=np.array(["a"]), users=np.array(["u"])).save(tmp_path / "vocab")
    with pytest.raises(ArtifactError, match="no train/validation/test sequences"):
        UserStore.load(tmp_path, Vocabulary.load(tmp_path / "vocab"), ACTIONS)


def test_sorted_ids_match_a_dict():
    rng = np.random.default_rng(1)
    raw = np.array([f"{rng.integers(0, 10**9)}-{i}" for i in range(2000)])
    ids = SortedIds(raw)
    expect = {r: i for i, r in enumerate(raw.tolist())}
    probes = raw[rng.integers(0, len(raw), 300)].tolist() + ["", "0", "zzzz", raw[0] + "x", "a" * 200]
    assert [ids.get(p) for p in probes] == [expect.get(p) for p in probes]
    np.testing.assert_array_equal(ids.lookup(probes), [expect.get(p, -1) for p in probes])
