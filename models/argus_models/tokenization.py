"""How an event becomes transformer tokens and where the heads read: one-token and three-token
events, two small classes behind one interface. The parameters stay on the dense arch (their names
are the checkpoints' keys: `token_proj`, `token_type`, `encoder`, `item_head`, ...); a tokenisation
creates them and holds the code paths that differ.

one_token: event t is one token Proj([E_item; ΣE_ctx; ΣE_fb]); the heads read the state h_t with
  the next event's context: query MLP([h_t; E_ctx(c_{t+1})]), feedback MLP([h_t; E_ctx(c_{t+1});
  E_item(i_{t+1})]). A candidate is scored from the request's head input alone.
three_token: event t is the tokens [c_t, i_t, f_t] (context, item, feedback; f is left out when the
  data has no actions, and c is a learned "next event" token plus ΣE_ctx). The next-item head reads
  the state at c_{t+1} (history + the next context), the feedback head the state at i_{t+1}
  (history + context + item), as p(c)·p(i|c)·p(f|c,i) factorises. A candidate is scored in the
  sequence: its item token after the history, by candidate isolation (`in_context`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from argus_models.config import ModelConfig
from argus_models.encoder import CausalEncoder, Dropout
from argus_models.rows import pad_rows

Emb = dict[str, torch.Tensor]
# not a table feature: the padded [B, W] event times (seconds) beside the looked-up rows, for an
# HSTU encoder with a time-gap bias (`ModelSchema.time_buckets`)
EVENT_TIMES = "event_times"


def event_times(arch: nn.Module, emb: Emb) -> torch.Tensor | None:
    """The window's event times [B, W] when the encoder reads them (None otherwise)."""
    if not arch.schema.time_buckets:
        return None
    if EVENT_TIMES not in emb:
        raise ValueError(
            f"the model's HSTU encoder has a time-gap bias: the inputs need {EVENT_TIMES!r} (each event's "
            "timestamp in seconds) beside the looked-up rows"
        )
    return emb[EVENT_TIMES]


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), Dropout(dropout), nn.Linear(d_hidden, d_out))


