"""Model hyper-parameters and the data-derived schema the model is built for."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass
class ModelConfig:
    """Encoder and head sizes."""

    embedding_dim: int = field(
        default=64,
        metadata={
            "help": "width of every embedding table and of the transformer (training job: 0 = auto, from the "
            "training events per item)"
        },
    )
    num_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=2, metadata={"help": "attention heads"})
    ffn_multiplier: float = field(default=4.0, metadata={"help": "SwiGLU hidden width = multiplier·d·2/3"})
    dropout: float | Literal["auto"] = field(
        default=0.1,
        metadata={
            "help": "dropout on embeddings, residual branches and FFN (training job: auto, from the training "
            "events per item)"
        },
    )
    attention_dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout on attention probabilities; above 0 the CPU attention leaves its fused kernel for "
            "one that materialises [B, heads, S, S] scores (and masks)"
        },
    )
    max_seq_len: int = field(
        default=50,
        metadata={
            "help": "history events the encoder reads (training job: 0 = auto, from the training histories' lengths)"
        },
    )
    positions: Literal["rope", "learned"] = field(default="rope", metadata={"help": "rope or learned positions"})
    encoder: Literal["transformer", "hstu", "dense_attention"] = field(
        default="transformer",
        metadata={
            "help": "transformer: pre-norm softmax attention + SwiGLU blocks; hstu: HSTU layers (Zhai et al. "
            "2024: SiLU pointwise attention over max_seq_len, a learned bias per relative position and per "
            "log-bucketed time gap, U-gating, no FFN); "
            "dense_attention: DenseAttention blocks (Argatkin: no softmax, keys = values = the max-normed input, "
            "causal in O(N) by chunks); rope is not used by the last two, learned positions are"
        },
    )
    hstu_time_buckets: int = field(
        default=128,
        metadata={
            "help": "hstu: buckets of the time-gap bias, floor(ln(gap seconds) / 0.301) clamped to this (the "
            "paper's); used when the data's timestamps are times (data.spec.event_time), 0 = position bias only"
        },
    )
    tokenization: Literal["one_token", "three_token"] = field(
        default="one_token",
        metadata={
            "help": "one_token: Proj([E_ctx; E_item; E_fb]) per event; three_token: context, item and "
            "feedback tokens per event (next item read at the context token, feedback at the item token)"
        },
    )
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each transformer block in backward (memory for compute)"}
    )
    compile_blocks: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each transformer block for training (inductor fuses the norms, RoPE and "
            "SwiGLU; the first steps pay for compilation, worth it on GPUs)"
        },
    )
    length_groups: int = field(
        default=1,
        metadata={
            "help": "run the causal encoder on this many groups of rows sorted by length, each cut to its "
            "longest row: the same outputs at every valid position with fewer padded positions "
            "computed (ML-1M on 2 CPU workers, 4 groups: an epoch from 44 s to 37 s); 1 = off; "
            "training job: 0 = auto, from the padding the histories' lengths would leave"
        },
    )
    multi_hash_buckets: int = field(
        default=0,
        metadata={
            "help": "multi-hash item embeddings: rows of each hash table (hashes of the raw item id; "
            "item vector = Linear([E_item; E_h1; ...])); 0 = off"
        },
    )
    multi_hash_tables: int = field(default=2, metadata={"help": "number of hash tables when multi_hash_buckets > 0"})
    item_codes: Literal["ids", "recjpq"] = field(
        default="ids",
        metadata={
            "help": "ids: one item-table row per item; recjpq: RecJPQ (Petrov & Macdonald 2024): each item is the "
            "concatenation of model.recjpq_splits sub-item rows, one from each of as many small tables, picked by "
            "codes fixed before training from a truncated SVD of the training user-item matrix"
        },
    )
    recjpq_splits: int = field(
        default=16, metadata={"help": "recjpq: sub-item tables per item (each embedding_dim / splits wide)"}
    )
    recjpq_sub_items: int = field(
        default=1024, metadata={"help": "recjpq: rows of each sub-item table (at most the catalogue size)"}
    )
    normalize_embeddings: bool = field(
        default=False, metadata={"help": "L2-normalise query and item vectors (then tune loss.temperature)"}
    )


@dataclass
class ActionHead:
    """One feedback head: its name, kind and how many input-embedding codes it has."""

    name: str
    kind: Literal["binary", "ratio", "graded"]
    num_codes: int  # rows of the feedback-token table (2 for binary, buckets for ratio, levels for graded)

    @property
    def num_outputs(self) -> int:
        """Logits the head emits: one for binary/ratio, one per level for graded."""
        return self.num_codes if self.kind == "graded" else 1


@dataclass
class ItemFeature:
    """One item-side feature of the item tower (e.g. genre): `num_values` codes including 0 = none,
    `slots` values per item (mean-pooled)."""

    name: str
    num_values: int
    slots: int


@dataclass
class ModelSchema:
    """What the model is built for: catalogue size, context cardinalities, action heads, item-side
    features (all from the data) and the multi-hash item tables (from `ModelConfig.multi_hash_*`).

    Item index 0 is padding; real items are 1..num_items. Context values likewise start at 1.
    """

    num_items: int
    contexts: dict[str, int] = field(default_factory=dict)  # column -> number of values (incl. padding 0)
    actions: list[ActionHead] = field(default_factory=list)
    item_features: list[ItemFeature] = field(default_factory=list)
    item_hash_buckets: list[int] = field(default_factory=list)  # multi-hash tables (rows each, padding excluded)
    # RecJPQ: sub-item tables per item and rows of each (padding excluded); 0 = one row per item
    recjpq_splits: int = 0
    recjpq_sub_items: int = 0
    # HSTU time-gap bias buckets; 0 = none (another encoder, or timestamps that only order events)
    time_buckets: int = 0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "ModelSchema":
        raw = json.loads(Path(path).read_text())
        return cls(
            num_items=raw["num_items"],
            contexts=dict(raw["contexts"]),
            actions=[ActionHead(**a) for a in raw["actions"]],
            item_features=[ItemFeature(**f) for f in raw.get("item_features", [])],
            item_hash_buckets=list(raw.get("item_hash_buckets", [])),
            recjpq_splits=int(raw.get("recjpq_splits", 0)),
            recjpq_sub_items=int(raw.get("recjpq_sub_items", 0)),
            time_buckets=int(raw.get("time_buckets", 0)),
        )


def multi_hash_buckets(cfg: ModelConfig) -> list[int]:
    """Rows of each multi-hash item table that `cfg` asks for ([] = off)."""
    if cfg.multi_hash_buckets < 0:
        raise ValueError(
            f"model.multi_hash_buckets is {cfg.multi_hash_buckets}; use 0 (off) or the rows per hash table"
        )
    if cfg.multi_hash_buckets == 0:
        return []
    if cfg.multi_hash_tables < 1:
        raise ValueError(
            f"model.multi_hash_tables is {cfg.multi_hash_tables}; multi-hash embeddings need at least 1 table"
        )
    return [cfg.multi_hash_buckets] * cfg.multi_hash_tables


def time_buckets(cfg: ModelConfig, event_time: bool) -> int:
    """Buckets of HSTU's time-gap bias for `cfg` on data whose timestamps are (`event_time`) or are
    not times in seconds; 0 = no time bias."""
    if cfg.hstu_time_buckets < 0:
        raise ValueError(f"model.hstu_time_buckets is {cfg.hstu_time_buckets}; use 0 (off) or the number of buckets")
    return cfg.hstu_time_buckets if cfg.encoder == "hstu" and event_time else 0


def recjpq_shape(cfg: ModelConfig, num_items: int) -> tuple[int, int]:
    """(sub-item tables, rows of each) that `cfg` asks for on a catalogue of `num_items`; (0, 0) = off."""
    if cfg.item_codes == "ids":
        return 0, 0
    if cfg.multi_hash_buckets:
        raise ValueError(
            "model.item_codes=recjpq and model.multi_hash_buckets are two ways to build item rows: pick one"
        )
    m, k = cfg.recjpq_splits, cfg.recjpq_sub_items
    if m < 1 or k < 2:
        raise ValueError(f"model.recjpq_splits ({m}) must be >= 1 and model.recjpq_sub_items ({k}) >= 2")
    if cfg.embedding_dim and cfg.embedding_dim % m:
        raise ValueError(
            f"model.embedding_dim ({cfg.embedding_dim}) must be a multiple of model.recjpq_splits ({m}): "
            "each sub-item row is embedding_dim / splits wide"
        )
    return m, min(k, num_items)
