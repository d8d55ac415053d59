"""`auto` values chosen from the data: the encoder's window, its length groups and whether the
full softmax leaves the history out, from the prepared training histories (`history_stats`).

Every rank resolves them from the same summary.json, so they agree; the resolved config is what
the checkpoints carry. Each choice comes back with the reason printed at start.
"""

from __future__ import annotations

import math
from dataclasses import replace

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError
from argus_platform.data.history_stats import mean_windowed

WINDOW_QUANTILE = "p95"  # model.max_seq_len=0: the window holds this share of the histories whole
MAX_AUTO_WINDOW = 200  # ... up to this many events (attention's cost grows with the window)
GROUPS_PADDING = 0.3  # model.length_groups=0: 4 groups once a batch would be this much padding
REPEAT_SHARE = 0.01  # loss.exclude_history=auto: on while under this share of events repeat an item


def resolve_data_choices(cfg: TrainJobConfig, histories: dict) -> tuple[TrainJobConfig, list[str]]:
    """cfg with its data-driven `auto` values set, and one line per choice made."""
    said = []
    model, loss = cfg.model, cfg.loss
    if model.max_seq_len == 0:
        want = histories[WINDOW_QUANTILE] - 1  # a history of n events is n - 1 predictions: window n
        window = int(min(MAX_AUTO_WINDOW, max(8, math.ceil(want / 8) * 8)))
        model = replace(model, max_seq_len=window)
        said.append(
            f"model.max_seq_len={window} (auto: {WINDOW_QUANTILE} of the training histories is "
            f"{histories[WINDOW_QUANTILE]} events, rounded up to a multiple of 8, at most {MAX_AUTO_WINDOW})"
        )
    if model.length_groups == 0:
        width = model.max_seq_len + 1
        padding = 1 - mean_windowed(histories, width) / width
        groups = 4 if padding >= GROUPS_PADDING else 1
        model = replace(model, length_groups=groups)
        said.append(
            f"model.length_groups={groups} (auto: rows padded to {width} events would be {padding:.0%} "
            f"padding; 4 groups from {GROUPS_PADDING:.0%})"
        )
    if loss.exclude_history == "auto":
        repeats = histories["repeat_share"]
        on = loss.next_item == "full_softmax" and repeats < REPEAT_SHARE
        loss = replace(loss, exclude_history=on)
        said.append(
            f"loss.exclude_history={str(on).lower()} (auto: {loss.next_item}, {repeats:.1%} of the "
            f"training events repeat an earlier item; on for the full softmax under {REPEAT_SHARE:.0%})"
        )
    return replace(cfg, model=model, loss=loss), said


def require_numbers(cfg: TrainJobConfig, job: str) -> None:
    """Jobs without prepared data (planning, step benchmarks) cannot resolve the data's `auto` values."""
    unresolved = [
        k
        for k, v in (("model.max_seq_len", cfg.model.max_seq_len), ("model.length_groups", cfg.model.length_groups))
        if v == 0
    ]
    if unresolved:
        raise ConfigError(
            f"{job}: {', '.join(unresolved)} = 0 (auto) is chosen from the prepared training data by "
            f"jobs/train_argus.py; give a number here (e.g. --set model.max_seq_len=200)"
        )
