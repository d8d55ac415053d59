"""RecJPQ item codes: the code assignment (SVD + quantile bins), item rows as the concatenation of
sub-item rows on both lookup paths, the collator's code features, the configuration's checks, and
the planner on a catalogue whose full item table does not fit one GPU."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from argus_models.config import ModelConfig, ModelSchema, recjpq_shape
from argus_models.contract import ITEM_COL
from argus_models.model import (
    ITEM,
    NEG_ITEM,
    ArgusDenseArch,
    ArgusSparseArch,
    code_feature,
    embedding_configs,
    lookup_local,
    table_name,
)
from argus_models.recjpq import assign_codes, distinct_items, interaction_matrix, item_factors, quantile_codes
from argus_models.sizing import embedding_parameter_count
from argus_platform.collate import Collator
from argus_platform.config import TrainJobConfig
from argus_platform.plan_argus import Cluster, plan_cluster, planning_schema


def _two_communities(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Users 0..99 see only items 1..40, users 100..199 only items 41..80."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(200), 12)
    items = np.where(users < 100, rng.integers(1, 41, users.size), rng.integers(41, 81, users.size))
    return users, items


def test_codes_are_deterministic_whatever_the_event_order():
    users, items = _two_communities()
    codes = assign_codes(users, items, 200, 80, splits=4, sub_items=8)
    order = np.random.default_rng(5).permutation(len(users))
    again = assign_codes(users[order], items[order], 200, 80, splits=4, sub_items=8)
    assert np.array_equal(codes, again)
    assert codes.shape == (81, 4) and codes.dtype == np.int64
    assert (codes[0] == 0).all() and codes[1:].min() == 1 and codes[1:].max() == 8
    for j in range(4):  # equal-count quantile bins: 80 items in 8 bins of 10
        assert np.bincount(codes[1:, j], minlength=9)[1:].tolist() == [10] * 8


def test_codes_follow_the_interactions():
    """Some split's coordinate separates the two communities, so their items take disjoint codes there."""
    users, items = _two_communities()
    codes = assign_codes(users, items, 200, 80, splits=4, sub_items=8)
    a, b = codes[1:41], codes[41:81]
    assert any(set(a[:, j]).isdisjoint(b[:, j]) for j in range(4)), codes


def test_the_randomised_svd_matches_the_exact_one():
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 300, 6000), rng.integers(1, 201, 6000)
    items[users < 150] = rng.integers(1, 60, int((users < 150).sum()))  # a strong first direction
    matrix = interaction_matrix(users, items, 300, 200)
    got = item_factors(matrix, 3)  # randomised (300 x 201 > rank + oversampling)
    _, s, vt = np.linalg.svd(matrix.to_dense().numpy(), full_matrices=False)
    want = (vt[:3] * s[:3, None]).T
    # a randomised SVD with 4 power iterations: the leading direction to 1e-3 (signs are fixed separately)
    np.testing.assert_allclose(np.abs(got[:, 0]), np.abs(want[:, 0]), rtol=1e-3, atol=1e-6)
    assert got[np.abs(got[:, 0]).argmax(), 0] > 0


