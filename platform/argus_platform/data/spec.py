"""Dataset spec: which columns of an event log are ids, time, context and actions (platform/README.md: Data flow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from argus_models.config import ActionHead
from argus_models.contract import ITEM_COL, TIME_COL, action_target, action_valid, target_code
from argus_platform.configlib import ConfigError

# Column names of the canonical event log every source is converted to.
USER, ITEM, TIME = "user_id", ITEM_COL, TIME_COL


@dataclass
class ActionSpec:
    """One feedback signal. binary: {0,1}; ratio: [0,1]; graded: one of `levels`."""

    name: str = ""
    kind: Literal["binary", "ratio", "graded"] = "binary"
    column: str = ""  # source column; defaults to `name`
    levels: list[float] = field(default_factory=list)  # graded only, ascending
    buckets: int = 10  # ratio only: feedback-token codes

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("every action needs a name")
        if self.kind == "graded" and len(self.levels) < 2:
            raise ConfigError(f"graded action {self.name!r} needs at least two `levels`")

    @property
    def source_column(self) -> str:
        return self.column or self.name

    def num_codes(self) -> int:
        return {"binary": 2, "ratio": self.buckets, "graded": len(self.levels)}[self.kind]

    def head(self) -> ActionHead:
        return ActionHead(name=self.name, kind=self.kind, num_codes=self.num_codes())

    def valid(self, values: np.ndarray) -> np.ndarray:
        """Mask of usable values (NaN, out-of-range and unknown levels are not)."""
        return action_valid(self.kind, self.levels, values)

    def target(self, values: np.ndarray) -> np.ndarray:
        """Training target: 0/1 (binary), the ratio, or the level index (graded)."""
        return action_target(self.kind, self.levels, values)

    def code(self, values: np.ndarray) -> np.ndarray:
        """Feedback-token code of each value (row of the action's embedding table)."""
        return target_code(self.kind, self.num_codes(), self.target(values))


@dataclass
class DatasetSpec:
    """How to read an event log. The defaults describe the canonical log the loaders write."""

    user_column: str = USER
    item_column: str = ITEM
    timestamp_column: str = TIME  # "" = none: the row order within the file orders each user's events
    # the timestamps are times in seconds (HSTU's time-gap bias reads them), not only an order
    event_time: bool = True
    context_columns: list[str] = field(default_factory=list)
    actions: list[ActionSpec] = field(default_factory=list)

    def validate(self) -> None:
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            raise ConfigError(f"action names must be unique, got {names}")
        clash = set(names) & set(self.context_columns)
        if clash:
            raise ConfigError(f"columns {sorted(clash)} are declared both as context and as action")

    def canonical(self) -> "DatasetSpec":
        """The spec of the canonical log: fixed id/time names, actions under their own names."""
        return DatasetSpec(
            event_time=self.event_time and bool(self.timestamp_column),
            context_columns=list(self.context_columns),
            actions=[
                ActionSpec(name=a.name, kind=a.kind, levels=list(a.levels), buckets=a.buckets) for a in self.actions
            ],
        )
