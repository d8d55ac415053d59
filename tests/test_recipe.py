"""The data-driven `auto` choices: the training histories' statistics and what they resolve to."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config
from argus_platform.data.history_stats import history_stats, mean_windowed
from argus_platform.recipe import require_numbers, resolve_data_choices


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
    with pytest.raises(ConfigError, match=r"jobs/plan_argus.py: model.max_seq_len = 0 \(auto\)"):
        require_numbers(_cfg("model.max_seq_len=0"), "jobs/plan_argus.py")
    require_numbers(_cfg(), "jobs/plan_argus.py")
