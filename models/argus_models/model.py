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
from argus_models.item_tower import ItemFeatureTower
from argus_models.tokenization import TOKENIZATIONS

ITEM = "item"
NEG_ITEM = "neg_item"  # extra ids looked up in the item table: uniform negatives / the whole catalogue
ITEM_IDS = "item_ids"  # not a table feature: the padded [B, W] item ids beside the looked-up rows (item tower)


def ctx_feature(name: str) -> str:
    return f"ctx_{name}"


def fb_feature(name: str) -> str:
    return f"fb_{name}"


def code_feature(m: int) -> str:
    """Sequence feature of RecJPQ sub-item table m (the window's items' codes in split m)."""
    return f"{ITEM}_q{m}"


def neg_code_feature(m: int) -> str:
    """NEG_ITEM's codes in RecJPQ sub-item table m."""
    return f"{NEG_ITEM}_q{m}"


def item_part_features(schema: ModelSchema) -> list[str]:
    """The per-item features whose rows make up an item's row beside (multi-hash) or instead of
    (RecJPQ) its own item-table row, in order."""
    if schema.recjpq_splits:
        return [code_feature(m) for m in range(schema.recjpq_splits)]
    return [hash_feature(k) for k in range(len(schema.item_hash_buckets))]


def hash_feature(k: int) -> str:
    """Sequence feature of multi-hash table k (the bucket rows of the window's items)."""
    return f"{ITEM}_h{k}"


def neg_hash_feature(k: int) -> str:
    """NEG_ITEM's bucket rows in multi-hash table k."""
    return f"{NEG_ITEM}_h{k}"


def table_name(feature: str) -> str:
    # A "t_" prefix keeps table names clear of nn.Module attributes (a table named `items` breaks DMP).
    return f"t_{feature}"


def sequence_features(schema: ModelSchema) -> list[str]:
    """Per-event sparse features, in KJT key order (the `negative_features` come after them). ITEM is
    always there (the ids): with RecJPQ no table reads it, and the sharded lookup leaves it out."""
    parts = item_part_features(schema)
    return [ITEM] + parts + [ctx_feature(c) for c in schema.contexts] + [fb_feature(a.name) for a in schema.actions]


def negative_features(schema: ModelSchema) -> list[str]:
    """Features of extra item ids (negatives, the catalogue, slates): all their ids sit in row 0."""
    return [NEG_ITEM] + [NEG_ITEM + f[len(ITEM) :] for f in item_part_features(schema)]


def _is_negative(key: str) -> bool:
    return key == NEG_ITEM or key.startswith((NEG_ITEM + "_h", NEG_ITEM + "_q"))


def _is_part(key: str) -> bool:
    """A multi-hash or RecJPQ part of an item's row (of the window's items or of NEG_ITEM)."""
    return key.startswith((ITEM + "_h", NEG_ITEM + "_h", ITEM + "_q", NEG_ITEM + "_q"))


CODE_TABLES = "ec_codes"  # the module of the RecJPQ sub-item tables (narrower than the others)


def embedding_configs(schema: ModelSchema, dim: int) -> list[EmbeddingConfig]:
    """Every table, in the order of `table_groups`."""
    return [t for group in table_groups(schema, dim).values() for t in group]


def table_groups(schema: ModelSchema, dim: int) -> dict[str, list[EmbeddingConfig]]:
    """The tables of each EmbeddingCollection of the sparse arch, by module name. An EmbeddingCollection
    holds tables of one width: "ec" those of width `dim`, CODE_TABLES the RecJPQ sub-item tables
    (dim / splits wide, as an item row is their concatenation). A group with no table is left out."""
    groups = {"ec": _full_width_tables(schema, dim)}
    if schema.recjpq_splits:
        m = schema.recjpq_splits
        if dim % m:
            raise ValueError(f"model.embedding_dim ({dim}) must be a multiple of model.recjpq_splits ({m})")
        # Each split's rows start as N(0, 1/dim), like an item-table row, so an item's row has the same scale.
        init = functools.partial(nn.init.normal_, mean=0.0, std=dim**-0.5)
        groups[CODE_TABLES] = [
            EmbeddingConfig(
                name=table_name(code_feature(j)),
                embedding_dim=dim // m,
                num_embeddings=schema.recjpq_sub_items + 1,  # row 0: padding
                feature_names=[code_feature(j), neg_code_feature(j)],
                init_fn=init,
            )
            for j in range(m)
        ]
    return {name: tables for name, tables in groups.items() if tables}


