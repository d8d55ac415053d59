"""The data-driven `auto` choices: the training histories' statistics and what they resolve to."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config
from argus_platform.data.history_stats import history_stats, mean_windowed
from argus_platform.recipe import (
    DENSE_MODEL,
    SPARSE_MODEL,
    choose_next_item_loss,
    full_softmax_pair_seconds,
    predicted_positions,
    require_numbers,
    resolve_data_choices,
)


def _write(path, rows):
    pq.write_table(pa.table({"user_idx": np.arange(len(rows)), "item_id": pa.array(rows, pa.list_(pa.int32()))}), path)


def test_history_stats_count_lengths_and_repeats_across_files(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    _write(split / "part-0.parquet", [[1, 2, 3], [4, 4, 5, 4]])  # two repeats of item 4
    _write(split / "part-1.parquet", [[7], [2, 2]])  # one repeat; item 2 of another user is not one
    stats = history_stats(split)
    assert stats["rows"] == 4 and stats["events"] == 10 and stats["max"] == 4
    assert stats["repeat_share"] == pytest.approx(3 / 10)
    assert stats["p50"] == 3 and stats["p99"] == 4 and len(stats["percentiles"]) == 101
    assert stats["percentiles"][0] == 1 and stats["percentiles"][-1] == 4
    assert mean_windowed(stats, 100) == pytest.approx(np.mean([1, 2, 3, 4]), abs=0.3)
    assert mean_windowed(stats, 2) == pytest.approx(1.75, abs=0.3)  # min(length, 2): 1, 2, 2, 2


def _stats(lengths, repeat_share=0.0):
    lengths = np.asarray(lengths)
    pct = np.percentile(lengths, np.arange(101), method="higher").astype(int).tolist()
    return {"p95": pct[95], "percentiles": pct, "repeat_share": repeat_share}


def _cfg(*overrides):
    return load_config(TrainJobConfig, overrides=list(overrides))


def test_auto_window_groups_and_history_exclusion():
    cfg, said = resolve_data_choices(
        _cfg(
            "model.max_seq_len=0", "model.length_groups=0", "loss.next_item=full_softmax", "loss.exclude_history=auto"
        ),
        _stats(np.arange(2, 101)),
    )
    assert cfg.model.max_seq_len == 96  # p95 = 96 events = 95 predictions, rounded up to a multiple of 8
    assert cfg.model.length_groups == 4  # lengths spread evenly up to the window: ~half of a batch padding
    assert cfg.loss.exclude_history is True and len(said) == 3 and "p95 of the training histories is 96" in said[0]
    cfg, _ = resolve_data_choices(_cfg("model.max_seq_len=0", "model.length_groups=0"), _stats([5000] * 10 + [3000]))
    assert cfg.model.max_seq_len == 200 and cfg.model.length_groups == 1  # capped; every row fills the window
    cfg, _ = resolve_data_choices(_cfg("model.max_seq_len=0"), _stats([2, 3]))
    assert cfg.model.max_seq_len == 8
    # repeats, or a sampled loss: the history stays in
    assert (
        resolve_data_choices(_cfg("loss.next_item=full_softmax", "loss.exclude_history=auto"), _stats([5], 0.2))[
            0
        ].loss.exclude_history
        is False
    )
    assert (
        resolve_data_choices(_cfg("loss.next_item=corrected_logq", "loss.exclude_history=auto"), _stats([5]))[
            0
        ].loss.exclude_history
        is False
    )
    # numbers given: nothing chosen
    fixed = _cfg("model.max_seq_len=30", "model.length_groups=2")
    assert resolve_data_choices(fixed, _stats([5])) == (fixed, [])


def test_jobs_without_data_ask_for_numbers():
    with pytest.raises(ConfigError, match=r"jobs/plan_argus.py: model.max_seq_len \(auto\)"):
        require_numbers(_cfg("model.max_seq_len=0"), "jobs/plan_argus.py")
    with pytest.raises(ConfigError, match=r"model.embedding_dim, model.dropout \(auto\)"):
        require_numbers(_cfg("model.embedding_dim=0", "model.dropout=auto"), "jobs/plan_argus.py")
    require_numbers(_cfg(), "jobs/plan_argus.py")


def test_budgeted_auto_loss_weighs_the_full_softmax_against_the_budget():
    loss = _cfg("loss.next_item=auto").loss
    # 1M positions a worker x 37,060 items at 0.2 ns a pair: ~7.4 s an epoch, 10 epochs ~1.2 min
    chosen, why = choose_next_item_loss(loss, 37_060, 60, 1e6, lambda: 2e-10)
    assert chosen.next_item == "full_softmax" and "within 50% of the 60-min budget" in why and "~7s an epoch" in why
    # the same catalogue in a 2-minute budget, or a 10x catalogue in the hour at 2 ns: sampled
    assert choose_next_item_loss(loss, 37_060, 2, 1e6, lambda: 2e-10)[0].next_item == "corrected_logq"

    # up to loss.full_softmax_max_items the full softmax, whatever the timing
    def untimed():
        raise AssertionError("the full softmax was timed where the choice does not need it")

    assert choose_next_item_loss(loss, loss.full_softmax_max_items, 1, 1e9, untimed)[0].next_item == "full_softmax"
    chosen, why = choose_next_item_loss(loss, 370_600, 60, 1e6, lambda: 2e-9)
    assert chosen.next_item == "corrected_logq" and "over 50%" in why
    # a faster device moves the crossing up
    assert choose_next_item_loss(loss, 370_600, 60, 1e6, lambda: 2e-12)[0].next_item == "full_softmax"
    # no budget: the catalogue-size threshold; a loss set by hand stays
    limit = loss.full_softmax_max_items
    assert choose_next_item_loss(loss, limit + 1, 0, 1e6, untimed)[0].next_item == "corrected_logq"
    assert choose_next_item_loss(_cfg("loss.next_item=logq").loss, 10, 60, 1.0, untimed)[0].next_item == "logq"
    with pytest.raises(ConfigError, match="loss.exclude_history needs the full softmax"):
        choose_next_item_loss(_cfg("loss.exclude_history=true").loss, 370_600, 60, 1e6, lambda: 2e-9)


def test_the_loss_is_chosen_with_the_window_and_before_the_history_exclusion():
    seen = []

    def choose(cfg):
        seen.append(cfg.model.max_seq_len)
        return replace(cfg.loss, next_item="full_softmax"), "why"

    cfg, said = resolve_data_choices(
        _cfg("model.max_seq_len=0", "loss.next_item=auto", "loss.exclude_history=auto"), _stats([10] * 20), choose
    )
    assert seen == [16] and cfg.loss.next_item == "full_softmax" and cfg.loss.exclude_history is True
    assert said[-2] == "next-item loss: full_softmax (why)" and said[-1].startswith("loss.exclude_history=true")


def test_the_full_softmax_is_timed_per_position_item_pair():
    small = full_softmax_pair_seconds(torch.device("cpu"), "fp32", 16, 1_000)
    assert 1e-13 < small < 1e-6  # a [512 x 1,000] sample, forward and backward
    positions = predicted_positions({**_stats([11] * 10), "rows": 10}, 11, 2)
    assert positions == pytest.approx(10 * 10 / 2)  # 10 rows of 11 events: 10 predictions each, over 2 ranks


def test_width_and_dropout_come_from_the_events_per_item():
    auto = _cfg("model.embedding_dim=0", "model.dropout=auto")
    sparse_log = {**_stats([10] * 20), "events": 200}  # 200 events over 40 items: 5 per item
    cfg, said = resolve_data_choices(auto, sparse_log, num_items=40)
    assert (cfg.model.embedding_dim, cfg.model.dropout) == (SPARSE_MODEL["embedding_dim"], SPARSE_MODEL["dropout"])
    assert "5.0 training events per item" in said[0] and "sparse" in said[0]
    cfg, _ = resolve_data_choices(auto, sparse_log, num_items=2)  # 100 per item
    assert (cfg.model.embedding_dim, cfg.model.dropout) == (DENSE_MODEL["embedding_dim"], DENSE_MODEL["dropout"])
    # only what is auto is chosen
    cfg, _ = resolve_data_choices(_cfg("model.embedding_dim=96", "model.dropout=auto"), sparse_log, num_items=40)
    assert (cfg.model.embedding_dim, cfg.model.dropout) == (96, SPARSE_MODEL["dropout"])
    with pytest.raises(ConfigError, match="no item count"):
        resolve_data_choices(auto, sparse_log)
    with pytest.raises(ConfigError, match="model.dropout"):
        _cfg("model.dropout=sometimes")
