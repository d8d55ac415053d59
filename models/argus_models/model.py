"""ARGUS-style model: sparse arch (TorchRec tables) and dense arch (encoder + heads).

History event t = (context c_t, item i_t, feedback f_t). One token per event:
    x_t = Proj([Σ_c E_c(c_t) ; E_item(i_t) ; Σ_a E_a(f_t,a)])
Heads read the encoder state h_t and the *next* event's known parts:
    next-item query   q_t = MLP([h_t ; E_ctx(c_{t+1})])          score <q_t, E_item(j)>
    feedback logits       MLP([h_t ; E_ctx(c_{t+1}) ; E_item(i_{t+1})])  → one output per action
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from argus_models.config import ModelConfig, ModelSchema
from argus_models.encoder import CausalEncoder

ITEM = "item"
NEG_ITEM = "neg_item"  # extra ids looked up in the item table: uniform negatives / the whole catalogue


def ctx_feature(name: str) -> str:
    return f"ctx_{name}"


def fb_feature(name: str) -> str:
    return f"fb_{name}"


def table_name(feature: str) -> str:
    # A "t_" prefix keeps table names clear of nn.Module attributes (a table named `items` breaks DMP).
    return f"t_{feature}"


def sequence_features(schema: ModelSchema) -> list[str]:
    """Per-event sparse features, in KJT key order (NEG_ITEM comes last)."""
    return [ITEM] + [ctx_feature(c) for c in schema.contexts] + [fb_feature(a.name) for a in schema.actions]


def embedding_configs(schema: ModelSchema, dim: int) -> list[EmbeddingConfig]:
    """One table per feature family; every table has width `dim` (one EmbeddingCollection)."""
    init = functools.partial(nn.init.normal_, mean=0.0, std=dim**-0.5)
    tables = [
        EmbeddingConfig(
            name=table_name(ITEM),
            embedding_dim=dim,
            num_embeddings=schema.num_items + 1,
            feature_names=[ITEM, NEG_ITEM],
            init_fn=init,
        )
    ]
    for name, size in schema.contexts.items():
        feat = ctx_feature(name)
        tables.append(EmbeddingConfig(name=table_name(feat), embedding_dim=dim, num_embeddings=size, feature_names=[feat], init_fn=init))
    for head in schema.actions:
        feat = fb_feature(head.name)
        tables.append(EmbeddingConfig(name=table_name(feat), embedding_dim=dim, num_embeddings=head.num_codes, feature_names=[feat], init_fn=init))
    return tables


class ArgusSparseArch(nn.Module):
    """The embedding tables. Built on `meta` for sharding; only this module is sharded."""

    def __init__(self, schema: ModelSchema, dim: int, device: torch.device | str = "meta") -> None:
        super().__init__()
        self.ec = EmbeddingCollection(tables=embedding_configs(schema, dim), device=torch.device(device))

    def forward(self, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """KJT of ids → {feature: padded [B, W, D]} (NEG_ITEM: [n, D], the ids of row 0)."""
        return ec_output_to_padded(self.ec(features))


def ec_output_to_padded(out: dict) -> dict[str, torch.Tensor]:
    return jagged_to_padded({k: (jt.values(), jt.lengths()) for k, jt in out.items()})


# TrainPipelineSparseDist FX-traces the module that owns the sharded tables; this conversion is
# data-dependent, so it stays one opaque call in the traced graph.
torch.fx.wrap("ec_output_to_padded")


def jagged_to_padded(jagged: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """(values [sum(len), D], lengths [B]) per feature → padded [B, max(len), D]; NEG_ITEM → values."""
    padded = {}
    for key, (values, lengths) in jagged.items():
        if key == NEG_ITEM:
            padded[key] = values
            continue
        width = int(lengths.max().item()) if lengths.numel() else 0
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
        padded[key] = torch.ops.fbgemm.jagged_2d_to_dense(values, offsets, width)
    return padded


def lookup_local(tables: dict[str, torch.Tensor], features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
    """Same contract as `ArgusSparseArch.forward`, from full in-memory tables (evaluation, serving)."""
    jagged = {}
    for key in features.keys():
        jt = features[key]
        weight = tables[table_name(ITEM if key == NEG_ITEM else key)]
        jagged[key] = (F.embedding(jt.values(), weight), jt.lengths())
    return jagged_to_padded(jagged)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class ArgusDenseArch(nn.Module):
    """Token projection, causal encoder, next-item and feedback heads."""

    def __init__(self, cfg: ModelConfig, schema: ModelSchema) -> None:
        super().__init__()
        D = cfg.embedding_dim
        self.cfg, self.schema = cfg, schema
        self.has_ctx, self.has_fb = bool(schema.contexts), bool(schema.actions)
        self.token_proj = nn.Linear(D * (1 + self.has_ctx + self.has_fb), D)
        self.encoder = CausalEncoder(cfg)
        self.item_head = _mlp(D * (1 + self.has_ctx), 2 * D, D, cfg.dropout)
        self.action_slices: dict[str, tuple[int, int]] = {}
        start = 0
        for head in schema.actions:
            self.action_slices[head.name] = (start, start + head.num_outputs)
            start += head.num_outputs
        self.feedback_head = _mlp(D * (2 + self.has_ctx), 2 * D, start, cfg.dropout) if self.has_fb else None

    def _context(self, emb: dict[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.has_ctx:
            return None
        return torch.stack([emb[ctx_feature(c)] for c in self.schema.contexts]).sum(0)

    def forward(self, emb: dict[str, torch.Tensor], lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """emb: {feature: [B, W, D]} for a window of W events; lengths: [B] events per window.

        Positions 0..W-2 are inputs, 1..W-1 their targets. Returns
          "state"    [B, W-1, D]  encoder states h_t
          "query"    [B, W-1, D]  next-item query q_t
          "target"   [B, W-1, D]  E_item(i_{t+1})
          "feedback" [B, W-1, Σ outputs]  action logits for event t+1 (if the schema has actions)
        """
        state, head_in = self.encode(emb, lengths)
        nxt_item = emb[ITEM][:, 1:]
        out = {"state": state, "query": self.query(head_in), "target": nxt_item}
        if self.feedback_head is not None:
            out["feedback"] = self.feedback_logits(head_in, nxt_item)
        if self.cfg.normalize_embeddings:
            out["target"] = F.normalize(out["target"], dim=-1)
        return out

    def encode(self, emb: dict[str, torch.Tensor], lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, W-1, D] and the heads' shared input [B, W-1, H]: the state h_t with
        the context of event t+1, i.e. everything known about an event before its item."""
        ctx = self._context(emb)
        parts = [emb[ITEM]] + ([ctx] if ctx is not None else [])
        if self.has_fb:
            parts.append(torch.stack([emb[fb_feature(a.name)] for a in self.schema.actions]).sum(0))
        tokens = self.token_proj(torch.cat(parts, dim=-1))[:, :-1]  # [B, W-1, D]
        state = self.encoder(tokens, (lengths - 1).clamp_min(1))
        head_in = torch.cat([state, ctx[:, 1:]], dim=-1) if ctx is not None else state
        return state, head_in

    def query(self, head_in: torch.Tensor) -> torch.Tensor:
        """Next-item query [..., D] from the heads' input [..., H]."""
        q = self.item_head(head_in)
        return F.normalize(q, dim=-1) if self.cfg.normalize_embeddings else q

    def feedback_logits(self, head_in: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Action logits [..., Σ outputs] of showing `item` [..., D] in the event `head_in` [..., H]
        describes. Row-wise: a candidate's logits never depend on the other candidates."""
        if self.feedback_head is None:
            raise ValueError("the schema has no actions, so the model has no feedback head")
        return self.feedback_head(torch.cat([head_in, item], dim=-1))

    def action_logits(self, feedback: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the feedback head's output [..., Σ outputs] into named per-action logits."""
        return {name: feedback[..., a] if b - a == 1 else feedback[..., a:b] for name, (a, b) in self.action_slices.items()}

    def item_vectors(self, item_table: torch.Tensor) -> torch.Tensor:
        """Catalogue vectors as the scoring side sees them ([C+1, D])."""
        return F.normalize(item_table, dim=-1) if self.cfg.normalize_embeddings else item_table


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
