"""The data section of every job's config: where the event log is, how it is read and split,
the synthetic generator and the item-side features (next to the code that reads them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from argus_platform.configlib import ConfigError
from argus_platform.configlib import documented as _help
from argus_platform.data.spec import DatasetSpec


@dataclass
class SyntheticConfig:
    """The embedded synthetic multi-action log."""

    num_users: int = _help("users in the generated log", 1500)
    num_items: int = _help("catalogue size", 1000)
    events_per_user: int = _help("mean events per user (Poisson, at least min_events)", 40)
    min_events: int = _help("minimum events per user", 8)
    latent_dim: int = _help("dimension of the true user/item factors", 8)
    zipf_exponent: float = _help("item popularity exponent", 0.8)
    interest_drift: float = _help("per-event random-walk step of user interests", 0.15)
    affinity_temperature: float = _help("sharpness of choice given affinity (higher = more predictable)", 4.0)
    clickbait_share: float = _help(
        "share of items that are clickbait: chosen more often than their affinity earns, then skipped and disliked "
        "more (not liked less): actions that differ in value, so the ranking weights matter; 0 = none",
        0.1,
    )
    seed: int = _help("generator seed (the log is a pure function of the config)", 7)
    chunk_users: int = _help("users generated per Parquet row group (bounds memory)", 20000)
    impressions_per_event: int = _help(
        "shown items logged per event in impressions.parquet: the chosen one plus others shown beside it (0 = none)", 8
    )

    def validate(self) -> None:
        if not 0.0 <= self.clickbait_share < 1.0:
            raise ConfigError(f"data.synthetic.clickbait_share must be in [0, 1), got {self.clickbait_share}")


@dataclass
class ItemFeaturesConfig:
    """Where the item metadata is and which columns become item-tower features."""

    path: str = _help("item metadata file, one row per item (empty = no item-side features)", "")
    format: Literal["movielens", "table"] = _help(
        "movielens (movies.dat: genre, year) | table (Parquet/CSV with item_column and columns)", "table"
    )
    item_column: str = _help("table: the column holding the raw item id (as in the event log)", "item_id")
    columns: list[str] = _help("table: categorical feature columns", factory=list)
    separator: str = _help("a cell holding several values joins them with this (e.g. genres)", "|")
    max_values: int = _help("values kept per item and feature (slots in the item tower); the rest are counted", 8)

    def validate(self) -> None:
        if self.path and self.format == "table" and not self.columns:
            raise ConfigError("data.item_features.columns must name at least one column for format=table")
        if self.max_values < 1:
            raise ConfigError(f"data.item_features.max_values must be at least 1, got {self.max_values}")


@dataclass
class DataConfig:
    source: Literal["synthetic", "sasrec", "movielens", "kuairand", "yambda", "events"] = _help(
        "synthetic | sasrec (`user item` lines) | movielens (ratings.dat / u.data) | kuairand | yambda (flat "
        "multi_event Parquet) | events (Parquet/CSV + spec)",
        "synthetic",
    )
    path: str = _help("input file for non-synthetic sources", "")
    spec: DatasetSpec = _help("column names and action kinds of the event log", factory=DatasetSpec)
    synthetic: SyntheticConfig = _help("synthetic generator settings", factory=SyntheticConfig)
    split: Literal["leave_last_out", "temporal", "temporal_windows"] = _help(
        "evaluation split protocol: leave_last_out | temporal (global cuts at time quantiles) | temporal_windows "
        "(test = the log's last test_window_seconds, validation the val_window_seconds before it, gap_seconds "
        "between windows: Yambda's global temporal split)",
        "leave_last_out",
    )
    temporal_val_quantile: float = _help("temporal split: validation starts at this time quantile", 0.8)
    temporal_test_quantile: float = _help("temporal split: test starts at this time quantile", 0.9)
    test_window_seconds: int = _help("temporal_windows: length of the test window at the end of the log", 86_400)
    val_window_seconds: int = _help("temporal_windows: length of the validation window before it", 86_400)
    gap_seconds: int = _help("temporal_windows: gap before each window (its events are history, never targets)", 1_800)
    min_events_per_user: int = _help("users with fewer usable events are left out of training", 3)
    max_bad_fraction: float = _help("fail when more than this fraction of rows is quarantined", 0.05)
    min_item_count: int = _help("items seen fewer times in the log map to the OOV id", 1)
    item_features: ItemFeaturesConfig = _help(
        "item-side features (genre, artist, year, ...) for the item tower, from an item metadata file",
        factory=ItemFeaturesConfig,
    )
