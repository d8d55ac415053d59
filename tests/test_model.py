"""Attention masks drawn as matrices, model shapes, local lookups vs the TorchRec module."""

import torch

from argus_models.config import ActionHead, ModelConfig, ModelSchema
from argus_models.encoder import causal_padding_mask
from argus_models.model import ArgusDenseArch, ArgusSparseArch, lookup_local

SCHEMA = ModelSchema(num_items=30, contexts={"source": 4}, actions=[ActionHead("like", "binary", 2), ActionHead("rating", "graded", 5)])


def test_causal_padding_mask_picture():
    mask = causal_padding_mask(torch.tensor([3]), 5)[0, 0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],  # padded query rows: valid prefix only (never an empty row; output ignored)
        [1, 1, 1, 0, 0],
    ])
    assert torch.equal(mask, expected)


def _features(sparse_keys, lengths, num_items=30):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    values, all_lengths = [], []
    sizes = {"item": num_items + 1, "neg_item": num_items + 1, "ctx_source": 4, "fb_like": 2, "fb_rating": 5}
    for key in sparse_keys:
        n = int(lengths.sum()) if key != "neg_item" else 3
        values.append(torch.randint(1 if key in ("item", "neg_item") else 0, sizes[key], (n,), generator=g))
        all_lengths.append(lengths if key != "neg_item" else torch.tensor([3] + [0] * (len(lengths) - 1)))
    return KeyedJaggedTensor.from_lengths_sync(keys=sparse_keys, values=torch.cat(values), lengths=torch.cat(all_lengths).int())


def test_local_lookup_equals_embedding_collection():
    sparse = ArgusSparseArch(SCHEMA, 8, device="cpu")
    keys = ["item", "ctx_source", "fb_like", "fb_rating", "neg_item"]
    kjt = _features(keys, torch.tensor([3, 1]))
    via_ec = sparse(kjt)
    tables = {name: w for name, w in ((k.split(".")[-2], v) for k, v in sparse.state_dict().items())}
    via_local = lookup_local(tables, kjt)
    for key in keys:
        assert torch.allclose(via_ec[key], via_local[key]), key
    assert via_ec["item"].shape == (2, 3, 8) and via_ec["neg_item"].shape == (3, 8)


def test_dense_arch_shapes_and_named_heads():
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=6, dropout=0.0)
    dense = ArgusDenseArch(cfg, SCHEMA)
    emb = {k: torch.randn(2, 4, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    out = dense(emb, torch.tensor([4, 2]))
    assert out["query"].shape == (2, 3, 8) and out["feedback"].shape == (2, 3, 1 + 5)
    heads = dense.action_logits(out["feedback"])
    assert heads["like"].shape == (2, 3) and heads["rating"].shape == (2, 3, 5)


def test_causality_future_events_do_not_change_past_states():
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=2, max_seq_len=6, dropout=0.0)
    dense = ArgusDenseArch(cfg, SCHEMA).eval()
    emb = {k: torch.randn(1, 5, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    a = dense(emb, torch.tensor([5]))["state"]
    emb2 = {k: v.clone() for k, v in emb.items()}
    emb2["item"][:, 3] += 1.0  # change event 3 (an input at position 3)
    b = dense(emb2, torch.tensor([5]))["state"]
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3])


def test_loading_a_non_checkpoint_names_what_is_missing(tmp_path):
    import pytest

    from argus_models.checkpoint import load_inference_model

    with pytest.raises(FileNotFoundError, match=r"\.metadata missing"):
        load_inference_model(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        load_inference_model(tmp_path)
