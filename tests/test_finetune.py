"""Fine-tuning on impressions: the synthetic slates, request tables, the pairwise loss against a
direct formula, and both modes end to end through Ray Train from a real pre-trained run."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from argus_models.finetune import pairwise_correct, pairwise_loss
from argus_platform.data.config import SyntheticConfig
from argus_platform.data.synthetic import generate


def test_synthetic_impressions_are_slates_around_each_event(tmp_path):
    events = pq.read_table(
        generate(SyntheticConfig(num_users=40, num_items=80, impressions_per_event=6), tmp_path)
    ).to_pandas()
    imp = pq.read_table(tmp_path / "impressions.parquet").to_pandas()
    slates = imp.groupby(["user_id", "timestamp"])
    assert slates.ngroups == len(events)
    assert (slates["clicked"].sum() == 1).all() and (slates.size() <= 6).all() and (slates.size() >= 2).all()
    assert (slates["item_id"].nunique() == slates.size()).all()  # no item twice in a slate
    clicked = imp[imp.clicked == 1].merge(events, on=["user_id", "timestamp"], suffixes=("", "_event"))
    assert (clicked.item_id == clicked.item_id_event).all() and (clicked.like == clicked.like_event).all()
    assert (imp[imp.clicked == 0][["like", "skip", "dislike", "played_ratio"]] == 0).all().all()
    again = pq.read_table(
        generate(SyntheticConfig(num_users=40, num_items=80, impressions_per_event=0), tmp_path / "b")
    ).to_pandas()
    assert again.equals(events)  # impressions come from their own random stream


def test_pairwise_loss_matches_direct_formula():
    scores = torch.tensor([[2.0, 0.5, -1.0, 3.0], [0.1, 0.2, 0.0, 0.0]])
    clicked = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    loss, n = pairwise_loss(scores, clicked, valid)
    pairs = [(2.0, 0.5), (2.0, -1.0), (0.2, 0.1), (0.2, 0.0), (0.2, 0.0)]
    expected = sum(math.log1p(math.exp(-(p - q))) for p, q in pairs) / len(pairs)
    assert int(n) == 5 and math.isclose(float(loss), expected, rel_tol=1e-6)
    assert pairwise_correct(scores, clicked, valid) == (5.0, 5)


@pytest.fixture(scope="module")
def pretrained(hashed_run):
    """Three-token, multi-hash: fine-tuning carries the hash tables and the bucket map."""
    return hashed_run


def _finetune(args):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("finetune_argus", ROOT / "jobs" / "finetune_argus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


def test_requests_hold_out_the_last_two_events(pretrained, tmp_path):
    from argus_platform.data.prepare import load_prepared
    from argus_platform.finetune.requests import REQ_POS, build_requests, default_impressions

    summary = build_requests(load_prepared(pretrained), pretrained, default_impressions(pretrained), 8, tmp_path)
    assert summary["requests"]["train"] > 0 and summary["requests"]["validation"] > 0
    test = pq.read_table(summary["paths"]["test"]).to_pandas()
    train = pq.read_table(summary["paths"]["train"]).to_pandas()
    assert all(p[-1] == len(items) - 1 for p, items in zip(test[REQ_POS], test["item_id"]))
    assert all(max(p) < len(items) for p, items in zip(train[REQ_POS], train["item_id"]))
    users = dict(zip(test["user_idx"], test["item_id"]))
    assert all(len(items) == len(users[u]) - 2 for u, items in zip(train["user_idx"], train["item_id"]))


# pairwise shares every step but the loss with ranker (its formula has its own test above): CI runs ranker
@pytest.mark.parametrize("mode", [pytest.param("pairwise", marks=pytest.mark.slow), "ranker"])
def test_finetune_end_to_end(pretrained, tmp_path, mode):
    out = tmp_path / mode
    rc = _finetune(
        [
            f"--set=pretrained={pretrained}",
            f"--set=mode={mode}",
            "--set=epochs=2",
            "--set=batch_size=16",
            "--set=dense_lr=0.003",
            "--set=sparse_lr=0.05",
            f"--set=run_dir={out}",
            "--set=scaling.local_num_cpus=4",
        ]
    )
    assert rc == 0
    final = json.loads((out / "metrics.json").read_text())
    key = "pairwise_accuracy" if mode == "pairwise" else "mean_auc"
    before, after = final["before"]["validation"][key], final["after"]["validation"][key]
    assert 0 <= before <= 1 and 0 <= after <= 1
    if mode == "ranker":
        # The pre-trained heads predict feedback given a play; on impressions (most not played) they are
        # badly calibrated, which fine-tuning on impression labels repairs.
        ne_before, ne_after = final["before"]["validation"]["like/ne"], final["after"]["validation"]["like/ne"]
        assert ne_after < ne_before, final
    if mode == "pairwise":
        assert after > before, (
            final
        )  # the pre-trained model ranks by popularity-corrected choice; slates reward the choice
    # the fine-tuned checkpoint loads like a pre-trained one
    from argus_models.checkpoint import load_inference_model
    from argus_models.rundir import resolve_checkpoint

    model = load_inference_model(resolve_checkpoint(str(out)))
    assert model.config.tokenization == "three_token" and np.isfinite(model.tables["t_item"].numpy()).all()
    base = load_inference_model(resolve_checkpoint(str(pretrained)))
    assert model.schema.item_hash_buckets == base.schema.item_hash_buckets == [13, 13]
    assert torch.equal(model.dense.item_hash_codes, base.dense.item_hash_codes)
    assert not torch.equal(model.tables["t_item_h0"], base.tables["t_item_h0"])  # the hash rows were fine-tuned


def test_one_pass_per_user_equals_one_pass_per_request():
    """The ranker scores all requests of a row in one pass; each request's logits equal those of
    the request alone (its own window cut at the request, candidates after it)."""
    from argus_models.config import ActionHead, ModelConfig, ModelSchema
    from argus_models.finetune import SlateBatch, SlateObjective
    from argus_models.model import NEG_ITEM, ArgusDenseArch

    torch.manual_seed(0)
    schema = ModelSchema(num_items=30, contexts={"source": 4}, actions=[ActionHead("like", "binary", 2)])
    dense = ArgusDenseArch(
        ModelConfig(
            embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.0, tokenization="three_token"
        ),
        schema,
    ).eval()
    emb = {k: torch.randn(2, 6, 16) for k in ("item", "ctx_source", "fb_like")}
    lengths = torch.tensor([6, 4])
    req_row, req_pos = torch.tensor([0, 0, 1]), torch.tensor([2, 5, 3])
    slate_vec = torch.randn(3, 4, 16)
    batch = SlateBatch(
        None,
        torch.zeros(2, 6),
        lengths,
        req_row,
        req_pos,
        torch.ones(3, 4, dtype=torch.long),
        torch.zeros(3, 4),
        torch.zeros(3, 4, 1),
    )
    together = SlateObjective(dense, "ranker").slate_outputs({**emb, NEG_ITEM: slate_vec.reshape(12, 16)}, batch)
    for r in range(3):
        b, p = int(req_row[r]), int(req_pos[r])
        alone = dense.candidate_logits(
            slate_vec[r : r + 1], emb={k: v[b : b + 1, : p + 1] for k, v in emb.items()}, lengths=torch.tensor([p + 1])
        )
        assert torch.allclose(together[r], alone[0], atol=1e-5), r
