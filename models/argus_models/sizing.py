"""Closed-form sizes of the dense arch: parameter counts and activation bytes per token.

`dense_parameter_count` is the exact count of `ArgusDenseArch(cfg, schema)` (a test compares it
with the built module); the activation figures are estimates of what autograd keeps for backward.
"""

from __future__ import annotations

from argus_models.config import ModelConfig, ModelSchema


def ffn_hidden(cfg: ModelConfig) -> int:
    """SwiGLU hidden width F (see `encoder.SwiGLU`)."""
    return int(cfg.ffn_multiplier * cfg.embedding_dim * 2 / 3)


def block_parameter_count(cfg: ModelConfig, max_tokens: int | None = None, time_buckets: int = 0) -> int:
    """One block of `cfg.encoder`. transformer: 2 RMSNorm weights, qkv + out, SwiGLU (no biases);
    hstu: 2 RMSNorm weights, UVQK + out, the relative-position bias over `max_tokens` and the
    time-gap bias; dense_attention: the query projection and the two FFN matrices."""
    D, F = cfg.embedding_dim, ffn_hidden(cfg)
    if cfg.encoder == "hstu":
        return 2 * D + 5 * D * D + 2 * (max_tokens or cfg.max_seq_len) - 1 + (time_buckets + 1 if time_buckets else 0)
    if cfg.encoder == "dense_attention":
        return D * D + 2 * D * int(cfg.ffn_multiplier * D)
    return 2 * D + 4 * D * D + 3 * D * F


def max_encoder_tokens(cfg: ModelConfig, schema: ModelSchema) -> int:
    """The encoder's length: max_seq_len events, as tokens (three_token: 2-3 per event and one more event)."""
    if cfg.tokenization == "three_token":
        return (2 + bool(schema.actions)) * (cfg.max_seq_len + 1)
    return cfg.max_seq_len


def _mlp(d_in: int, d_hidden: int, d_out: int) -> int:
    return d_in * d_hidden + d_hidden + d_hidden * d_out + d_out


def dense_parameter_count(cfg: ModelConfig, schema: ModelSchema) -> dict[str, int]:
    """Parameters of the dense arch by part, plus "total". Embedding tables are not included."""
    D = cfg.embedding_dim
    has_ctx, has_fb = int(bool(schema.contexts)), int(bool(schema.actions))
    outputs = sum(a.num_outputs for a in schema.actions)
    max_tokens = max_encoder_tokens(cfg, schema)
    if cfg.tokenization == "three_token":
        k = 2 + has_fb
        tokens = k * D + (D * D + D) * (has_ctx + has_fb)  # type vectors, context and feedback projections
        head_width, fb_width = D, D
    else:
        tokens = D * (1 + has_ctx + has_fb) * D + D
        head_width, fb_width = D * (1 + has_ctx), D * (2 + has_ctx)
    parts = {
        "token_proj": tokens,
        "encoder": cfg.num_layers * block_parameter_count(cfg, max_tokens, schema.time_buckets)
        + D
        + (max_tokens * D if cfg.positions == "learned" else 0),
        "item_head": _mlp(head_width, 2 * D, D),
        "feedback_head": _mlp(fb_width, 2 * D, outputs) if has_fb else 0,
        # item tower's side-feature table: one row per feature value plus the shared "none" row
        "item_features": (1 + sum(f.num_values - 1 for f in schema.item_features)) * D if schema.item_features else 0,
        # multi-hash: Linear([E_item ; E_h1 ; …] → D)
        "item_proj": (D * (1 + len(schema.item_hash_buckets)) * D + D) if schema.item_hash_buckets else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def embedding_parameter_count(schema: ModelSchema, dim: int) -> dict[str, int]:
    """Rows × width of every table (item table has a padding row; RecJPQ: no item table, its sub-item
    tables dim / splits wide), plus "total"."""
    m = schema.recjpq_splits
    if m:
        parts = {f"item_q{j}": (schema.recjpq_sub_items + 1) * (dim // m) for j in range(m)}
    else:
        parts = {"item": (schema.num_items + 1) * dim}
    parts.update({f"item_h{k}": (b + 1) * dim for k, b in enumerate(schema.item_hash_buckets)})
    parts.update({f"ctx_{c}": n * dim for c, n in schema.contexts.items()})
    parts.update({f"fb_{a.name}": a.num_codes * dim for a in schema.actions})
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes_per_token(cfg: ModelConfig, bytes_per_value: int, checkpointing: bool) -> int:
    """What the encoder keeps for backward, per token, over all layers (memory-efficient SDPA: no
    S×S score matrix, only a float32 log-sum-exp per head).

    Per block and token: norm in/out (2D), q/k/v (3D), attention output (D), output projection (D),
    second norm (D), SwiGLU gate/up (2F) and product (F), FFN output (D): 9D + 3F values, plus
    one-byte dropout masks (2D) and the log-sum-exp (4·heads bytes). With checkpointing only each
    block's input (D values) is kept, and one block is recomputed at a time.
    """
    D, F = cfg.embedding_dim, ffn_hidden(cfg)
    per_block = (9 * D + 3 * F) * bytes_per_value + (2 * D if cfg.dropout > 0 else 0) + 4 * cfg.num_heads
    if checkpointing:
        return cfg.num_layers * D * bytes_per_value + per_block
    return cfg.num_layers * per_block