class OneToken:
    name = "one_token"
    tokens_per_event = 1
    in_context = False  # candidates are scored from the head input, without the history

    def build(self, arch: nn.Module, cfg: ModelConfig, outputs: int) -> None:
        D = cfg.embedding_dim
        arch.token_proj = nn.Linear(D * (1 + arch.has_ctx + arch.has_fb), D)
        arch.encoder = CausalEncoder(cfg, time_buckets=arch.schema.time_buckets)
        arch.item_head = mlp(D * (1 + arch.has_ctx), 2 * D, D, cfg.dropout)
        arch.feedback_head = mlp(D * (2 + arch.has_ctx), 2 * D, outputs, cfg.dropout) if arch.has_fb else None

    def encode(self, arch, emb: Emb, lengths: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States [B, W-1, D] and the heads' input [B, W-1, H]: h_t with the context of t+1."""
        ctx = arch.context(emb)
        parts = [items] + ([ctx] if ctx is not None else [])
        if arch.has_fb:
            parts.append(arch.feedback(emb))
        tokens = arch.token_proj(torch.cat(parts, dim=-1))[:, :-1]  # [B, W-1, D]
        times = event_times(arch, emb)
        state = arch.encoder(tokens, (lengths - 1).clamp_min(1), times=None if times is None else times[:, :-1])
        head_in = torch.cat([state, ctx[:, 1:]], dim=-1) if ctx is not None else state
        return state, head_in

    def outputs(self, arch, emb: Emb, lengths: torch.Tensor, items: torch.Tensor, at: Callable) -> dict:
        state, head_in = self.encode(arch, emb, lengths, items)
        state, head_in = at(state), at(head_in)
        # The N valid positions, padded for bf16 kernels (argus_models.rows) and sliced back.
        n, padded = head_in.shape[0], pad_rows(head_in)
        out = {"state": state, "query": arch.query(padded)[:n]}
        if arch.feedback_head is not None:
            item = pad_rows(at(items[:, 1:]))
            out["feedback"] = arch.feedback_head(torch.cat([padded, item], dim=-1))[:n]
        return out

    def candidate_inputs(self, arch, candidates: torch.Tensor, head_in, emb, lengths, events) -> torch.Tensor:
        """The feedback head's input [B, M, 2D(+D)] from the head input [B, H] of each row's next
        event (one row per candidate through the feedback MLP: no candidate sees another)."""
        if head_in is None:
            raise ValueError("one_token models score candidates from the request's head input: pass head_in")
        if events is not None:
            raise ValueError("one_token models take the head input of the scored event, not `events`")
        h = head_in[:, None, :].expand(-1, candidates.shape[1], -1)
        return torch.cat([h, candidates], dim=-1)


class ThreeToken:
    name = "three_token"
    in_context = True  # candidates are scored in the sequence: needs the history and the next context

    def build(self, arch: nn.Module, cfg: ModelConfig, outputs: int) -> None:
        D = cfg.embedding_dim
        self.tokens_per_event = 2 + arch.has_fb  # c, i (, f)
        arch.token_type = nn.Parameter(torch.randn(self.tokens_per_event, D) * 0.02)  # rows: c, i, f
        arch.ctx_proj = nn.Linear(D, D) if arch.has_ctx else None
        arch.fb_proj = nn.Linear(D, D) if arch.has_fb else None
        arch.encoder = CausalEncoder(
            cfg, max_tokens=self.tokens_per_event * (cfg.max_seq_len + 1), time_buckets=arch.schema.time_buckets
        )
        arch.item_head = mlp(D, 2 * D, D, cfg.dropout)
        arch.feedback_head = mlp(D, 2 * D, outputs, cfg.dropout) if arch.has_fb else None

    def event_tokens(self, arch, emb: Emb, items: torch.Tensor) -> torch.Tensor:
        """[B, W, k, D] tokens (c_t, i_t, f_t) of every event."""
        ctx, fb = arch.context(emb), arch.feedback(emb)
        c = arch.token_type[0].expand_as(items)
        if ctx is not None:
            c = c + arch.ctx_proj(ctx)
        parts = [c, items + arch.token_type[1]]
        if fb is not None:
            parts.append(arch.fb_proj(fb) + arch.token_type[2])
        return torch.stack(parts, dim=2)

    def event_states(self, arch, emb: Emb, lengths: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Encoder states [B, W, k, D], token j of event t at position k·t + j."""
        tokens = self.event_tokens(arch, emb, items)
        B, W, k, D = tokens.shape
        times = event_times(arch, emb)
        times = None if times is None else times.repeat_interleave(k, dim=1)  # each token at its event's time
        return arch.encoder(tokens.reshape(B, W * k, D), lengths * k, times=times).view(B, W, k, D)

    def encode(self, arch, emb: Emb, lengths: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States [B, W-1, D] at the context token c_{t+1}, which is also the heads' input."""
        state = self.event_states(arch, emb, lengths, items)[:, 1:, 0]
        return state, state

    def outputs(self, arch, emb: Emb, lengths: torch.Tensor, items: torch.Tensor, at: Callable) -> dict:
        states = self.event_states(arch, emb, lengths, items)  # [B, W, k, D]
        state = at(states[:, 1:, 0])
        n = state.shape[0]
        out = {"state": state, "query": arch.query(pad_rows(state))[:n]}
        if arch.feedback_head is not None:
            out["feedback"] = arch.feedback_head(pad_rows(at(states[:, 1:, 1])))[:n]
        return out

    def candidate_inputs(self, arch, candidates: torch.Tensor, head_in, emb, lengths, events) -> torch.Tensor:
        """Candidate isolation: the feedback head's input [B, M, D] (the states at the candidates'
        item tokens) for M candidate item vectors [B, M, D].

        emb/lengths: each row's window of events; candidate m of row b stands in for the item of
        event `events[b, m]` (default: the row's last event, lengths-1, whose context is known and
        whose item is not). The tokens are the window, then one item token per candidate at the
        position that event's item token has; a candidate attends to the tokens before it — the
        history and that event's context token c_e — and to itself only
        (`candidate_isolation_mask`), so its logits never depend on the other candidates. One
        pass serves every request of a user (fine-tuning) or one request with many candidates
        (Serve)."""
        if emb is None or lengths is None:
            raise ValueError("three_token models score candidates in context: pass the window (emb, lengths)")
        tokens = self.event_tokens(arch, emb, arch.window_items(emb))  # [B, W, k, D]
        B, W, k, D = tokens.shape
        M = candidates.shape[1]
        if events is None:
            events = (lengths - 1)[:, None].expand(B, M)
        prefix = events * k + 1  # [B, M]: history tokens + c_e
        S = min(W * k, int((lengths * k).max()))
        x = torch.cat([tokens.reshape(B, W * k, D)[:, :S], candidates + arch.token_type[1]], dim=1)  # [B, S + M, D]
        positions = torch.cat([torch.arange(S, device=x.device).expand(B, -1), prefix], dim=1)
        mask = candidate_isolation_mask(torch.minimum(lengths * k, torch.full_like(lengths, S)), prefix, S)
        times = event_times(arch, emb)
        if times is not None:  # a candidate's item token is at its event's time
            times = torch.cat([times.repeat_interleave(k, dim=1)[:, :S], times.gather(1, events)], dim=1)
        states = arch.encoder(x, lengths, mask=mask, positions=positions, times=times)
        return states[:, S:]


TOKENIZATIONS = {t.name: t for t in (OneToken, ThreeToken)}


def candidate_isolation_mask(real: torch.Tensor, prefix: torch.Tensor, slots: int) -> torch.Tensor:
    """bool [B, 1, S+M, S+M] (True = may attend): `slots` = S right-padded history positions of
    which the first `real[b]` exist, then M candidates; candidate m sees the history positions
    before `prefix[b, m]` and itself.

    History positions attend causally among the real ones; no candidate sees another candidate or
    padding. Padded rows (history or candidate, outputs unused) keep their own position so no row
    is empty.
    """
    B, M = prefix.shape
    S, n = slots, slots + prefix.shape[1]
    pos = torch.arange(n, device=prefix.device)
    hist_k = pos[None, :S] < real[:, None]  # [B, S] real history keys
    causal = pos[:S, None] >= pos[None, :S]  # [S, S]
    mask = torch.zeros(B, n, n, dtype=torch.bool, device=prefix.device)
    mask[:, :S, :S] = causal[None] & hist_k[:, None, :]
    mask[:, S:, :S] = (pos[None, None, :S] < prefix[:, :, None]) & hist_k[:, None, :]  # candidate → its history
    mask |= torch.eye(n, dtype=torch.bool, device=prefix.device)[None]
    return mask[:, None]