def test_quantile_codes_break_ties_by_item():
    factors = np.zeros((6, 1))
    codes = quantile_codes(factors, 3)
    assert codes[:, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert distinct_items(np.vstack([[0], codes])) == 3  # items sharing a code tuple share a row


def _model(seed: int = 0) -> tuple[ArgusDenseArch, ModelSchema, dict[str, torch.Tensor], np.ndarray]:
    schema = ModelSchema(num_items=30, contexts={"source": 4}, recjpq_splits=4, recjpq_sub_items=5)
    dense = ArgusDenseArch(ModelConfig(embedding_dim=16, max_seq_len=6, dropout=0.0), schema).eval()
    users, items = np.repeat(np.arange(40), 5), np.random.default_rng(seed).integers(1, 31, 200)
    codes = assign_codes(users, items, 40, 30, 4, 5)
    dense.set_recjpq_codes(torch.from_numpy(codes))
    g = torch.Generator().manual_seed(seed)
    configs = embedding_configs(schema, 16)
    tables = {t.name: torch.randn(t.num_embeddings, t.embedding_dim, generator=g) for t in configs}
    return dense, schema, tables, codes


def test_an_item_row_is_the_concatenation_of_its_sub_item_rows():
    dense, schema, tables, codes = _model()
    assert table_name(ITEM) not in tables and {t.embedding_dim for t in embedding_configs(schema, 16)} == {4, 16}
    full = dense.local_tables(tables)[table_name(ITEM)]
    assert full.shape == (31, 16)
    for item in (0, 1, 17, 30):
        want = torch.cat([tables[table_name(code_feature(m))][codes[item, m]] for m in range(4)])
        assert torch.equal(full[item], want)
    assert dense.local_tables(dense.local_tables(tables)) is not None  # idempotent


def test_the_sparse_arch_and_the_local_lookup_give_the_same_rows():
    """Training's path (two EmbeddingCollections, one per width; the KJT's code features) and the
    evaluation / serving path (the reconstructed item table, looked up by id) agree."""
    dense, schema, tables, codes = _model(1)
    sparse = ArgusSparseArch(schema, 16, device="cpu")
    assert set(dict(sparse.named_children())) == {"ec", "ec_codes"}
    with torch.no_grad():
        for name, module in sparse.named_modules():
            if hasattr(module, "embeddings"):
                for t, emb in module.embeddings.items():
                    emb.weight.copy_(tables[t])
    rng = np.random.default_rng(0)
    lengths = [5, 3, 6]
    table = pa.table(
        {
            ITEM_COL: [rng.integers(1, 31, n).tolist() for n in lengths],
            "ctx_source": [rng.integers(1, 4, n).tolist() for n in lengths],
        }
    )
    collator = Collator(schema, {}, window=7, negatives="uniform", num_uniform=9, item_parts=codes)
    batch = collator(table)
    assert code_feature(3) in batch.sparse_features.keys()
    got = sparse(batch.sparse_features)
    want = lookup_local(dense.local_tables(tables), batch.sparse_features)
    for key in (ITEM, NEG_ITEM, "ctx_source"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert got[NEG_ITEM].shape == (9, 16)


def test_the_collator_needs_the_codes():
    schema = ModelSchema(num_items=30, recjpq_splits=4, recjpq_sub_items=5)
    with pytest.raises(ValueError, match=r"4 RecJPQ sub-item tables: the collator needs item_parts of shape \(31, 4\)"):
        Collator(schema, {}, window=7)


def test_the_configuration_is_checked():
    assert recjpq_shape(ModelConfig(), 1000) == (0, 0)
    assert recjpq_shape(ModelConfig(item_codes="recjpq"), 10_000) == (16, 1024)
    assert recjpq_shape(ModelConfig(item_codes="recjpq"), 100) == (16, 100)  # no more rows than items
    with pytest.raises(ValueError, match="multiple of model.recjpq_splits"):
        recjpq_shape(ModelConfig(item_codes="recjpq", embedding_dim=60), 1000)
    with pytest.raises(ValueError, match="pick one"):
        recjpq_shape(ModelConfig(item_codes="recjpq", multi_hash_buckets=100), 1000)
    dense, *_ = _model()
    with pytest.raises(ValueError, match="outside 0..5"):
        dense.set_recjpq_codes(torch.full((31, 4), 6))


def test_a_10m_item_catalogue_plans_on_one_gpu_only_with_recjpq():
    cluster = Cluster(world_size=1, gpus_per_node=1, gpu_memory_gb=8, host_memory_gb=8)
    plans = {}
    for codes in ("ids", "recjpq"):
        cfg = TrainJobConfig()
        cfg.model.embedding_dim, cfg.model.item_codes = 256, codes
        plans[codes] = plan_cluster(cfg, planning_schema(cfg, 10_000_000), cluster)
    assert not plans["ids"].fits and any("insufficient storage" in r for r in plans["ids"].reasons)
    jpq = plans["recjpq"]
    assert jpq.fits, jpq.reasons
    assert jpq.schema.recjpq_splits == 16 and jpq.schema.recjpq_sub_items == 1024
    tables = jpq.plan.plan["sparse.ec_codes"]
    assert sorted(tables) == sorted(f"t_item_q{m}" for m in range(16))
    sizes = embedding_parameter_count(jpq.schema, 256)
    assert sizes["item_q0"] == 1025 * 16 and "item" not in sizes
    assert plans["ids"].embedding_params["item"] / sum(sizes[f"item_q{m}"] for m in range(16)) > 1_000
    assert jpq.memory.dense_weights >= 10_000_001 * 16 * 8  # the item → code map is on the GPU too
