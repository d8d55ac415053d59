"""The ablation job on the tiny synthetic log: one real training run per variant, a table, resume."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY_TRAIN

from argus_platform.ablate_argus import AblationConfig, ablate, variant_overrides
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError


def test_unknown_variant_is_named():
    with pytest.raises(ConfigError, match="unknown ablation variant 'softmax'"):
        variant_overrides("softmax", TrainJobConfig())


def test_in_batch_variant_keeps_the_number_of_negatives():
    cfg = TrainJobConfig()
    assert "loss.in_batch_negatives=256" in variant_overrides("corrected_logq_in_batch", cfg)


def test_multi_hash_variant_takes_the_base_tables_or_the_default():
    cfg = TrainJobConfig()
    assert "model.multi_hash_buckets=4096" in variant_overrides("full_softmax_multi_hash", cfg)
    cfg.model.multi_hash_buckets = 500
    assert "model.multi_hash_buckets=500" in variant_overrides("full_softmax_multi_hash", cfg)
    assert "model.multi_hash_buckets=0" in variant_overrides("full_softmax_ids_only", cfg)


@pytest.mark.slow  # two Ray Train runs of the tiny log, ~60 s on 2 cores; the variants' overrides are tested above
def test_two_variants_train_and_tabulate(ray_local, tmp_path):
    cfg = AblationConfig(
        train_overrides=[*TINY_TRAIN, "optim.epochs=1"],
        variants=["full_softmax_multi_hash", "corrected_logq_mixed_three_token"],
        out_dir=str(tmp_path / "abl"),
    )
    rows = ablate(cfg)
    assert [r["variant"] for r in rows] == ["full_softmax_multi_hash", "corrected_logq_mixed_three_token"]
    for r in rows:  # each row is its own run's test result
        run = json.loads((tmp_path / "abl" / r["variant"] / "metrics.json").read_text())
        assert r["ndcg@10"] == run["test"]["ndcg@10"] and r["hr@10"] == run["test"]["hr@10"] and r["epochs"] == 1
    assert rows[0]["ndcg@10"] != rows[1]["ndcg@10"]  # two different models
    config = yaml.safe_load((tmp_path / "abl" / "corrected_logq_mixed_three_token" / "config.yaml").read_text())
    assert config["model"]["tokenization"] == "three_token" and config["loss"]["next_item"] == "corrected_logq"
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| full_softmax_multi_hash |" in table and "| corrected_logq_mixed_three_token |" in table
    hashed = tmp_path / "abl" / "full_softmax_multi_hash"
    assert yaml.safe_load((hashed / "config.yaml").read_text())["model"]["multi_hash_buckets"] == 4096
    assert json.loads((hashed / "schema.json").read_text())["item_hash_buckets"] == [4096, 4096]
    again = ablate(cfg)  # both variants have metrics.json: nothing is retrained
    assert [r["ndcg@10"] for r in again] == [r["ndcg@10"] for r in rows]
