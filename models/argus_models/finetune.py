"""Fine-tuning tasks on impressions (slates of shown items), from a pre-trained ARGUS model.

A user's sequence is encoded once (one causal pass); each request r of the user is a slate shown
before event `pos[r]`, scored from what was known then:

pairwise (two-tower): s(r, j) = <q_{pos-1}, v_j>, the next-item query against the item vector;
    loss = mean over (clicked i, shown-not-clicked j) pairs of softplus(s_j − s_i)  (BPR).
ranker: per-action logits of every slate item — one_token models through the row-wise feedback
    MLP, three_token models by candidate isolation (the slate's item tokens after the history and
    the request's context token, each attending to the history and itself) — trained on the
    impression-level labels (an item shown but not clicked has no positive action).

The module keeps the pre-trained names (`sparse.*`, `objective.dense.*`), so a fine-tuned
checkpoint loads wherever a pre-trained one does (Serve, Tune).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from argus_models.losses import feedback_loss
from argus_models.model import ITEM_IDS, NEG_ITEM, ArgusDenseArch, ArgusSparseArch
from argus_models.task import DEFAULT_ACTION_WEIGHT
from argus_models.tokenization import EVENT_TIMES


@dataclass
class SlateBatch(Pipelineable):
    """Users' sequences plus their requests.

    sparse_features: per-event features of the windows + NEG_ITEM = the slates' item ids, flat
    items [B, W], lengths [B]: the windows (as in SequenceBatch)
    req_row [R]: window row of each request; req_pos [R]: index in the window of the event the
        slate was shown before (≥ 1: at least one history event)
    slate [R, K] item ids (0 = no item); clicked [R, K] 0/1; labels [R, K, A] action targets
    times [B, W]: the windows' event times, only for a model that reads them (HSTU's time bias)
    """

    sparse_features: KeyedJaggedTensor
    items: torch.Tensor
    lengths: torch.Tensor
    req_row: torch.Tensor
    req_pos: torch.Tensor
    slate: torch.Tensor
    clicked: torch.Tensor
    labels: torch.Tensor
    times: torch.Tensor | None = None

    def _map(self, fn) -> "SlateBatch":
        return SlateBatch(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v) for f in fields(self)})

    def to(self, device: torch.device, non_blocking: bool = False) -> "SlateBatch":
        return self._map(lambda t: t.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            if getattr(self, f.name) is not None:
                getattr(self, f.name).record_stream(stream)

    def pin_memory(self) -> "SlateBatch":
        return self._map(lambda t: t.pin_memory())


def pairwise_loss(
    scores: torch.Tensor, clicked: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR over every (clicked, not clicked) pair of a slate. scores/clicked/valid: [R, K].

    Returns (mean loss over pairs, number of pairs)."""
    pos = (clicked > 0) & valid
    neg = (clicked == 0) & valid
    pairs = pos[:, :, None] & neg[:, None, :]  # [R, K, K]: (i clicked, j not)
    diff = scores[:, None, :] - scores[:, :, None]  # s_j − s_i
    n = pairs.sum()
    loss = (F.softplus(diff.float()) * pairs).sum() / n.clamp_min(1)
    return loss, n


