"""Pre-norm causal transformer: RMSNorm, SDPA attention, SwiGLU FFN, RoPE or learned positions.

Rows are right-padded, so the plain causal mask is exact for every valid position (it never
reaches a padded key) and SDPA can use its fused, memory-efficient kernels (no [S, S] mask is
built). An explicit mask is only passed when attention is not causal (candidate isolation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from argus_models.config import ModelConfig


def rope_cache(seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, each [S, head_dim/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels. x: [B, H, S, hd]; cos/sin: [S, hd/2] or per row [B, 1, S, hd/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 and returned in the input's dtype (under bf16 autocast the
    activations arrive in bf16 while the weight stays float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.embedding_dim % cfg.num_heads:
            raise ValueError(f"model.embedding_dim={cfg.embedding_dim} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.use_rope = cfg.positions == "rope"
        self.qkv = nn.Linear(cfg.embedding_dim, 3 * cfg.embedding_dim, bias=False)
        self.out = nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False)
        self.dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x: [B, S, D]; mask: bool [B or 1, 1, S, S] (True = may attend) or None for causal."""
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # 3×[B, H, S, hd]
        if self.use_rope and rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, S, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = int(cfg.ffn_multiplier * cfg.embedding_dim * 2 / 3)
        self.gate_up = nn.Linear(cfg.embedding_dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, cfg.embedding_dim, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.drop(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.embedding_dim)
        self.attn = SelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.embedding_dim)
        self.ffn = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, rope))
        return x + self.ffn(self.norm2(x))


def causal_padding_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """bool [B, 1, S, S]: position t attends to s ≤ t, both inside the sequence.

    The reference for the default causal attention: on right-padded rows both agree at every
    valid position. Padded query rows see the valid prefix (never an all-False row); their outputs
    are ignored.
    """
    pos = torch.arange(seq_len, device=lengths.device)
    valid = pos[None, :] < lengths[:, None]  # [B, S]
    causal = pos[None, :] <= pos[:, None]  # [S, S]
    return (causal[None] & valid[:, None, :])[:, None]  # [B, 1, S, S]


class CausalEncoder(nn.Module):
    """Token vectors [B, S, D] + lengths [B] → contextual states [B, S, D]."""

    def __init__(self, cfg: ModelConfig, max_tokens: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_tokens = max_tokens or cfg.max_seq_len
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.embedding_dim)
        self.pos = nn.Embedding(self.max_tokens, cfg.embedding_dim) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)

    def compile_blocks(self) -> None:
        """Compile each block in place (parameters and state-dict keys unchanged, so DDP, FSDP2 and
        checkpoints see the same module); checkpointing recomputes through the compiled forward."""
        for block in self.blocks:
            block.compile()

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, S, D] right-padded; lengths: [B]; mask: optional bool [B or 1, 1, S, S] replacing
        the causal one; positions: optional [B, S] position ids (default 0..S-1). Returns [B, S, D]."""
        B, S, D = x.shape
        last = S - 1 if positions is None else int(positions.max())
        if last >= self.max_tokens:
            raise ValueError(f"position {last} is past the encoder's {self.max_tokens} tokens (model.max_seq_len={self.cfg.max_seq_len})")
        pos = torch.arange(S, device=x.device) if positions is None else positions
        rope = None
        if self.pos is not None:
            x = x + self.pos(pos)[None] if positions is None else x + self.pos(pos)
        else:
            rope = rope_cache(self.max_tokens, D // self.cfg.num_heads, x.device)
            rope = tuple(t[:S] if positions is None else t[positions][:, None] for t in rope)  # [S, hd/2] or [B, 1, S, hd/2]
        x = self.drop(x)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            # Checkpointing keeps only each block's input and recomputes the block in backward
            # (dropout masks are replayed from the saved RNG state).
            x = checkpoint(block, x, mask, rope, use_reentrant=False) if recompute else block(x, mask, rope)
        return self.norm(x)
