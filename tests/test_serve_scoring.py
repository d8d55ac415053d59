"""Serving math without Ray: next-event encoding vs the training forward, candidate isolation,
retrieval indexes, diversity, weights and checkpoint resolution."""

import copy
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from argus_models.checkpoint import InferenceModel
from argus_models.config import ActionHead, ItemFeature, ModelConfig, ModelSchema
from argus_models.hashing import catalogue_hash_codes, hash_buckets
from argus_models.inference import (
    Events,
    ExactIndex,
    FaissIndex,
    RescoredIndex,
    action_probabilities,
    combine,
    encode_next,
    hashed_item_rows,
)
from argus_models.losses import feedback_probability
from argus_models.model import ITEM, ITEM_IDS, ArgusDenseArch, ctx_feature, embedding_configs, fb_feature, table_name
from argus_models.rundir import checkpoints, torchrun_checkpoint_name, wait_for_run
from argus_models.tokenization import EVENT_TIMES
from argus_serve.artifacts import ArtifactError, resolve_checkpoint
from argus_serve.scoring import diversify, item_groups
from argus_serve.weights import WeightsError, load_weights_file, resolve_weights, write_weights_file

ACTIONS = [ActionHead("like", "binary", 2), ActionHead("watched", "ratio", 10), ActionHead("stars", "graded", 5)]


ITEM_FEATURES = [ItemFeature("genre", num_values=6, slots=3), ItemFeature("year", num_values=4, slots=1)]


@pytest.fixture(
    scope="module",
    params=[
        "one_token",
        "three_token",
        "one_token+item_features",
        "three_token+item_features",
        "one_token+item_features+multi_hash",
        "three_token+multi_hash",
        "one_token+item_features+recjpq",
        "one_token+hstu_time",
        "three_token+hstu_time",
    ],
)
def sm(request) -> InferenceModel:
    torch.manual_seed(0)
    tokenization, *extras = request.param.split("+")
    side, hashed, jpq = "item_features" in extras, "multi_hash" in extras, "recjpq" in extras
    timed = "hstu_time" in extras  # HSTU with its time-gap bias: the events' times are read
    cfg = ModelConfig(
        embedding_dim=16,
        num_layers=2,
        num_heads=2,
        max_seq_len=8,
        dropout=0.0,
        tokenization=tokenization,
        encoder="hstu" if timed else "transformer",
    )
    schema = ModelSchema(
        num_items=50,
        contexts={"source": 4},
        actions=ACTIONS,
        item_features=ITEM_FEATURES if side else [],
        item_hash_buckets=[13, 11] if hashed else [],
        recjpq_splits=4 if jpq else 0,
        recjpq_sub_items=7 if jpq else 0,
        time_buckets=64 if timed else 0,
    )
    dense = ArgusDenseArch(cfg, schema).eval()
    if timed:
        with torch.no_grad():
            for block in dense.encoder.blocks:
                block.time_bias.normal_()
    if jpq:  # 4 splits of 7 sub-items, 4 dims each: rows 1..7 per split
        dense.set_recjpq_codes(torch.cat([torch.zeros(1, 4), torch.randint(1, 8, (50, 4))]).long())
    if side:  # random genres (0 = none) and years per item
        g = torch.Generator().manual_seed(3)
        dense.item_tower.set_codes(
            torch.cat([torch.randint(0, 6, (51, 3), generator=g), torch.randint(0, 4, (51, 1), generator=g)], 1)
        )
    if hashed:
        dense.set_item_hashes(torch.from_numpy(catalogue_hash_codes([str(i) for i in range(1, 51)], [13, 11])))
    tables = {t.name: torch.randn(t.num_embeddings, t.embedding_dim) * 0.5 for t in embedding_configs(schema, 16)}
    return InferenceModel(cfg, schema, dense, dense.local_tables(tables))


