"""Pre-norm causal transformer: RMSNorm, SDPA attention, SwiGLU FFN, RoPE or learned positions;
or HSTU layers (`model.encoder: hstu`, `HSTUBlock`), or DenseAttention blocks (`dense_attention`,
`DenseAttentionBlock`).

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


def rope_cache(seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0) -> torch.Tensor:
    """The rotations e^{i·s·θ_j}, θ_j = base^(−2j/hd), as complex64 [S, head_dim / 2]: angle j of
    position s turns the channel pair (2j, 2j+1)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair (2j, 2j+1) of x [..., hd] by `rot` [..., hd / 2] (`rope_cache`'s
    rotations, broadcast against x's leading dims).

    float32/float64: one complex multiply over the pairs viewed as complex numbers (half the
    passes of the real form, forward and backward). Other dtypes (bf16 under autocast) and
    torch.compile take the real form, x·[c, c] + swap(x)·[−s, s], with the same result.
    """
    if x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * rot.to(pairs.dtype)).flatten(-2)
    return _apply_rope_real(x, rot)


def _apply_rope_real(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    cos = rot.real.repeat_interleave(2, dim=-1)
    sin = torch.stack((-rot.imag, rot.imag), dim=-1).flatten(-2)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (x * cos + swapped * sin).type_as(x)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask costs a quarter of the random draws.

    The CPU generator produces 64 random bits per draw; nn.Dropout spends one draw per element,
    this splits each draw into four 16-bit uniforms (an element is dropped when its uniform falls
    below round(p·2¹⁶), i.e. with probability p to within 2⁻¹⁷). Three times faster on CPU, where
    the masks of a small model's step cost as much as its attention; the same replay under
    activation checkpointing (the CPU generator's state is saved and restored). Other devices keep
    the fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        drop = round(self.p * 65536)
        if drop >= 65536:
            return x * 0.0
        n = x.numel()
        uniforms = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:n]
        keep = (uniforms >= drop - 32768).view(x.shape)
        return x * keep.to(x.dtype).mul_(65536 / (65536 - drop))


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 and returned in the input's dtype (under bf16 autocast the
    activations arrive in bf16 while the weight stays float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.normalized_shape, self.weight, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.embedding_dim % cfg.num_heads:
            raise ValueError(
                f"model.embedding_dim={cfg.embedding_dim} is not divisible by model.num_heads={cfg.num_heads}"
            )
        self.num_heads = cfg.num_heads
        self.use_rope = cfg.positions == "rope"
        self.qkv = nn.Linear(cfg.embedding_dim, 3 * cfg.embedding_dim, bias=False)
        self.out = nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False)
        self.dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope: torch.Tensor | None) -> torch.Tensor:
        """x: [B, S, D]; mask: bool [B or 1, 1, S, S] (True = may attend) or None for causal;
        rope: rotations [S, hd/2] or per row [B, S, hd/2]."""
        B, S, D = x.shape
        qkv = self.qkv(x).view(B, S, 3, self.num_heads, D // self.num_heads)
        if self.use_rope and rope is not None:
            # q and k in one pass, before the heads are moved forward: [B, S, 2, H, hd]
            qk = apply_rope(qkv[:, :, :2], rope[..., None, None, :])
            (q, k), v = qk.permute(2, 0, 3, 1, 4), qkv[:, :, 2].transpose(1, 2)  # [B, H, S, hd] each
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3×[B, H, S, hd]
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
        self.drop = Dropout(cfg.dropout)

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
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, rope))
        return x + self.ffn(self.norm2(x))


class HSTUBlock(nn.Module):
    """One HSTU layer (Zhai et al., "Actions Speak Louder than Words", ICML 2024, eqs. 1-3):

        U, V, Q, K = split(SiLU(W1 · norm(x)))
        A·V        = SiLU(Q Kᵀ + rab) V / N        (causal)
        y          = x + W2 · dropout(norm(A·V) ⊙ U)

    rab(t, s) = w_pos[s - t] + w_time[bucket(τ_t - τ_s)]: a learned bias per relative position and,
    when the model is built with `time_buckets`, per time gap between the two tokens' events,
    bucket(g) = floor(ln(max(|g|, 1)) / 0.301) clamped to `time_buckets` (the paper's bucketing). The
    paper's query time is the *next* event's; here it is the query token's own event, so a user's
    state does not depend on when it is read (Serve computes it off the request path).

    Pointwise attention: no softmax, so a key's weight does not shrink as more keys are seen and the
    intensity of engagement is kept. N is the encoder's length (`max_seq_len`), a constant: the
    output at a position never depends on how many events follow it or how far a row is padded
    (length groups stay exact). No FFN: U-gating takes its place."""

    def __init__(self, cfg: ModelConfig, max_tokens: int, time_buckets: int = 0) -> None:
        super().__init__()
        if cfg.embedding_dim % cfg.num_heads:
            raise ValueError(
                f"model.embedding_dim={cfg.embedding_dim} is not divisible by model.num_heads={cfg.num_heads}"
            )
        D = cfg.embedding_dim
        self.num_heads, self.max_tokens = cfg.num_heads, max_tokens
        self.norm_in = RMSNorm(D)
        self.uvqk = nn.Linear(D, 4 * D, bias=False)
        self.rel_bias = nn.Parameter(torch.zeros(2 * max_tokens - 1))  # index (s - t) + max_tokens - 1
        self.time_buckets = time_buckets
        self.time_bias = nn.Parameter(torch.zeros(time_buckets + 1)) if time_buckets else None
        self.norm_attn = RMSNorm(D)
        self.out = nn.Linear(D, D, bias=False)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        gaps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D]; mask: bool [B or 1, 1, S, S] (True = may attend) or None for causal;
        positions: the tokens' position ids, [S] or per row [B, S] (None: 0..S-1); gaps: [B, S, S]
        the time-gap buckets of the tokens' events (`time_gap_buckets`, computed once per encoder
        pass), required when the block has a time bias."""
        B, S, D = x.shape
        H = self.num_heads
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q, k, v = (t.view(B, S, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B, H, S, hd]
        index = torch.arange(S, device=x.device)
        p = index if positions is None else positions
        bias = self.rel_bias[p[..., None, :] - p[..., :, None] + self.max_tokens - 1]  # [(B,) S(t), S(s)]
        if self.time_bias is not None:
            if gaps is None:
                raise ValueError("this HSTU layer has a time-gap bias: pass the events' time-gap buckets")
            bias = bias + self.time_bias[gaps]  # [B, S, S]
        weights = F.silu(q @ k.transpose(-1, -2) + (bias if bias.dim() == 2 else bias[:, None])) / self.max_tokens
        allowed = (index[None, :] <= index[:, None]) if mask is None else mask
        weights = weights.masked_fill(~allowed, 0.0)
        av = (weights @ v).transpose(1, 2).reshape(B, S, D)
        return x + self.out(self.drop(self.norm_attn(av) * u))


def time_gap_buckets(times: torch.Tensor, buckets: int) -> torch.Tensor:
    """[..., S, S] bucket of the gap between the times [..., S] of query t (rows) and key s (columns):
    floor(ln(max(|τ_t - τ_s|, 1)) / 0.301) clamped to [0, buckets] (HSTU's log bucketing)."""
    gap = (times[..., :, None] - times[..., None, :]).abs().clamp_min(1).to(torch.float32)
    return (gap.log() / 0.301).long().clamp(0, buckets)


def max_norm(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """DenseAttention's MaxNormActivation: each token divided by its largest absolute entry."""
    return x / (x.abs().amax(dim=-1, keepdim=True) + eps)


def causal_dense_attention(q: torch.Tensor, kv: torch.Tensor, chunk: int) -> torch.Tensor:
    """out_t = Σ_{s≤t} (q_t·x_s) x_s for q, kv [B, H, S, hd], in O(S·chunk·hd + S·hd²) time and
    O(chunk² + hd²) memory per row and head: within a chunk the causal products directly, across
    chunks through the running hd×hd sum of x_sᵀ x_s (associativity: (q Xᵀ) X = q (Xᵀ X))."""
    state = q.new_zeros(*q.shape[:2], q.shape[-1], q.shape[-1])
    out = []
    for start in range(0, q.shape[2], chunk):
        qc, xc = q[:, :, start : start + chunk], kv[:, :, start : start + chunk]
        out.append(qc @ state + (qc @ xc.transpose(-1, -2)).tril() @ xc)
        state = state + xc.transpose(-1, -2) @ xc
    return torch.cat(out, dim=2)


class DenseAttentionBlock(nn.Module):
    """A DenseAttention block (Argatkin, "DenseAttention: No-Compromise Exact All N×N Interactions
    Algorithm with O(N) Space and Time Complexity"), causal:

        h = MaxNorm(x);  q = h W_Q;  a_t = Σ_{s≤t} (q_t·h_s) h_s   (per head; keys = values = h)
        y = x + dropout(MaxNorm(W_2 ReLU(W_1 a)))

    No softmax, no key, value or output projection, no LayerNorm, one skip connection, as in the
    paper. Causal attention runs in O(N) by chunks (`causal_dense_attention`); an explicit mask
    (candidate isolation) takes the quadratic form. Where this deviates: the paper's cosine relative
    positional embeddings are not implemented (use `model.positions=learned`), nor its local
    attention variants."""

    def __init__(self, cfg: ModelConfig, chunk: int = 64) -> None:
        super().__init__()
        if cfg.embedding_dim % cfg.num_heads:
            raise ValueError(
                f"model.embedding_dim={cfg.embedding_dim} is not divisible by model.num_heads={cfg.num_heads}"
            )
        D, hidden = cfg.embedding_dim, int(cfg.ffn_multiplier * cfg.embedding_dim)
        self.num_heads, self.chunk = cfg.num_heads, chunk
        self.queries = nn.Linear(D, D, bias=False)
        # small, as in the paper: nothing like a softmax bounds Q·Xᵀ
        nn.init.normal_(self.queries.weight, std=0.02 / (2 * cfg.num_layers * D) ** 0.5)
        self.expand = nn.Linear(D, hidden, bias=False)
        self.contract = nn.Linear(hidden, D, bias=False)
        self.drop = Dropout(cfg.dropout)

    def attend(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, S, D = h.shape
        heads = lambda t: t.view(B, S, self.num_heads, D // self.num_heads).transpose(1, 2)  # noqa: E731
        q, kv = heads(self.queries(h)), heads(h)  # [B, H, S, hd]
        if mask is None:
            a = causal_dense_attention(q, kv, self.chunk)
        else:
            a = ((q @ kv.transpose(-1, -2)) * mask) @ kv
        return a.transpose(1, 2).reshape(B, S, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rope=None) -> torch.Tensor:
        a = self.attend(max_norm(x), mask)
        return x + self.drop(max_norm(self.contract(F.relu(self.expand(a)))))


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

    def __init__(self, cfg: ModelConfig, max_tokens: int | None = None, time_buckets: int = 0) -> None:
        super().__init__()
        if cfg.length_groups < 1:
            raise ValueError(f"model.length_groups is {cfg.length_groups}; use 1 (off) or more groups")
        if time_buckets and cfg.encoder != "hstu":
            raise ValueError(f"a time-gap bias is an HSTU encoder's; model.encoder is {cfg.encoder}")
        self.cfg = cfg
        self.max_tokens = max_tokens or cfg.max_seq_len
        self.time_buckets = time_buckets
        make = {
            "transformer": lambda: Block(cfg),
            "hstu": lambda: HSTUBlock(cfg, self.max_tokens, time_buckets),
            "dense_attention": lambda: DenseAttentionBlock(cfg),
        }[cfg.encoder]
        self.blocks = nn.ModuleList(make() for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.embedding_dim)
        self.pos = nn.Embedding(self.max_tokens, cfg.embedding_dim) if cfg.positions == "learned" else None
        self.drop = Dropout(cfg.dropout)
        self._rope_tables: dict[tuple[int, str], torch.Tensor] = {}

    def compile_blocks(self) -> None:
        """Compile each block in place (parameters and state-dict keys unchanged, so DDP, FSDP2 and
        checkpoints see the same module); checkpointing recomputes through the compiled forward."""
        for block in self.blocks:
            block.compile()

    def _rope(self, head_dim: int, device: torch.device) -> torch.Tensor:
        """`rope_cache` for this encoder's length, made once per device (a serving replica calls the
        encoder for every request). Plain tensors outside autograd, even when first asked under inference_mode."""
        cache = self._rope_tables
        key = (head_dim, str(device))
        if key not in cache:
            with torch.inference_mode(False), torch.no_grad():
                cache[key] = rope_cache(self.max_tokens, head_dim, device)
        return cache[key]

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D] right-padded; lengths: [B]; mask: optional bool [B or 1, 1, S, S] replacing
        the causal one; positions: optional [B, S] position ids (default 0..S-1); times: [B, S] each
        token's event time in seconds, required by (and only read by) an encoder with a time bias.
        Returns [B, S, D]."""
        B, S, D = x.shape
        if self.time_buckets and (times is None or times.shape != (B, S)):
            got = None if times is None else tuple(times.shape)
            raise ValueError(f"this HSTU encoder has a time-gap bias: it needs the tokens' times [{B}, {S}], got {got}")
        times = times if self.time_buckets else None
        last = S - 1 if positions is None else int(positions.max())
        if last >= self.max_tokens:
            raise ValueError(
                f"position {last} is past the encoder's {self.max_tokens} tokens "
                f"(model.max_seq_len={self.cfg.max_seq_len})"
            )
        pos = torch.arange(S, device=x.device) if positions is None else positions
        rope = None
        if self.cfg.encoder != "transformer":  # no RoPE: HSTU's relative bias reads the position ids
            if self.pos is not None:
                x = x + self.pos(pos)[None] if positions is None else x + self.pos(pos)
            rope = pos if self.cfg.encoder == "hstu" else None
        elif self.pos is not None:
            x = x + self.pos(pos)[None] if positions is None else x + self.pos(pos)
        else:
            rope = self._rope(D // self.cfg.num_heads, x.device)
            rope = rope[:S] if positions is None else rope[positions]  # [S, hd/2] or [B, S, hd/2]
        if mask is None and positions is None and self.cfg.length_groups > 1 and B > 1:
            # Rows never attend across each other and the causal mask never reaches a padded key,
            # so each group of rows can run cut to its longest row: the same outputs at every
            # valid position, padded positions past a group's width come back as zeros.
            groups = length_groups(lengths, self.cfg.length_groups, S)
            out = []
            for rows, width in groups:
                cut = None if rope is None else rope[:width]
                t = None if times is None else times[rows, :width]
                out.append(F.pad(self._run(x[rows, :width], None, cut, t), (0, 0, 0, S - width)))
            return torch.cat(out)[torch.argsort(torch.cat([rows for rows, _ in groups]))]
        return self._run(x, mask, rope, times)

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, rope, times: torch.Tensor | None) -> torch.Tensor:
        x = self.drop(x)
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        args = (mask, rope) if times is None else (mask, rope, time_gap_buckets(times, self.time_buckets))
        for block in self.blocks:
            # Checkpointing keeps only each block's input and recomputes the block in backward
            # (dropout masks are replayed from the saved RNG state).
            x = checkpoint(block, x, *args, use_reentrant=False) if recompute else block(x, *args)
        return self.norm(x)


def length_groups(lengths: torch.Tensor, groups: int, width: int) -> list[tuple[torch.Tensor, int]]:
    """Rows sorted by length, cut into `groups` groups of (nearly) equal size: (row indices, width of
    the group's longest row, at least 1 and at most `width`) per non-empty group."""
    order = torch.argsort(lengths, stable=True)
    return [(rows, int(lengths[rows].max().clamp(1, width))) for rows in order.tensor_split(groups) if rows.numel()]
