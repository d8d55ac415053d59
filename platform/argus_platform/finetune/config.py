"""The root config of `jobs/finetune_argus.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from argus_platform.config import ScalingCfg
from argus_platform.configlib import ConfigError
from argus_platform.configlib import documented as _help

# The impressions file and slate size, as fine-tuning and the weight search both read them.
IMPRESSIONS_HELP = "impressions Parquet/CSV (user_id, timestamp, item_id, clicked, <actions>); '' = the synthetic log's"
SLATE_SIZE_HELP = "shown items kept per request (the clicked ones first)"


@dataclass
class FinetuneConfig:
    """Root config of `jobs/finetune_argus.py`."""

    pretrained: str = _help("pre-trained run directory or checkpoint ('' = newest run under runs/)", "")
    mode: Literal["pairwise", "ranker"] = _help(
        "pairwise: two-tower BPR on clicked vs shown-not-clicked items; ranker: per-action heads on slates "
        "(candidate isolation for three_token models)",
        "pairwise",
    )
    impressions: str = _help(IMPRESSIONS_HELP, "")
    slate_size: int = _help(SLATE_SIZE_HELP, 8)
    epochs: int = _help("passes over the training requests", 4)
    batch_size: int = _help("users per worker per step (each brings all of its requests)", 16)
    dense_lr: float = _help("AdamW learning rate of the dense arch", 3e-4)
    sparse_lr: float = _help("learning rate of the tables' fused optimizer", 0.01)
    action_weights: dict[str, float] = _help("ranker: λ per action head (missing actions get 1.0)", factory=dict)
    seed: int = _help("fine-tuning seed", 0)
    run_dir: str = _help("output directory ('' = <pre-trained run>/finetune-<mode>)", "")
    verbose: bool = _help(
        "print Ray's, Ray Data's and the workers' own output on the terminal too (else it stays in "
        "<run dir>/logs/ray; the job's own lines are printed either way)",
        False,
    )
    scaling: ScalingCfg = field(default_factory=ScalingCfg)

    def validate(self) -> None:
        if self.slate_size < 2:
            raise ConfigError("slate_size must be at least 2 (a clicked item and one shown beside it)")
        if self.epochs < 1:
            raise ConfigError("epochs must be at least 1")