def _events(rng: np.random.Generator, n: int) -> Events:
    return Events(
        rng.integers(1, 51, n),
        {"source": rng.integers(1, 4, n)},
        {"like": rng.integers(0, 2, n), "watched": rng.integers(0, 10, n), "stars": rng.integers(0, 5, n)},
        times=1_700_000_000 + np.cumsum(rng.integers(1, 10**6, n)),
    )


def _next_time(h: Events) -> int:
    """When the request after history `h` comes: a day after its last event."""
    return int(h.times[-1]) + 86_400


def _reference(sm: InferenceModel, h: Events, next_ctx: int, candidate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward on one window [history (last max_seq_len) ; (candidate, next_ctx)]:
    query and feedback logits at the position that predicts the appended event."""
    at = _next_time(h)
    h = h.tail(sm.config.max_seq_len)
    ids = {ITEM: np.append(h.items, candidate), ctx_feature("source"): np.append(h.contexts["source"], next_ctx)}
    ids |= {fb_feature(a.name): np.append(h.feedback[a.name], 0) for a in ACTIONS}
    emb = {k: F.embedding(torch.from_numpy(v)[None], sm.tables[table_name(k)]) for k, v in ids.items()}
    emb[ITEM_IDS] = torch.from_numpy(ids[ITEM])[None]
    emb[EVENT_TIMES] = torch.from_numpy(np.append(h.times, at))[None]  # read by a timed model only
    with torch.no_grad():
        out = sm.dense(emb, torch.tensor([len(h) + 1]))
    return out["query"][0, -1], out["feedback"][0, -1]


def test_encode_next_and_ranking_match_the_training_forward(sm):
    rng = np.random.default_rng(1)
    hist = [_events(rng, n) for n in (1, 3, 8, 20)]  # 20 > max_seq_len: the tail is read
    ctx = [{"source": 2}, {"source": 1}, {"source": 3}, {"source": 0}]
    at = [_next_time(h) for h in hist]
    head_in, query = encode_next(sm, hist, ctx, at)
    cands = torch.tensor([[5, 9], [1, 50], [7, 7], [33, 2]])
    probs = action_probabilities(sm, head_in, cands, hist, ctx, at)
    for b, h in enumerate(hist):
        for j in range(2):
            ref_q, ref_fb = _reference(sm, h, ctx[b]["source"], int(cands[b, j]))
            torch.testing.assert_close(query[b], ref_q, atol=1e-5, rtol=1e-5)
            logits = sm.dense.action_logits(ref_fb)
            for a in ACTIONS:
                ref_p = feedback_probability(a, logits[a.name])
                torch.testing.assert_close(probs[a.name][b, j], ref_p, atol=1e-5, rtol=1e-5)
    if sm.schema.time_buckets:  # a history without times cannot be read by a model with a time bias
        untimed = Events(hist[1].items, hist[1].contexts, hist[1].feedback)
        with pytest.raises(ValueError, match="history 1 has no event times"):
            encode_next(sm, [hist[0], untimed], ctx[:2])


def test_a_candidates_score_does_not_depend_on_the_other_candidates(sm):
    rng = np.random.default_rng(2)
    hist = [_events(rng, 6), _events(rng, 2)]
    ctx = [{"source": 1}, {"source": 2}]
    at = [_next_time(h) for h in hist]
    head_in, _ = encode_next(sm, hist, ctx, at)
    full = action_probabilities(sm, head_in[:1], torch.tensor([[4, 8, 15, 16, 23, 42]]), hist[:1], ctx[:1], at[:1])
    alone = action_probabilities(sm, head_in[:1], torch.tensor([[15]]), hist[:1], ctx[:1], at[:1])
    shuffled = action_probabilities(
        sm, head_in[:1], torch.tensor([[42, 15, 1, 2, 3, 4, 5, 6, 7, 8, 9]]), hist[:1], ctx[:1], at[:1]
    )
    head_in_b, _ = encode_next(sm, hist[:1], ctx[:1], at[:1])  # without the other request in the batch
    solo = action_probabilities(sm, head_in_b, torch.tensor([[15, 42]]), hist[:1], ctx[:1], at[:1])
    for a in ("like", "watched", "stars"):
        torch.testing.assert_close(full[a][0, 2], alone[a][0, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(full[a][0, 2], shuffled[a][0, 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(full[a][0, 5], shuffled[a][0, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(full[a][0, 2], solo[a][0, 0], atol=1e-5, rtol=0)


def test_items_outside_the_vocabulary_are_embedded_from_their_hash_rows(sm):
    rng = np.random.default_rng(4)
    h = _events(rng, 5)
    buckets = sm.schema.item_hash_buckets
    if not buckets:
        with pytest.raises(ValueError, match="no multi-hash tables"):
            hashed_item_rows(sm, np.ones((1, 2), dtype=np.int64))
        return
    codes = hash_buckets(["never-seen-77"], buckets)[0]
    cold = Events(h.items.copy(), h.contexts, h.feedback, np.zeros((5, len(buckets)), dtype=np.int64))
    cold.items[2], cold.hashes[2] = 0, codes
    assert np.array_equal(h.concat(cold).tail(5).hashes, cold.hashes) and h.concat(cold).hashes[:5].sum() == 0
    # Reference: the model's own path for a catalogue item j whose id row is zero, whose buckets are
    # the new id's and whose side features are the padding id's.
    j = int(h.items[2])
    dense = copy.deepcopy(sm.dense)
    hash_codes = dense.item_hash_codes.clone()
    hash_codes[j] = torch.from_numpy(codes)
    dense.set_item_hashes(hash_codes)
    if dense.item_tower is not None:  # the padding id's side features (none in real catalogues)
        dense.item_tower.codes[j], dense.item_tower.weights[j] = dense.item_tower.codes[0], dense.item_tower.weights[0]
    D = sm.config.embedding_dim
    tables = dict(sm.tables)
    tables[table_name(ITEM)] = sm.tables[table_name(ITEM)][:, :D].clone()  # the id table alone
    tables[table_name(ITEM)][j] = 0
    ref = InferenceModel(sm.config, sm.schema, dense, dense.local_tables(tables))
    ctx = [{"source": 2}]
    cands = torch.tensor([[k for k in (3, 11, 29, 41) if k != j]])
    got_h, got_q = encode_next(sm, [cold], ctx)
    ref_h, ref_q = encode_next(ref, [h], ctx)
    torch.testing.assert_close(got_h, ref_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_q, ref_q, atol=1e-5, rtol=1e-5)
    got_p, ref_p = (
        action_probabilities(sm, got_h, cands, [cold], ctx),
        action_probabilities(ref, ref_h, cands, [h], ctx),
    )
    for a in ACTIONS:
        torch.testing.assert_close(got_p[a.name], ref_p[a.name], atol=1e-5, rtol=1e-5)
    # and the event counts: leaving it out gives another query
    dropped = Events(
        np.delete(h.items, 2),
        {"source": np.delete(h.contexts["source"], 2)},
        {k: np.delete(v, 2) for k, v in h.feedback.items()},
    )
    assert not torch.allclose(encode_next(sm, [dropped], ctx)[1], got_q, atol=1e-3)


@pytest.mark.parametrize("index_cls", [ExactIndex, RescoredIndex])
def test_full_scans_are_brute_force_top_k_without_excluded_items(index_cls):
    torch.manual_seed(3)
    vectors = torch.randn(101, 8)
    query = torch.randn(3, 8)
    exclude = [np.array([5, 6, 7]), np.array([], dtype=np.int64), np.arange(1, 96)]  # last leaves 5 items
    ids, scores = index_cls(vectors).search(query, 10, exclude)
    for b in range(3):
        allowed = [i for i in range(1, 101) if i not in set(exclude[b].tolist())]
        s = (vectors[allowed] @ query[b]).numpy()
        want = np.asarray(allowed)[np.argsort(-s)[:10]]
        got = ids[b][ids[b] > 0]
        assert got.tolist() == want.tolist()
        np.testing.assert_allclose(scores[b][ids[b] > 0], np.sort(s)[::-1][:10], rtol=1e-5, atol=1e-5)  # exact scores
    assert (ids[2] > 0).sum() == 5 and np.all(ids[2][5:] == 0)


def test_rescored_scan_finds_the_exact_top_k_on_a_clustered_catalogue():
    """8-bit codes pick a shortlist, float32 re-scores it: the top-200 of 20,000 clustered items
    (norms differ by cluster) equal the float32 scan's for every query."""
    vectors = _clustered(20_000, 32, 64, seed=5)
    g = torch.Generator().manual_seed(6)
    query = vectors[1 + torch.randperm(20_000, generator=g)[:40]] + 0.1 * torch.randn(40, 32, generator=g)
    exclude = [np.arange(1 + b, 20_001, 997) for b in range(40)]
    exact, exact_scores = ExactIndex(vectors).search(query, 200, exclude)
    got, got_scores = RescoredIndex(vectors).search(query, 200, exclude)
    for b in range(40):  # the same items; equal scores (to float32 rounding) may come in either order
        assert set(got[b].tolist()) == set(exact[b].tolist()), b
    np.testing.assert_allclose(got_scores, exact_scores, rtol=1e-5, atol=1e-4)


def _clustered(n, d, clusters, seed):
    """Item-like vectors: clusters of different norms (inner-product search is not cosine search)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * torch.rand(clusters, 1, generator=g).mul(2).add(0.5)
    x = centres[torch.randint(0, clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return torch.cat([torch.zeros(1, d), x])  # row 0: padding


def test_faiss_ivf_index_finds_what_exact_search_finds():
    vectors = _clustered(20_000, 16, 64, seed=4)
    query = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    exclude = [np.arange(1, 200) for _ in range(20)]
    exact, _ = ExactIndex(vectors).search(query, 50, exclude)
    index = FaissIndex(vectors, probe=32)
    assert index.lists == 256  # 2·√20,000 ≈ 283 → 256
    ann, ann_scores = index.search(query, 50, exclude)
    assert not np.isin(ann, np.arange(1, 200)).any() and (ann > 0).all()
    recall = np.mean([len(set(a) & set(e)) / 50 for a, e in zip(ann, exact)])
    assert recall >= 0.95, recall
    torch.testing.assert_close(torch.from_numpy(ann_scores[0]), (vectors[ann[0]] @ query[0]), atol=1e-4, rtol=1e-4)
    every_list = FaissIndex(vectors, probe=index.lists).search(query, 50, exclude)[0]  # scanning all lists is exact
    np.testing.assert_array_equal(np.sort(every_list, axis=1), np.sort(exact, axis=1))


def test_faiss_index_is_written_once_and_read_back(tmp_path):
    vectors, query = _clustered(3000, 16, 16, seed=6), torch.randn(8, 16)
    built = FaissIndex(vectors, cache_dir=tmp_path)
    assert not built.cached and built.path.is_file() and built.describe()["bytes"] == built.path.stat().st_size
    again = FaissIndex(vectors, cache_dir=tmp_path)
    assert again.cached and again.path == built.path
    none = [np.array([], dtype=np.int64)] * 8
    np.testing.assert_array_equal(again.search(query, 20, none)[0], built.search(query, 20, none)[0])
    other = FaissIndex(vectors * 2, cache_dir=tmp_path)  # other vectors: another file, never the stale index
    assert not other.cached and other.path != built.path and len(list(tmp_path.glob("*.faiss"))) == 2


def test_diversity_pushes_repeated_groups_down():
    scores = np.array([0.9, 0.85, 0.8, 0.5, -0.1])
    groups = np.array([1, 1, 1, 2, 3])
    assert diversify(scores, groups, 1.0, 5).tolist() == [0, 1, 2, 3, 4]
    # after item 0, group 1 scores halve: 0.85 → 0.425 < 0.5, so group 2 comes second
    assert diversify(scores, groups, 0.5, 3).tolist() == [0, 3, 1]
    neg = np.array([-0.1, -0.2, -0.3])
    assert diversify(neg, np.array([1, 1, 2]), 0.25, 3).tolist() == [
        0,
        2,
        1,
    ]  # a negative score is pushed down too: −0.2 → −0.35
    groups_all = item_groups(torch.randn(41, 8), num_groups=4)
    assert groups_all[0] == -1 and set(groups_all[1:].tolist()) <= {0, 1, 2, 3}


def test_weights_are_checked_against_the_models_actions(tmp_path):
    actions = ["like", "skip"]
    assert combine(
        {"like": torch.tensor([0.5]), "skip": torch.tensor([0.2])}, {"like": 2.0, "skip": -1.0}
    ).item() == pytest.approx(0.8)
    with pytest.raises(WeightsError, match=r"unknown action\(s\) \['lik'\]"):
        resolve_weights({"lik": 1.0}, "", actions, tmp_path)
    w = resolve_weights({"like": 1.0}, "", actions, tmp_path)
    assert w.weights == {"like": 1.0, "skip": 0.0} and w.source == "user_config"
    assert resolve_weights({}, "", actions, tmp_path).weights == {"like": 0.5, "skip": 0.5}
    (tmp_path / "tune").mkdir()
    write_weights_file(tmp_path / "tune" / "weights.yaml", {"like": 1.0, "skip": -2.0}, {"metric": "oracle"})
    assert resolve_weights({}, "", actions, tmp_path).weights == {"like": 1.0, "skip": -2.0}  # the run's Tune output
    (tmp_path / "bad.yaml").write_text("weights: {like: 1}\nextra: 2\n")
    with pytest.raises(WeightsError, match="unknown key"):
        load_weights_file(str(tmp_path / "bad.yaml"), actions)
    (tmp_path / "nan.yaml").write_text("weights: {like: .nan}\n")
    with pytest.raises(WeightsError, match="finite number"):
        load_weights_file(str(tmp_path / "nan.yaml"), actions)


def test_the_engagement_term_round_trips_through_the_weights_file_and_ranks_by_the_choice_softmax(tmp_path):
    actions = ["like", "skip"]
    write_weights_file(tmp_path / "w.yaml", {"like": 1.0, "skip": -1.0, "engage": 0.5}, engage_sharpness=2.0)
    w = load_weights_file(tmp_path / "w.yaml", actions)
    assert w.weights == {"like": 1.0, "skip": -1.0, "engage": 0.5} and w.engage_sharpness == 2.0
    assert w.version != load_weights_file_plain(tmp_path, actions).version
    probs = {"like": torch.tensor([[0.5, 0.9, 0.0]]), "skip": torch.tensor([[0.1, 0.6, 0.0]])}
    retrieval, valid = torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([[True, True, False]])
    got = combine(probs, w.weights, retrieval, w.engage_sharpness, valid)
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    torch.testing.assert_close(got[0, :2].float(), p * torch.tensor([0.5 + 0.5 - 0.1, 0.5 + 0.9 - 0.6]))
    assert got[0, 2] == 0.0, "no probability on an empty slot"
    with pytest.raises(ValueError, match="retrieval scores"):
        combine(probs, w.weights, None, 2.0)
    (tmp_path / "neg.yaml").write_text("weights: {like: 1}\nengage_sharpness: -1\n")
    with pytest.raises(WeightsError, match="engage_sharpness must be ≥ 0"):
        load_weights_file(tmp_path / "neg.yaml", actions)
    inline = resolve_weights({"like": 1.0, "engage": 0.2}, "", actions, tmp_path, engage_sharpness=1.5)
    assert inline.engage_sharpness == 1.5 and inline.weights["engage"] == 0.2


def load_weights_file_plain(tmp_path, actions):
    write_weights_file(tmp_path / "plain.yaml", {"like": 1.0, "skip": -1.0, "engage": 0.5})
    return load_weights_file(tmp_path / "plain.yaml", actions)


def _fake_checkpoint(run: Path, name: str, epoch: int, best: int) -> Path:
    d = run / name
    d.mkdir(parents=True)
    (d / ".metadata").write_bytes(b"")
    (d / "train_state.json").write_text(json.dumps({"epoch": epoch, "best_epoch": best}))
    return d


def test_resolve_checkpoint_picks_the_best_kept_epoch_of_the_newest_run(tmp_path):
    with pytest.raises(ArtifactError, match="no training run with checkpoints"):
        resolve_checkpoint("", str(tmp_path))
    old = _fake_checkpoint(tmp_path / "a", "checkpoint_1", 3, 3)
    best = _fake_checkpoint(tmp_path / "b", "checkpoint_1", 3, 3)
    _fake_checkpoint(tmp_path / "b", "checkpoint_2", 6, 3)
    assert resolve_checkpoint("", str(tmp_path)) == best
    assert resolve_checkpoint(str(tmp_path / "a"), "") == old
    assert resolve_checkpoint(str(best), "") == best
    latest = _fake_checkpoint(tmp_path / "c", "checkpoint_9", 9, 1)  # best epoch's checkpoint not kept
    assert resolve_checkpoint(str(tmp_path / "c"), "") == latest
    with pytest.raises(ArtifactError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"), "")
    # torchrun's checkpoints, ordered by epoch (not by name: 10 after 9); one being written is not complete
    ten = _fake_checkpoint(tmp_path / "t", torchrun_checkpoint_name(10), 10, 10)
    _fake_checkpoint(tmp_path / "t", torchrun_checkpoint_name(9), 9, 9)
    (tmp_path / "t" / torchrun_checkpoint_name(11)).mkdir()  # no .metadata or train_state.json yet
    assert [p.name for p in checkpoints(tmp_path / "t")][-1] == ten.name
    assert resolve_checkpoint(str(tmp_path / "t"), "") == ten


def test_wait_for_run_returns_when_training_finishes_and_names_the_run_on_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGUS_HOME", str(tmp_path))  # relative run paths resolve against it
    run = tmp_path / "runs" / "r"
    wait_for_run("runs/r", 0)  # no wait asked: returns at once, even with nothing there
    with pytest.raises(ArtifactError, match=r"runs/r: training did not finish within 0.3s"):
        wait_for_run("runs/r", 0.3, poll_s=0.05)
    _fake_checkpoint(run, "checkpoint_1", 1, 1)
    timer = threading.Timer(0.3, lambda: (run / "metrics.json").write_text("{}"))
    timer.start()
    started = time.monotonic()
    wait_for_run("runs/r", 30, poll_s=0.05)
    assert (run / "metrics.json").is_file() and time.monotonic() - started < 10
    assert resolve_checkpoint("runs/r", "") == run / "checkpoint_1"


def test_the_best_checkpoints_by_validation_and_the_latest_are_kept(tmp_path):
    from argus_models.rundir import checkpoint_score, checkpoints_beyond

    for epoch, ndcg in [(2, 0.10), (4, 0.30), (6, 0.25), (8, 0.20), (10, 0.05)]:
        d = _fake_checkpoint(tmp_path, torchrun_checkpoint_name(epoch), epoch, 4)
        state = {"epoch": epoch, "best_epoch": 4, "history": [{"epoch": epoch, "validation": {"ndcg@10": ndcg}}]}
        (d / "train_state.json").write_text(json.dumps(state))
    beyond = {p.name for p in checkpoints_beyond(tmp_path, 2)}
    assert beyond == {torchrun_checkpoint_name(e) for e in (2, 8)}  # kept: 4 and 6 (the best two), 10 (latest)
    assert checkpoint_score(tmp_path / torchrun_checkpoint_name(4)) == 0.30
    assert checkpoint_score(_fake_checkpoint(tmp_path / "x", "checkpoint_1", 1, 1)) == float("-inf")  # none recorded