def _full_width_tables(schema: ModelSchema, dim: int) -> list[EmbeddingConfig]:
    """One table per feature family, each `dim` wide (RecJPQ: no item table)."""
    init = functools.partial(nn.init.normal_, mean=0.0, std=dim**-0.5)
    tables = []
    if not schema.recjpq_splits:
        tables.append(
            EmbeddingConfig(
                name=table_name(ITEM),
                embedding_dim=dim,
                num_embeddings=schema.num_items + 1,
                feature_names=[ITEM, NEG_ITEM],
                init_fn=init,
            )
        )
    for k, buckets in enumerate(schema.item_hash_buckets):
        tables.append(
            EmbeddingConfig(
                name=table_name(hash_feature(k)),
                embedding_dim=dim,
                num_embeddings=buckets + 1,
                feature_names=[hash_feature(k), neg_hash_feature(k)],
                init_fn=init,
            )
        )
    for name, size in schema.contexts.items():
        feat = ctx_feature(name)
        tables.append(
            EmbeddingConfig(
                name=table_name(feat), embedding_dim=dim, num_embeddings=size, feature_names=[feat], init_fn=init
            )
        )
    for head in schema.actions:
        feat = fb_feature(head.name)
        tables.append(
            EmbeddingConfig(
                name=table_name(feat),
                embedding_dim=dim,
                num_embeddings=head.num_codes,
                feature_names=[feat],
                init_fn=init,
            )
        )
    return tables


class ArgusSparseArch(nn.Module):
    """The embedding tables (one EmbeddingCollection per table width, `table_groups`). Built on
    `meta` for sharding; only this module is sharded."""

    def __init__(self, schema: ModelSchema, dim: int, device: torch.device | str = "meta") -> None:
        super().__init__()
        groups = table_groups(schema, dim)
        if "ec" in groups:
            self.ec = EmbeddingCollection(tables=groups["ec"], device=torch.device(device))
        if CODE_TABLES in groups:
            self.ec_codes = EmbeddingCollection(tables=groups[CODE_TABLES], device=torch.device(device))

    def forward(self, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """KJT of ids → {feature: padded [B, W, D]} (NEG_ITEM: [n, D], the ids of row 0). Each
        collection looks up its own features of the KJT."""
        return ec_output_to_padded(
            *(getattr(self, name)(features) for name in ("ec", CODE_TABLES) if hasattr(self, name))
        )


def ec_output_to_padded(*outs: dict) -> dict[str, torch.Tensor]:
    jagged = {k: (jt.values(), jt.lengths()) for out in outs for k, jt in out.items()}
    return concat_hash_rows(jagged_to_padded(jagged))


def _part_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1][1:])