def pairwise_correct(scores: torch.Tensor, clicked: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """(pairs ordered correctly, pairs) — ties count half."""
    pos = (clicked > 0) & valid
    neg = (clicked == 0) & valid
    pairs = pos[:, :, None] & neg[:, None, :]
    diff = scores[:, :, None] - scores[:, None, :]  # s_i − s_j
    correct = ((diff > 0).float() + 0.5 * (diff == 0).float())[pairs].sum()
    return float(correct), int(pairs.sum())


class SlateObjective(nn.Module):
    def __init__(self, dense: ArgusDenseArch, mode: str, action_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if mode not in ("pairwise", "ranker"):
            raise ValueError(f"unknown fine-tuning mode {mode!r}; use pairwise or ranker")
        if mode == "ranker" and not dense.schema.actions:
            raise ValueError("ranker fine-tuning needs a model with action heads; this one has none")
        self.dense, self.mode = dense, mode
        self.action_weights = {
            a.name: float((action_weights or {}).get(a.name, DEFAULT_ACTION_WEIGHT)) for a in dense.schema.actions
        }

    def slate_outputs(self, emb: dict[str, torch.Tensor], batch: SlateBatch) -> torch.Tensor:
        """pairwise: scores [R, K]; ranker: feedback logits [R, K, Σ outputs]."""
        R, K = batch.slate.shape
        if batch.times is not None:
            emb = {**emb, EVENT_TIMES: batch.times}  # an HSTU encoder with a time-gap bias reads them
        slate_vec = self.dense.item_vectors(emb[NEG_ITEM], batch.slate.reshape(-1)).view(R, K, -1)
        if self.mode == "ranker" and self.dense.tokens.in_context:
            return self._isolated_slates(emb, batch, slate_vec)
        _, head_in = self.dense.encode(emb, batch.lengths)  # [B, W-1, H]; index t predicts event t+1
        h = head_in[batch.req_row, batch.req_pos - 1]  # [R, H]
        if self.mode == "pairwise":
            return torch.einsum("rd,rkd->rk", self.dense.query(h), slate_vec)
        return self.dense.candidate_logits(slate_vec, head_in=h)

    def _isolated_slates(
        self, emb: dict[str, torch.Tensor], batch: SlateBatch, slate_vec: torch.Tensor
    ) -> torch.Tensor:
        """One pass per user: every slate item of every request of the row goes after the row's
        window, attending to the history before its request (and to itself). Returns [R, K, Σ]."""
        R, K, D = slate_vec.shape
        B = batch.lengths.shape[0]
        rows = batch.req_row  # requests come grouped by row, rows ascending (SlateCollator)
        first = torch.searchsorted(rows, torch.arange(B, device=rows.device))
        slot = torch.arange(R, device=rows.device) - first[rows]  # request's index within its row
        M = (int(slot.max()) + 1) * K if R else K
        cols = slot[:, None] * K + torch.arange(K, device=rows.device)[None]  # [R, K]
        cand = slate_vec.new_zeros(B, M, D)
        cand[rows[:, None], cols] = slate_vec
        events = torch.zeros(B, M, dtype=torch.int64, device=rows.device)
        events[rows[:, None], cols] = batch.req_pos[:, None].expand(R, K)
        seq_emb = {k: v for k, v in emb.items() if k != NEG_ITEM}
        return self.dense.candidate_logits(cand, emb=seq_emb, lengths=batch.lengths, events=events)[rows[:, None], cols]

    def forward(self, emb: dict[str, torch.Tensor], batch: SlateBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Set here, not in the task: TrainPipelineSparseDist FX-traces the task, whose `emb` is a Proxy.
        emb = {**emb, ITEM_IDS: batch.items}  # the item tower adds side features by id
        out = self.slate_outputs(emb, batch)
        valid = batch.slate > 0
        if self.mode == "pairwise":
            loss, n = pairwise_loss(out, batch.clicked, valid)
            return loss, {"loss": loss.detach(), "pairs": n.detach().float()}
        logits = self.dense.action_logits(out)
        loss = out.new_zeros((), dtype=torch.float32)
        logs = {}
        for idx, head in enumerate(self.dense.schema.actions):
            # graded feedback (a rating) exists only for clicked items
            mask = valid & (batch.clicked > 0) if head.kind == "graded" else valid
            if not mask.any():
                continue
            l_a = feedback_loss(head, logits[head.name][mask], batch.labels[..., idx][mask]).mean()
            loss = loss + self.action_weights[head.name] * l_a
            logs[f"loss_{head.name}"] = l_a.detach()
        logs["loss"] = loss.detach()
        return loss, logs


class SlateTask(nn.Module):
    """Sparse arch + slate objective; `forward(batch) -> (loss, logs)` for TrainPipelineSparseDist."""

    def __init__(
        self, sparse: ArgusSparseArch, objective: SlateObjective, precision: str = "fp32", device_type: str = "cpu"
    ) -> None:
        super().__init__()
        self.sparse, self.objective = sparse, objective
        self.precision, self.device_type = precision, device_type

    def forward(self, batch: SlateBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.sparse(batch.sparse_features)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.objective(emb, batch)
