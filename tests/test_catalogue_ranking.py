"""Bounded-memory full-catalogue evaluation against the plain reference (full tables, dense
[users × catalogue] score blocks): the same ranking metrics in one process and on 2 gloo ranks
scoring their own blocks of the catalogue through sharded lookups."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from argus_models.config import ActionHead, ItemFeature, ModelConfig, ModelSchema

RANKING = ("ndcg@10", "hr@10", "ndcg@100", "hr@100", "mrr", "coverage@10", "users")
KINDS = {"like": ("binary", 2)}


def _rows(seed: int, n: int, num_items: int) -> pa.Table:
    """Histories of 3..12 events with repeats, so the seen filter has work to do."""
    rng = np.random.default_rng(seed)
    items = [list(rng.integers(1, num_items + 1, size=rng.integers(3, 13))) for _ in range(n)]
    return pa.table(
        {
            "user_idx": np.arange(seed * 1000, seed * 1000 + n),
            "item_id": pa.array(items, pa.list_(pa.int32())),
            "ctx_source": pa.array([[1 + i % 3 for i in row] for row in items], pa.list_(pa.int32())),
            "act_like": pa.array([[float(i % 2) for i in row] for row in items], pa.list_(pa.float32())),
        }
    )


def _schema(num_items: int, hashed: bool) -> ModelSchema:
    extra = (
        dict(item_features=[ItemFeature("genre", num_values=4, slots=2)], item_hash_buckets=[11, 13]) if hashed else {}
    )
    return ModelSchema(num_items=num_items, contexts={"source": 4}, actions=[ActionHead("like", "binary", 2)], **extra)


def _hashes(schema: ModelSchema):
    from argus_models.hashing import catalogue_hash_codes

    if not schema.item_hash_buckets:
        return None
    return catalogue_hash_codes([str(i) for i in range(1, schema.num_items + 1)], schema.item_hash_buckets)


def _dense(schema: ModelSchema, seed: int):
    from argus_models.model import ArgusDenseArch

    torch.manual_seed(seed)
    dense = ArgusDenseArch(
        ModelConfig(embedding_dim=16, num_layers=1, num_heads=2, max_seq_len=12, dropout=0.0), schema
    )
    if schema.item_features:
        ids = np.arange(schema.num_items + 1)
        codes = np.stack([ids % 3 + 1, np.where(ids % 2 == 0, ids // 2 % 3 + 1, 0)], axis=1)
        codes[0] = 0
        dense.item_tower.set_codes(torch.from_numpy(codes))
    if schema.item_hash_buckets:
        dense.set_item_hashes(torch.from_numpy(_hashes(schema)))
    return dense


def _tables(schema: ModelSchema, seed: int) -> dict[str, torch.Tensor]:
    from argus_models.model import embedding_configs

    g = torch.Generator().manual_seed(seed)
    return {
        t.name: torch.randn(t.num_embeddings, t.embedding_dim, generator=g) * 0.3 for t in embedding_configs(schema, 16)
    }


def _counts(num_items: int) -> torch.Tensor:
    counts = torch.from_numpy(np.random.default_rng(5).integers(0, 6, size=num_items + 1))  # many ties
    counts[0] = 0
    return counts


@pytest.mark.parametrize("hashed", [False, True], ids=["ids", "tower+multi-hash"])
@pytest.mark.parametrize("filter_seen", [True, False])
def test_bounded_ranking_equals_the_dense_reference(hashed, filter_seen):
    from argus_platform.collate import Collator
    from argus_platform.config import EvalConfig
    from argus_platform.evaluation import evaluate, evaluate_reference, local_lookup

    C = 97
    schema = _schema(C, hashed)
    dense, tables = _dense(schema, 0), _tables(schema, 1)
    collator = Collator(schema, KINDS, window=13, item_parts=_hashes(schema))
    batches = [_rows(s, 23, C) for s in range(4)]
    counts = _counts(C)
    ref = evaluate_reference(dense, tables, batches, collator, counts, EvalConfig(filter_seen=filter_seen))
    for block in (7, 32768):  # many blocks, and the whole catalogue in one
        cfg = EvalConfig(filter_seen=filter_seen, catalogue_block=block)
        got = evaluate(dense, local_lookup(dense, tables), batches, collator, counts, cfg, torch.device("cpu"))
        for ranker in ("model", "popularity"):
            for key in RANKING:
                assert got[ranker][key] == pytest.approx(ref[ranker][key], abs=1e-12), (ranker, key, block)
        assert "like/auc" in got["model"]


def test_bounded_ranking_on_a_catalogue_of_many_blocks_equals_the_reference(monkeypatch):
    """3,000 items in blocks of 256: after the first block the top-10 runs through the bucket
    prefilter (forced here for every block it can take; counted below), the counts through the
    byte-lane sums."""
    from argus_platform import catalogue_ranking
    from argus_platform.collate import Collator
    from argus_platform.config import EvalConfig
    from argus_platform.evaluation import evaluate, evaluate_reference, local_lookup

    full_topk = []
    plain = catalogue_ranking.RunningTop._add_topk
    monkeypatch.setattr(
        catalogue_ranking.RunningTop, "_add_topk", lambda self, s, o: (full_topk.append(o), plain(self, s, o))
    )
    monkeypatch.setattr(catalogue_ranking.RunningTop, "merge_share", 1.0)
    C = 3000
    schema = _schema(C, False)
    dense, tables = _dense(schema, 0), _tables(schema, 1)
    collator = Collator(schema, KINDS, window=13)
    batches = [_rows(s, 40, C) for s in range(3)]
    counts = _counts(C)
    cfg = EvalConfig(catalogue_block=256)
    ref = evaluate_reference(dense, tables, batches, collator, counts, cfg)
    got = evaluate(dense, local_lookup(dense, tables), batches, collator, counts, cfg, torch.device("cpu"))
    for ranker in ("model", "popularity"):
        for key in RANKING:
            assert got[ranker][key] == pytest.approx(ref[ranker][key], abs=1e-12), (ranker, key)
    assert len(full_topk) == 3 * 2  # per batch: the first block and the last, partial one (184 items)


@pytest.mark.parametrize("width", [7, 8, 2040, 2048, 4104, 8192])
def test_count_above_equals_a_plain_count(width):
    from argus_platform.catalogue_ranking import count_above

    g = torch.Generator().manual_seed(width)
    scores = torch.randint(-3, 4, (37, width), generator=g).float()  # many ties with the threshold
    scores[0] = 5.0  # a row entirely above: every byte lane of every word full
    scores[1, ::3] = float("-inf")
    threshold = torch.randint(-2, 3, (37,), generator=g).float()
    threshold[0] = -10.0
    want = (scores > threshold[:, None]).sum(1)
    assert torch.equal(count_above(scores, threshold), want)
    assert count_above(scores, threshold)[0] == width


def test_running_top_keeps_each_rows_ten_best_over_the_blocks():
    from argus_platform.catalogue_ranking import RunningTop

    g = torch.Generator().manual_seed(0)
    rows, width, blocks = 50, 256, 20
    scores = torch.randperm(rows * (width * blocks + 100), generator=g).float().view(rows, -1)  # distinct
    scores[3, : width * 2] = float("-inf")  # a row whose first blocks are all filtered
    top = RunningTop(rows, torch.device("cpu"))
    for c0 in range(0, scores.shape[1], width):
        top.add(scores[:, c0 : c0 + width].contiguous(), c0 + 1)
    want_v, want_i = scores.topk(10, dim=1)
    assert torch.equal(top.values, want_v)
    assert torch.equal(top.ids, want_i + 1)


def test_popularity_ranks_count_only_unseen_items_above_the_target():
    from argus_platform.catalogue_ranking import PopularityRanker

    counts = torch.tensor([0, 5, 9, 9, 1, 7])  # order: 2, 3 (tie: lower id first), 5, 1, 4
    ranker = PopularityRanker(counts)
    assert ranker.order.tolist() == [2, 3, 5, 1, 4]
    # user 0: target 1 (position 3), seen 2 and 5 above it, 4 below, the target itself seen before
    ranks, top = ranker.ranks(np.array([1, 4]), np.array([0, 0, 0, 0, 1]), np.array([2, 5, 4, 1, 3]), filter_seen=True)
    assert ranks.tolist() == [1.0, 3.0]
    assert top[0, :2].tolist() == [3, 1] and top[1, :4].tolist() == [2, 5, 1, 4]  # unseen items by count
    ranks, _ = ranker.ranks(np.array([1, 4]), np.array([0, 0]), np.array([2, 5]), filter_seen=False)
    assert ranks.tolist() == [3.0, 4.0]


def test_catalogue_blocks_cover_every_item_once():
    from argus_platform.catalogue_ranking import item_range

    for C, W in ((97, 2), (5, 3), (2, 4), (1_000_000, 8)):
        ranges = [item_range(C, r, W) for r in range(W)]
        assert ranges[0][0] == 1 and ranges[-1][1] == C + 1
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_user_sample_is_a_fixed_hash_sample():
    from argus_platform.evaluation import user_sample

    batches = [_rows(s, 500, 50) for s in range(4)]  # 2,000 users
    first = pa.concat_tables(list(user_sample(iter(batches), 400, 2000)))
    again = pa.concat_tables(list(user_sample(iter(batches[::-1]), 400, 2000)))
    assert 300 < first.num_rows < 500
    assert sorted(first.column("user_idx").to_pylist()) == sorted(again.column("user_idx").to_pylist())
    assert sum(t.num_rows for t in user_sample(iter(batches), 0, 2000)) == 2000


def _sharded_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from argus_platform.collate import Collator
    from argus_platform.config import EvalConfig, TrainJobConfig
    from argus_platform.configlib import load_config
    from argus_platform.evaluation import evaluate, evaluate_reference
    from argus_platform.sharding.gather import gather_tables
    from argus_platform.sharding.plan import shard

    C = 61
    results = {}
    for sharding_type, hashed in (("row_wise", False), ("table_wise", False), ("row_wise", True)):
        schema = _schema(C, hashed)
        hashes = _hashes(schema)
        cfg = load_config(
            TrainJobConfig,
            overrides=[
                "model.embedding_dim=16",
                "model.num_layers=1",
                "model.max_seq_len=12",
                "model.dropout=0.0",
                "optim.batch_size=8",
                "optim.warmup_steps=1",
                "loss.next_item=corrected_logq",
                "loss.in_batch_negatives=8",
                "loss.uniform_negatives=8",
                f"sharding.sharding_type={sharding_type}",
            ],
        )
        ids = np.arange(C + 1)
        codes = np.stack([ids % 3 + 1, np.where(ids % 2 == 0, ids // 2 % 3 + 1, 0)], axis=1) if hashed else None
        if hashed:
            codes[0] = 0
        counts = _counts(C)
        torch.manual_seed(0)
        sharded = shard(cfg, schema, counts, torch.device("cpu"), item_codes=codes, item_parts=hashes)
        # a few training steps through the pipeline, then evaluation with the pipeline detached
        pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, torch.device("cpu"))
        train = Collator(schema, KINDS, window=13, negatives="uniform", num_uniform=8, seed=rank, item_parts=hashes)
        steps = iter([train(_rows(100 + 10 * rank + s, 8, C)) for s in range(3)])
        while True:
            try:
                pipeline.progress(steps)
            except StopIteration:
                break
        pipeline.detach()
        collator = Collator(schema, KINDS, window=13, item_parts=hashes)
        # unequal shares: rank 0 evaluates three batches, rank 1 one
        mine = [_rows(s, 9, C) for s in ((0, 1, 2) if rank == 0 else (3,))]
        cfg_eval = EvalConfig(catalogue_block=5)
        got = evaluate(sharded.dense, sharded.task.sparse, mine, collator, counts, cfg_eval, torch.device("cpu"))
        tables = gather_tables(sharded.model)
        key = f"{sharding_type}{'+hashed' if hashed else ''}"
        results[key] = {"got": {r: {k: got[r][k] for k in RANKING} for r in ("model", "popularity")}}
        if rank == 0:  # the reference sees every rank's users in one process
            with torch.no_grad():
                ref = evaluate_reference(
                    sharded.dense, tables, [_rows(s, 9, C) for s in range(4)], collator, counts, cfg_eval
                )
            results[key]["ref"] = {r: {k: ref[r][k] for k in RANKING} for r in ("model", "popularity")}
        del sharded, pipeline
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    import gc

    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.integration
def test_sharded_catalogue_ranking_on_two_ranks_equals_the_reference(tmp_path):
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    for key in ("row_wise", "table_wise", "row_wise+hashed"):
        assert r0[key]["got"] == r1[key]["got"], key  # every rank holds the reduced metrics
        for ranker in ("model", "popularity"):
            assert r0[key]["got"][ranker]["users"] == 36
            for k in RANKING:
                assert r0[key]["got"][ranker][k] == pytest.approx(r0[key]["ref"][ranker][k], abs=1e-12), (
                    key,
                    ranker,
                    k,
                )


def test_metrics_carry_the_standard_error_over_users():
    from argus_platform.evaluation import RankingAccumulator

    rank = torch.tensor([0.0, 3.0, 12.0, 1.0, 40.0, 9.0], dtype=torch.float64)
    acc = RankingAccumulator([10], num_items=50)
    acc.add_ranks(rank[:4], torch.zeros(4, 10, dtype=torch.long))  # two batches, as in evaluation
    acc.add_ranks(rank[4:], torch.zeros(2, 10, dtype=torch.long))
    out = acc.reduce(collective=False)
    gain = np.where(rank.numpy() < 10, 1.0 / np.log2(rank.numpy() + 2.0), 0.0)
    hit = (rank.numpy() < 10).astype(float)
    assert math.isclose(out["ndcg@10"], gain.mean()) and math.isclose(out["hr@10"], hit.mean())
    assert math.isclose(out["ndcg@10_se"], gain.std() / math.sqrt(6))  # population std: the estimate's own
    assert math.isclose(out["hr@10_se"], hit.std() / math.sqrt(6))
    assert out["users"] == 6 and "ndcg@10^2" not in out