def concat_hash_rows(padded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Multi-hash: ITEM/NEG_ITEM rows become [E_item ; E_h1 ; … ] (width D·(1+K)); RecJPQ: they are
    the concatenation of the sub-item rows [E_q0 ; … ; E_q(M-1)] (width D). The part keys go."""
    part_keys = sorted((k for k in padded if _is_part(k)), key=_part_index)
    if not part_keys:
        return padded
    out = {k: v for k, v in padded.items() if not _is_part(k)}
    for base in (ITEM, NEG_ITEM):
        parts = [padded[k] for k in part_keys if k.rsplit("_", 1)[0] == base]
        if parts:
            out[base] = torch.cat(([out[base]] if base in out else []) + parts, dim=-1)
    return out


# TrainPipelineSparseDist FX-traces the module that owns the sharded tables; this conversion is
# data-dependent, so it stays one opaque call in the traced graph.
torch.fx.wrap("ec_output_to_padded")


def jagged_to_padded(jagged: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """(values [sum(len), D], lengths [B]) per feature → padded [B, max(len), D]; NEG_ITEM → values."""
    padded = {}
    for key, (values, lengths) in jagged.items():
        if _is_negative(key):
            padded[key] = values
            continue
        width = int(lengths.max().item()) if lengths.numel() else 0
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
        padded[key] = torch.ops.fbgemm.jagged_2d_to_dense(values, offsets, width)
    return padded


def lookup_local(tables: dict[str, torch.Tensor], features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
    """Same contract as `ArgusSparseArch.forward`, from full in-memory tables (evaluation, serving).

    With multi-hash or RecJPQ tables, `tables` must be `ArgusDenseArch.local_tables(...)`: its item
    table already holds each item's whole row, so the part features in the KJT are not needed."""
    jagged = {}
    for key in features.keys():
        if _is_part(key):
            continue
        jt = features[key]
        weight = tables[table_name(ITEM if key == NEG_ITEM else key)]
        jagged[key] = (F.embedding(jt.values(), weight), jt.lengths())
    padded = jagged_to_padded(jagged)
    padded[ITEM_IDS] = pad_ids(features[ITEM].values(), features[ITEM].lengths())
    return padded


def pad_ids(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Jagged ids (values [sum(len)], lengths [B]) → right-padded [B, max(len)] (0 = padding)."""
    lengths = lengths.long()
    width = int(lengths.max().item()) if lengths.numel() else 0
    out = torch.zeros(lengths.numel(), width, dtype=torch.int64, device=values.device)
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(values.numel(), device=values.device) - torch.repeat_interleave(starts, lengths)
    out[rows, cols] = values.long()
    return out


class ArgusDenseArch(nn.Module):
    """Token projection, causal encoder, next-item and feedback heads. How events become tokens and
    where the heads read is the tokenisation's (`argus_models.tokenization`: one_token, three_token)."""

    def __init__(self, cfg: ModelConfig, schema: ModelSchema) -> None:
        super().__init__()
        D = cfg.embedding_dim
        self.cfg, self.schema = cfg, schema
        self.has_ctx, self.has_fb = bool(schema.contexts), bool(schema.actions)
        self.item_tower = ItemFeatureTower(schema.item_features, schema.num_items, D) if schema.item_features else None
        n_hash = len(schema.item_hash_buckets)
        # Multi-hash: [E_item ; E_h1 ; …] → D; the item → bucket-row map travels with the weights.
        self.item_proj = nn.Linear(D * (1 + n_hash), D) if n_hash else None
        if n_hash:
            self.register_buffer("item_hash_codes", torch.zeros(schema.num_items + 1, n_hash, dtype=torch.int64))
        if schema.recjpq_splits:  # RecJPQ: each item's sub-item row in every split, fixed before training
            self.register_buffer(
                "recjpq_codes", torch.zeros(schema.num_items + 1, schema.recjpq_splits, dtype=torch.int64)
            )
        self.action_slices: dict[str, tuple[int, int]] = {}
        start = 0
        for head in schema.actions:
            self.action_slices[head.name] = (start, start + head.num_outputs)
            start += head.num_outputs
        self.tokens = TOKENIZATIONS[cfg.tokenization]()
        self.tokens.build(self, cfg, start)

    @property
    def tokens_per_event(self) -> int:
        return self.tokens.tokens_per_event

    def context(self, emb: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """ΣE_ctx of each event [B, W, D], None without context features."""
        if not self.has_ctx:
            return None
        return torch.stack([emb[ctx_feature(c)] for c in self.schema.contexts]).sum(0)

    def feedback(self, emb: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """ΣE_fb of each event [B, W, D], None without actions."""
        if not self.has_fb:
            return None
        return torch.stack([emb[fb_feature(a.name)] for a in self.schema.actions]).sum(0)

    def forward(
        self, emb: dict[str, torch.Tensor], lengths: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """emb: {feature: [B, W, D]} for a window of W events; lengths: [B] events per window;
        valid: optional bool [B, W-1], the positions wanted (training: those with a next event).

        Events 0..W-2 are history for the predictions of events 1..W-1. Returns
          "state"    [B, W-1, D]  encoder state that predicts event t+1
          "query"    [B, W-1, D]  next-item query q_t
          "target"   [B, W-1, D]  E_item(i_{t+1})
          "feedback" [B, W-1, Σ outputs]  action logits for event t+1 (if the schema has actions)
        With `valid`, each is [N, ...] over the valid positions in row-major order, and the heads
        run on those positions only (the padded ones of a batch cost nothing past the encoder).
        """
        items = self.window_items(emb)  # the tower once; the encoder's inputs and the targets share it
        at = (lambda t: t) if valid is None else (lambda t: t[valid])
        out = self.tokens.outputs(self, emb, lengths, items, at)
        target = at(items[:, 1:])
        out["target"] = F.normalize(target, dim=-1) if self.cfg.normalize_embeddings else target
        return out

    def encode(
        self, emb: dict[str, torch.Tensor], lengths: torch.Tensor, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states [B, W-1, D] and the heads' shared input [B, W-1, H]: what is known about
        event t+1 before its item (`items`: the window's item vectors when already computed)."""
        return self.tokens.encode(self, emb, lengths, self.window_items(emb) if items is None else items)

    def query(self, head_in: torch.Tensor) -> torch.Tensor:
        """Next-item query [..., D] from the heads' input [..., H]."""
        q = self.item_head(head_in)
        return F.normalize(q, dim=-1) if self.cfg.normalize_embeddings else q

    def candidate_logits(
        self,
        candidates: torch.Tensor,
        head_in: torch.Tensor | None = None,
        emb: dict[str, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
        events: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action logits [B, M, Σ outputs] of showing each of M candidate item vectors [B, M, D]; a
        candidate's logits never depend on the other candidates. one_token models read `head_in`
        [B, H] (the request's next event, from `encode`); three_token models (`tokens.in_context`)
        read the window `emb`/`lengths` and, optionally, the event each candidate stands in for
        (`events` [B, M], default the row's last)."""
        return self.feedback_head(self._candidate_inputs(candidates, head_in, emb, lengths, events))

    def candidate_features(
        self,
        candidates: torch.Tensor,
        head_in: torch.Tensor | None = None,
        emb: dict[str, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
        events: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the feedback head's last hidden layer [B, M, 2D], the action logits [B, M, Σ outputs])
        of the candidates, as `candidate_logits` computes them: the features a linear model over
        the head's last layer reads (the Ranker's neural-linear exploration)."""
        x = self._candidate_inputs(candidates, head_in, emb, lengths, events)
        *hidden, last = self.feedback_head
        for layer in hidden:
            x = layer(x)
        return x, last(x)

    def _candidate_inputs(self, candidates, head_in, emb, lengths, events) -> torch.Tensor:
        if self.feedback_head is None:
            raise ValueError("the schema has no actions, so the model has no feedback head")
        return self.tokens.candidate_inputs(self, candidates, head_in, emb, lengths, events)

    def action_logits(self, feedback: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split the feedback head's output [..., Σ outputs] into named per-action logits."""
        return {
            name: feedback[..., a] if b - a == 1 else feedback[..., a:b] for name, (a, b) in self.action_slices.items()
        }

    @torch.no_grad()
    def set_item_hashes(self, codes: torch.Tensor) -> None:
        """codes: [C+1, K] bucket rows of every item in each hash table (`hashing.catalogue_hash_codes`)."""
        if self.item_proj is None:
            raise ValueError("the schema has no multi-hash tables")
        if tuple(codes.shape) != tuple(self.item_hash_codes.shape):
            raise ValueError(
                f"item hash codes have shape {tuple(codes.shape)}; "
                f"the model expects {tuple(self.item_hash_codes.shape)}"
            )
        limits = torch.tensor(self.schema.item_hash_buckets)
        if bool((codes < 0).any()) or bool((codes > limits).any()):
            raise ValueError(f"item hash codes outside 0..{self.schema.item_hash_buckets}")
        self.item_hash_codes.copy_(codes.to(torch.int64))

    @torch.no_grad()
    def set_recjpq_codes(self, codes: torch.Tensor) -> None:
        """codes: [C+1, M] each item's row (1..sub_items; 0 for the padding item) in every sub-item
        table (`recjpq.assign_codes`)."""
        if not self.schema.recjpq_splits:
            raise ValueError("the schema has no RecJPQ sub-item tables")
        if tuple(codes.shape) != tuple(self.recjpq_codes.shape):
            raise ValueError(
                f"RecJPQ codes have shape {tuple(codes.shape)}; the model expects {tuple(self.recjpq_codes.shape)}"
            )
        if bool((codes < 0).any()) or bool((codes > self.schema.recjpq_sub_items).any()):
            raise ValueError(f"RecJPQ codes outside 0..{self.schema.recjpq_sub_items}")
        self.recjpq_codes.copy_(codes.to(torch.int64))

    def item_part_rows(self) -> torch.Tensor | None:
        """[C+1, parts] each item's row in every part table (multi-hash buckets or RecJPQ codes), the
        map the collators need; None when items have one row each."""
        if self.schema.recjpq_splits:
            return self.recjpq_codes
        return self.item_hash_codes if self.item_proj is not None else None

    def local_tables(self, tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tables for local lookups (`lookup_local`): with multi-hash tables, the item table is
        replaced by each item's [E_item ; E_h1 ; …] row [C+1, D·(1+K)]; with RecJPQ it is built from
        the sub-item tables, each item's row the concatenation [E_q0 ; … ; E_q(M-1)] its codes pick
        [C+1, D] (idempotent)."""
        if self.schema.recjpq_splits:
            if table_name(ITEM) in tables:
                return tables
            codes = self.recjpq_codes.to(tables[table_name(code_feature(0))].device)
            parts = [tables[table_name(code_feature(m))][codes[:, m]] for m in range(codes.shape[1])]
            return {**tables, table_name(ITEM): torch.cat(parts, dim=-1)}
        if self.item_proj is None:
            return tables
        item = tables[table_name(ITEM)]
        if item.shape[-1] == self.item_proj.in_features:
            return tables
        codes = self.item_hash_codes.to(item.device)
        parts = [item] + [tables[table_name(hash_feature(k))][codes[:, k]] for k in range(codes.shape[1])]
        return {**tables, table_name(ITEM): torch.cat(parts, dim=-1)}

    def item_repr(self, rows: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The item tower: item-table rows [..., D] (multi-hash: [..., D·(1+K)], projected to D) of
        items `ids` [...] → item vectors [..., D] (plus the pooled side features when the schema has
        any). `ids` may be omitted only when `rows` is the whole table (row j = item j)."""
        if self.item_proj is not None:
            if rows.shape[-1] != self.item_proj.in_features:
                raise ValueError(
                    f"item rows have width {rows.shape[-1]}; with {len(self.schema.item_hash_buckets)} hash "
                    f"tables the model expects {self.item_proj.in_features} (use local_tables for full tables)"
                )
            rows = self.item_proj(rows)
        if self.item_tower is None:
            return rows
        if ids is None:
            if rows.shape[0] != self.schema.num_items + 1 or rows.dim() != 2:
                raise ValueError("item_repr: pass the item ids of these rows (the model has item-side features)")
            ids = torch.arange(rows.shape[0], device=rows.device)
        return rows + self.item_tower(ids).to(rows.dtype)

    def item_vectors(self, rows: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item vectors as the scoring side sees them (the tower, L2-normalised when configured);
        `rows`/`ids` as in `item_repr` (default: the whole table → the catalogue [C+1, D])."""
        v = self.item_repr(rows, ids)
        return F.normalize(v, dim=-1) if self.cfg.normalize_embeddings else v

    def window_items(self, emb: dict[str, torch.Tensor]) -> torch.Tensor:
        """The window's item vectors [B, W, D] (tower over emb[ITEM] and emb[ITEM_IDS])."""
        if self.item_tower is not None and ITEM_IDS not in emb:
            raise ValueError(
                f"the model has item-side features: the inputs need {ITEM_IDS!r} beside the looked-up rows"
            )
        return self.item_repr(emb[ITEM], emb.get(ITEM_IDS))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
