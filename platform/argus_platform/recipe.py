"""`auto` values chosen from the data: the encoder's window, its length groups and whether the
full softmax leaves the history out, from the prepared training histories (`history_stats`), and
the next-item loss of a budgeted run from what the full softmax would cost on this hardware.

Every rank resolves them from the same summary.json, so they agree; the resolved config is what
the checkpoints carry. Each choice comes back with the reason printed at start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from argus_models.losses import chunked_full_softmax_loss
from argus_platform.config import LossConfig, TrainJobConfig, auto_loss, resolve_next_item_loss
from argus_platform.configlib import ConfigError
from argus_platform.data.history_stats import mean_windowed
from argus_platform.precision import slowest_rank

WINDOW_QUANTILE = "p95"  # model.max_seq_len=0: the window holds this share of the histories whole
MAX_AUTO_WINDOW = 200  # ... up to this many events (attention's cost grows with the window)
GROUPS_PADDING = 0.3  # model.length_groups=0: 4 groups once a batch would be this much padding
REPEAT_SHARE = 0.01  # loss.exclude_history=auto: on while under this share of events repeat an item
# model.embedding_dim=0 and model.dropout=auto: a log with fewer training events per item than
# SPARSE_EVENTS_PER_ITEM (the Amazon 5-core sets: 9-16) gets the narrower, more regularised model,
# one with more (MovieLens-1M: ~270) the wider one
SPARSE_EVENTS_PER_ITEM = 50
SPARSE_MODEL = {"embedding_dim": 64, "dropout": 0.3}
DENSE_MODEL = {"embedding_dim": 128, "dropout": 0.2}
# loss.next_item=auto with optim.time_budget_minutes: the full softmax while FULL_SOFTMAX_EPOCHS epochs
# of it (logits, softmax and both gradients, as measured here) take at most FULL_SOFTMAX_SHARE of the budget
FULL_SOFTMAX_EPOCHS = 10
FULL_SOFTMAX_SHARE = 0.5


SAMPLE_ROWS, SAMPLE_ITEMS = 512, 16_384  # the full softmax is timed on this much of a step


def full_softmax_pair_seconds(device: torch.device, precision: str, dim: int, num_items: int) -> float:
    """Measured seconds per (position, item) pair of the training full softmax (its logits, softmax
    and both gradients: `chunked_full_softmax_loss` forward and backward) on `device` in
    `precision`, timed on [512 positions x up to 16,384 items], the best of four; collective (the
    slowest rank's figure) when distributed, so every rank makes the same choice."""
    n, c = SAMPLE_ROWS, max(1, min(num_items, SAMPLE_ITEMS))
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(n, dim, generator=gen).to(device).requires_grad_()
    items = torch.randn(c, dim, generator=gen).to(device).requires_grad_()
    targets = torch.randint(1, c + 1, (n,), generator=gen).to(device)
    best = math.inf
    for _ in range(4):  # the first call warms the kernels and the allocator up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = chunked_full_softmax_loss(query, items, targets)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return slowest_rank(best / (n * c), device)


def choose_next_item_loss(
    loss: LossConfig,
    num_items: int,
    budget_minutes: float,
    positions_per_rank: float,
    pair_seconds: Callable[[], float],
) -> tuple[LossConfig, str]:
    """`resolve_next_item_loss`, with a time budget: the full softmax (exact, and the best at
    convergence on every catalogue measured) while FULL_SOFTMAX_EPOCHS epochs of it fit in
    FULL_SOFTMAX_SHARE of the budget, corrected logQ beyond; always the full softmax up to
    loss.full_softmax_max_items, where it won at every budget measured. `pair_seconds()`: its
    measured cost per (position, item) pair (`full_softmax_pair_seconds`), called only when the
    choice needs it (so every rank calls it, or none)."""
    if loss.next_item != "auto" or not budget_minutes or num_items <= loss.full_softmax_max_items:
        return resolve_next_item_loss(loss, num_items)  # a catalogue this small wins even in 3-minute runs
    pair_s = pair_seconds()
    epoch_s = positions_per_rank * num_items * pair_s
    full = FULL_SOFTMAX_EPOCHS * epoch_s <= FULL_SOFTMAX_SHARE * budget_minutes * 60
    why = (
        f"auto: over {num_items:,} items it would take ~{epoch_s:,.0f}s an epoch ({positions_per_rank:,.0f} "
        f"positions a worker, {pair_s * 1e9:.2f} ns a position-item measured here), {FULL_SOFTMAX_EPOCHS} "
        f"epochs {'within' if full else 'over'} {FULL_SOFTMAX_SHARE:.0%} of the {budget_minutes:g}-min budget"
    )
    return auto_loss(loss, full, why)


def resolve_data_choices(
    cfg: TrainJobConfig,
    histories: dict,
    choose_loss: Callable[[TrainJobConfig], tuple[LossConfig, str]] | None = None,
    num_items: int = 0,
) -> tuple[TrainJobConfig, list[str]]:
    """cfg with its data-driven `auto` values set, and one line per choice made: the width and the
    dropout (from the training events per item of a `num_items` catalogue), the window and its
    length groups, then the next-item loss (`choose_loss(cfg)` with those set, when given), then
    whether the full softmax leaves the history out."""
    said = []
    model = cfg.model
    auto = [k for k, v in (("embedding_dim", model.embedding_dim == 0), ("dropout", model.dropout == "auto")) if v]
    if auto:
        if num_items <= 0:
            raise ConfigError(f"model.{auto[0]} auto is chosen from the catalogue; no item count was given")
        per_item = histories["events"] / num_items
        sparse = per_item < SPARSE_EVENTS_PER_ITEM
        chosen = {k: (SPARSE_MODEL if sparse else DENSE_MODEL)[k] for k in auto}
        model = replace(model, **chosen)
        said.append(
            ", ".join(f"model.{k}={v}" for k, v in chosen.items())
            + f" (auto: {per_item:,.1f} training events per item, a {'sparse' if sparse else 'dense'} log; "
            f"below {SPARSE_EVENTS_PER_ITEM} {SPARSE_MODEL}, from {SPARSE_EVENTS_PER_ITEM} {DENSE_MODEL})"
        )
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
    cfg = replace(cfg, model=model)
    if choose_loss is not None:
        loss, why = choose_loss(cfg)
        said.append(f"next-item loss: {loss.next_item} ({why})")
        cfg = replace(cfg, loss=loss)
    loss = cfg.loss
    if loss.exclude_history == "auto":
        repeats = histories["repeat_share"]
        on = loss.next_item == "full_softmax" and repeats < REPEAT_SHARE
        loss = replace(loss, exclude_history=on)
        said.append(
            f"loss.exclude_history={str(on).lower()} (auto: {loss.next_item}, {repeats:.1%} of the "
            f"training events repeat an earlier item; on for the full softmax under {REPEAT_SHARE:.0%})"
        )
    return replace(cfg, loss=loss), said


def predicted_positions(histories: dict, window: int, ranks: int) -> float:
    """About the positions one rank predicts in an epoch: each training row's windowed events less one."""
    return histories["rows"] * max(mean_windowed(histories, window) - 1, 0.0) / max(ranks, 1)


def require_numbers(cfg: TrainJobConfig, job: str) -> None:
    """Jobs without prepared data (planning, step benchmarks) cannot resolve the data's `auto` values."""
    m = cfg.model
    unresolved = [
        k
        for k, auto in (
            ("model.max_seq_len", m.max_seq_len == 0),
            ("model.length_groups", m.length_groups == 0),
            ("model.embedding_dim", m.embedding_dim == 0),
            ("model.dropout", m.dropout == "auto"),
        )
        if auto
    ]
    if unresolved:
        raise ConfigError(
            f"{job}: {', '.join(unresolved)} (auto) is chosen from the prepared training data by "
            f"jobs/train_argus.py; give a number here (e.g. --set model.max_seq_len=200)"
        )
