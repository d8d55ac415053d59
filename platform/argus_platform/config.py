"""The root config of the training job (`jobs/train_argus.py`): one nested dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional

import torch

from argus_models.allocator import hold_freed_memory
from argus_models.config import ModelConfig
from argus_platform.configlib import ConfigError
from argus_platform.configlib import documented as _help
from argus_platform.data.config import DataConfig

FULL_SOFTMAX_MAX_ITEMS = (
    6_000  # loss.next_item=auto: full softmax up to here (jobs/README.md: next-item losses by catalogue size)
)


@dataclass
class LossConfig:
    next_item: Literal["auto", "corrected_logq", "logq", "full_softmax"] = _help(
        "next-item loss: auto (with optim.time_budget_minutes: full_softmax while 10 epochs of it, timed on "
        "the workers, fit in half the budget, and always up to loss.full_softmax_max_items items; without: "
        "full_softmax up to loss.full_softmax_max_items items; "
        "corrected_logq beyond), corrected_logq, logq (Yi et al.), full_softmax",
        "auto",
    )
    full_softmax_max_items: int = _help(
        "largest catalogue for which next_item=auto trains the full softmax in a run without a time budget "
        "(measured at equal wall time on 2 CPU cores, jobs/README.md: next-item losses by catalogue size)",
        FULL_SOFTMAX_MAX_ITEMS,
    )
    in_batch_negatives: int = _help("in-batch negatives per step (sampled from the batch's positives)", 128)
    uniform_negatives: int = _help("uniform negatives per step from the catalogue", 128)
    action_weights: dict[str, float] = _help(
        "λ_a per action head in L = L_item + Σ λ_a L_a (missing actions get 1.0)", factory=dict
    )
    temperature: float = _help("logit temperature for the next-item scores", 1.0)
    exclude_history: bool | Literal["auto"] = _help(
        "full_softmax: leave the items already in a position's history out of its softmax (the target stays), as "
        "evaluation (eval.filter_seen) and Serve leave seen items out of the ranking; for catalogues without repeats. "
        "auto: on with the full softmax when under 1% of the training events repeat an item the user had before",
        False,
    )


def resolve_next_item_loss(loss: LossConfig, num_items: int) -> tuple[LossConfig, str]:
    """The concrete loss for `loss.next_item=auto` on a catalogue of `num_items`, and why."""
    if loss.next_item != "auto":
        return loss, "set in the config"
    full = num_items <= loss.full_softmax_max_items
    why = (
        f"auto: {num_items:,} items {'<=' if full else '>'} loss.full_softmax_max_items={loss.full_softmax_max_items:,}"
    )
    return auto_loss(loss, full, why)


def auto_loss(loss: LossConfig, full: bool, why: str) -> tuple[LossConfig, str]:
    """`loss` with next_item=auto made the full softmax (`full`) or corrected logQ, for the reason `why`."""
    if loss.exclude_history is True and not full:
        raise ConfigError(
            f"loss.exclude_history needs the full softmax, and loss.next_item=auto chose corrected_logq ({why}); "
            "set loss.next_item=full_softmax or loss.exclude_history=false"
        )
    return replace(loss, next_item="full_softmax" if full else "corrected_logq"), why


@dataclass
class OptimConfig:
    epochs: int = _help(
        "passes over the training sequences; 0 = as many as fit in optim.time_budget_minutes (fitted after the "
        "first epoch and its evaluation)",
        30,
    )
    batch_size: int = _help("sequences per worker per step", 64)
    dense_lr: float = _help("AdamW learning rate for the transformer", 2e-3)
    sparse_lr: float = _help("learning rate of the embedding tables' fused optimizer", 0.05)
    sparse_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd", "adam"] = _help(
        "fused FBGEMM optimizer of the sharded tables: rowwise_adagrad (one state value per row), adagrad (one per "
        "weight), sgd, or adam (two per weight; GPU only). Data-parallel tables (dense kernel, GPUs only) use AdamW",
        "rowwise_adagrad",
    )
    sparse_weight_decay: float = _help(
        "L2 weight decay of the tables in the fused row-wise Adagrad / Adagrad (added to the gradient of every row a "
        "step looks up, before the Adagrad scaling; 0 = off)",
        0.0,
    )
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "dense forward/backward precision: auto (bf16 on CUDA and on CPUs with AMX, fp32 elsewhere, AVX512-BF16 alone "
        "included: slower there for the default model; "
        "printed at start and saved in metrics.json), fp32, or bf16 autocast (tables, losses and optimizer states "
        "stay fp32)",
        "auto",
    )
    weight_decay: float = _help("AdamW weight decay", 0.01)
    warmup_steps: int = _help("linear warm-up steps of the learning rates", 50)
    lr_schedule: Literal["constant", "cosine"] = _help(
        "after warm-up: constant, or cosine decay of both learning rates (dense and sparse) over optim.epochs",
        "constant",
    )
    min_lr_ratio: float = _help("cosine: the learning rates end at this fraction of their configured values", 0.1)
    grad_clip: float = _help("max grad norm of the dense parameters (0 = off)", 1.0)
    seed: int = _help("training seed", 0)
    eval_every_epochs: int = _help("validate (and checkpoint) every N epochs", 3)
    time_budget_minutes: float = _help(
        "with optim.epochs > 0: stop training once this many minutes of training steps have run (evaluation not "
        "counted; the run then validates, tests and stops as after its last epoch), for comparisons at equal "
        "training time. With optim.epochs = 0: the minutes of the whole training phase (steps and evaluations): "
        "the first epoch and its evaluation are timed, then the epochs, the cosine schedule and the validation "
        "cadence are fitted into the rest (printed, saved in metrics.json). 0 = off",
        0.0,
    )
    early_stopping_patience: int = _help("stop after this many evaluations without validation gain (0 = off)", 0)
    log_every_steps: int = _help("progress line every N steps", 20)
    train_windows: Literal["last", "random"] = _help(
        "which max_seq_len+1 events of a longer training history a step sees: the last, or a random window", "random"
    )
    length_buckets: int = _help(
        "sort the rows of this many consecutive training batches by length and re-batch them, so a batch pads to "
        "rows of similar length (fewer padded positions computed; a batch's loss stays the mean over its positions, "
        "so positions of short-history batches weigh more than in mixed batches; 0 = batches as read)",
        0,
    )


@dataclass
class ShardingConfig:
    sharding_type: Optional[str] = _help(
        "force a sharding type for every table (row_wise, table_wise, column_wise, data_parallel: GPUs only); "
        "null lets the planner choose",
        None,
    )
    compute_kernel: Optional[str] = _help(
        "force a kernel (fused, dense: GPUs only, ...); null lets the planner choose", None
    )
    dense: Literal["ddp", "fsdp2"] = _help(
        "dense arch: ddp (replicated) or fsdp2 (weights, gradients and AdamW state sharded; per-block units); "
        "jobs/plan_argus.py says which one fits",
        "ddp",
    )


@dataclass
class ScalingCfg:
    num_workers: int = _help("Ray Train workers", 2)
    use_gpu: bool = _help("one GPU per worker, nccl backend", False)
    cpus_per_worker: float = _help("CPUs reserved per worker", 1.0)
    torch_threads: int = _help("intra-op threads per worker (0 = torch default)", 1)
    hold_freed_memory: bool = _help(
        "glibc: tensors below 32 MiB from the heap and freed memory kept (up to 1 GiB) instead of mapped, unmapped "
        "and page-faulted in again every step (~20% less CPU per training step on CPU); false = glibc's defaults",
        True,
    )
    local_num_cpus: int = _help(
        "logical CPUs for a local Ray started by the job; keep above the workers' total so Ray Data gets budget", 4
    )

    def apply_to_process(self, threads_if_unset: int = 0) -> None:
        """This process's part of the settings, for a worker or a one-process bench: torch's
        intra-op threads (`torch_threads`, or `threads_if_unset` where that is 0) and glibc's hold
        on freed memory (`hold_freed_memory`)."""
        threads = self.torch_threads or threads_if_unset
        if threads > 0:
            torch.set_num_threads(threads)
        if self.hold_freed_memory:
            hold_freed_memory()


@dataclass
class EvalConfig:
    filter_seen: bool = _help("drop items already in the user's history from the ranking", True)
    ks: list[int] = _help("cut-offs for NDCG/HR", factory=lambda: [10, 100])
    batch_size: int = _help("users per evaluation batch", 256)
    length_buckets: int = _help(
        "evaluation batches regrouped by history length (metrics do not depend on it; 0 = off)", 8
    )
    catalogue_block: int = _help(
        "items scored per block: each rank scores its share of the catalogue [users × block] at a time "
        "(bounds evaluation memory; metrics do not depend on it; a multiple of 128 lets the top-10 skip "
        "most of each block)",
        8192,
    )
    max_users: int = _help(
        "validation during training on about this many users (a fixed hash sample of user ids, recorded in "
        "metrics.json; 0 = every user); the test split is always evaluated on every user",
        0,
    )

    def validate(self) -> None:
        if self.catalogue_block < 1:
            raise ConfigError(f"eval.catalogue_block must be at least 1, got {self.catalogue_block}")
        if self.max_users < 0:
            raise ConfigError(f"eval.max_users must be >= 0 (0 = every user), got {self.max_users}")


@dataclass
class RunCfg:
    dir: str = _help(
        "run directory (config, data, checkpoints, metrics.json); empty = runs/argus-<time>; "
        "relative to $ARGUS_HOME if set",
        "",
    )
    checkpoints_to_keep: int = _help(
        "checkpoints kept in the run directory: the best N by validation NDCG@10, and the latest (to resume from)", 2
    )
    max_failures: int | Literal["auto"] = _help(
        "worker-group restarts Ray Train attempts after a failure (a killed worker or a lost node: the group "
        "restarts from the last checkpoint); auto = 2 when the job joins a cluster (RAY_ADDRESS: nodes come "
        "and go there), 0 on the local Ray (a failure there is a bug to see at once; rerunning resumes)",
        "auto",
    )
    verbose: bool = _help(
        "print Ray's, Ray Data's, TorchRec's and FBGEMM's own output to the terminal too (by default it stays in "
        "Ray's log files, linked as <run dir>/logs/ray; the job's own lines are printed either way)",
        False,
    )


@dataclass
class TrainJobConfig:
    """Root config of `jobs/train_argus.py`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    scaling: ScalingCfg = field(default_factory=ScalingCfg)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunCfg = field(default_factory=RunCfg)

    def validate(self) -> None:
        if self.data.source != "synthetic" and not self.data.path:
            raise ConfigError(f"data.path is required for data.source={self.data.source!r}")
        if min(self.data.test_window_seconds, self.data.val_window_seconds) <= 0 or self.data.gap_seconds < 0:
            raise ConfigError(
                "data.test_window_seconds and data.val_window_seconds must be positive, data.gap_seconds >= 0"
            )
        if not 0 <= self.data.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {self.data.max_bad_fraction}")
        if self.loss.exclude_history is True and self.loss.next_item not in ("full_softmax", "auto"):
            raise ConfigError("loss.exclude_history needs loss.next_item=full_softmax")
        if self.loss.next_item != "full_softmax" and self.loss.in_batch_negatives + self.loss.uniform_negatives <= 0:
            raise ConfigError("loss.in_batch_negatives + loss.uniform_negatives must be positive for sampled softmax")
        self.data.item_features.validate()
        self.eval.validate()
        if self.scaling.num_workers < 1:
            raise ConfigError("scaling.num_workers must be at least 1")
        if self.run.max_failures != "auto" and self.run.max_failures < 0:
            raise ConfigError(f"run.max_failures must be >= 0 or auto, got {self.run.max_failures}")
        if self.optim.sparse_optimizer == "adam" and not self.scaling.use_gpu:
            raise ConfigError(
                "optim.sparse_optimizer=adam runs on GPUs only (FBGEMM's CPU kernels support rowwise_adagrad, "
                "adagrad and sgd); on CPU raise optim.sparse_lr instead (Adagrad's steps shrink over time)"
            )
        if self.optim.sparse_weight_decay < 0:
            raise ConfigError(f"optim.sparse_weight_decay must be >= 0, got {self.optim.sparse_weight_decay}")
        if self.optim.sparse_weight_decay and self.optim.sparse_optimizer not in ("rowwise_adagrad", "adagrad"):
            raise ConfigError(
                f"optim.sparse_weight_decay is implemented for sparse_optimizer rowwise_adagrad and adagrad, "
                f"not {self.optim.sparse_optimizer}"
            )
        if self.optim.eval_every_epochs < 1:
            raise ConfigError("optim.eval_every_epochs must be at least 1")
        if self.optim.epochs < 0 or self.optim.time_budget_minutes < 0:
            raise ConfigError(
                f"optim.epochs ({self.optim.epochs}) and optim.time_budget_minutes "
                f"({self.optim.time_budget_minutes}) must be >= 0"
            )
        if self.optim.epochs == 0 and not self.optim.time_budget_minutes:
            raise ConfigError(
                "optim.epochs=0 fits the epochs into optim.time_budget_minutes, which is 0; "
                "set a budget (e.g. optim.time_budget_minutes=60) or a number of epochs"
            )
