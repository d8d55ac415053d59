"""The training task: batch type, losses over the model's named outputs, and the module that
`TrainPipelineSparseDist` drives (`forward(batch) -> (loss, outputs)`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from argus_models.losses import chunked_full_softmax_loss, feedback_loss, sampled_softmax_loss
from argus_models.model import ITEM_IDS, NEG_ITEM, ArgusDenseArch, ArgusSparseArch
from argus_models.rows import pad_rows
from argus_models.tokenization import EVENT_TIMES

DEFAULT_ACTION_WEIGHT = 1.0  # λ_a of an action loss.action_weights leaves out


@dataclass
class SequenceBatch(Pipelineable):
    """A batch of event windows (history + the events to predict).

    sparse_features: KJT with one value per event for every per-event feature, plus NEG_ITEM
                     (ids looked up in the item table, all in row 0)
    items:    [B, W]  item ids (0 = padding)
    lengths:  [B]     events in each window
    actions:  [B, W, A] action targets per event (binary 0/1, ratio in [0,1], graded level index)
    neg_ids:  [n]     the NEG_ITEM ids, in order
    times:    [B, W]  event times in seconds (0 = padding), only for a model whose encoder reads them
    """

    sparse_features: KeyedJaggedTensor
    items: torch.Tensor
    lengths: torch.Tensor
    actions: torch.Tensor
    neg_ids: torch.Tensor
    times: torch.Tensor | None = None

    def _map(self, kjt: KeyedJaggedTensor, fn) -> "SequenceBatch":
        return SequenceBatch(
            sparse_features=kjt,
            items=fn(self.items),
            lengths=fn(self.lengths),
            actions=fn(self.actions),
            neg_ids=fn(self.neg_ids),
            times=None if self.times is None else fn(self.times),
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> "SequenceBatch":
        return self._map(
            self.sparse_features.to(device=device, non_blocking=non_blocking),
            lambda t: t.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.sparse_features.record_stream(stream)
        for t in (self.items, self.lengths, self.actions, self.neg_ids, self.times):
            if t is not None:
                t.record_stream(stream)

    def pin_memory(self) -> "SequenceBatch":
        return self._map(self.sparse_features.pin_memory(), lambda t: t.pin_memory())

    def dense_inputs(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The looked-up rows as the dense arch reads them: with the item ids (the item tower adds
        side features by id) and, where the batch has them, the event times (HSTU's time bias)."""
        extra = {ITEM_IDS: self.items} | ({} if self.times is None else {EVENT_TIMES: self.times})
        return {**emb, **extra}


class ArgusObjective(nn.Module):
    """L = L_item + Σ_a λ_a L_a over every position of every window.

    next_item_loss: "corrected_logq" | "logq" (sampled, mixed negatives) | "full_softmax"
    log_q: [C+1] log-probability of drawing each item as a negative (see losses.mixed_log_q).
    """

    def __init__(
        self,
        dense: ArgusDenseArch,
        log_q: torch.Tensor,
        next_item_loss: str = "corrected_logq",
        in_batch_negatives: int = 128,
        action_weights: dict[str, float] | None = None,
        temperature: float = 1.0,
        exclude_history: bool = False,
    ) -> None:
        super().__init__()
        if next_item_loss not in ("corrected_logq", "logq", "full_softmax"):
            raise ValueError(f"unknown next-item loss {next_item_loss!r}; use corrected_logq, logq or full_softmax")
        self.dense = dense
        self.register_buffer("log_q", log_q.float(), persistent=False)
        self.next_item_loss = next_item_loss
        self.in_batch_negatives = in_batch_negatives
        heads = {h.name for h in dense.schema.actions}
        unknown = set(action_weights or {}) - heads
        if unknown:
            raise ValueError(
                f"loss.action_weights names unknown action(s) {sorted(unknown)}; the data has {sorted(heads)}"
            )
        self.action_weights = {h: float((action_weights or {}).get(h, DEFAULT_ACTION_WEIGHT)) for h in sorted(heads)}
        self.temperature = temperature
        if exclude_history and next_item_loss != "full_softmax":
            raise ValueError("exclude_history applies to the full softmax only (loss.next_item=full_softmax)")
        self.exclude_history = exclude_history

    def forward(
        self, emb: dict[str, torch.Tensor], batch: SequenceBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Set here, not in the task: TrainPipelineSparseDist FX-traces the task, whose `emb` is a Proxy.
        emb = batch.dense_inputs(emb)
        W = batch.items.shape[1]
        valid = torch.arange(W - 1, device=batch.lengths.device)[None, :] < (batch.lengths - 1)[:, None]  # [B, W-1]
        out = self.dense(emb, batch.lengths, valid)  # the heads' outputs at the N valid positions
        query = out["query"]  # [N, D]
        pos_emb = out["target"]  # [N, D]
        pos_ids = batch.items[:, 1:][valid]  # [N]
        history = history_pairs(batch.items, valid) if self.exclude_history else None
        loss = self._next_item(query, pos_emb, pos_ids, emb[NEG_ITEM], batch.neg_ids, history)
        logs = {"loss_item": loss.detach()}
        if "feedback" in out:
            logits = self.dense.action_logits(out["feedback"])
            for idx, head in enumerate(self.dense.schema.actions):
                target = batch.actions[:, 1:, idx][valid]
                l_a = feedback_loss(head, logits[head.name], target).mean()
                loss = loss + self.action_weights[head.name] * l_a
                logs[f"loss_{head.name}"] = l_a.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    def _next_item(
        self,
        query: torch.Tensor,
        pos_emb: torch.Tensor,
        pos_ids: torch.Tensor,
        neg_emb: torch.Tensor,
        neg_ids: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        t = self.temperature
        if t != 1.0:
            query = query / t  # scaling [N, D] instead of every [N, K] logit
        if self.next_item_loss == "full_softmax":
            # neg_emb holds the whole catalogue; row 0 (padding) is not a class. The [N, C] logits
            # are made and consumed chunk by chunk, never held whole.
            items = self.dense.item_vectors(neg_emb[1:], neg_ids[1:])
            return chunked_full_softmax_loss(query, items, pos_ids, history)
        if self.in_batch_negatives > 0:
            pick = torch.randint(0, pos_ids.numel(), (self.in_batch_negatives,), device=pos_ids.device)
            neg_emb = torch.cat([pos_emb[pick], self.dense.item_vectors(neg_emb, neg_ids)])
            neg_ids = torch.cat([pos_ids[pick], neg_ids])
        else:
            neg_emb = self.dense.item_vectors(neg_emb, neg_ids)
        pos_logits = (query * pos_emb).sum(-1)  # [N]
        neg_logits = (pad_rows(query) @ neg_emb.T)[: pos_ids.shape[0]]  # [N, K] (rows padded for bf16 kernels)
        hit = neg_ids[None, :] == pos_ids[:, None]
        return sampled_softmax_loss(
            self.next_item_loss, pos_logits, neg_logits, self.log_q[pos_ids], self.log_q[neg_ids], hit
        ).mean()


def history_pairs(items: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) pairs: for each prediction row n — valid position (b, t) in row-major order, which
    predicts items[b, t+1] — every item of its history items[b, 0..t], except the target itself.

    items: [B, W]; valid: [B, W-1]. The full softmax drops these items from row n's denominator
    (`loss.exclude_history`), as evaluation and Serve drop a user's seen items from the ranking.
    """
    B, W = items.shape
    row_of = torch.cumsum(valid.reshape(-1).long(), 0).view(B, W - 1) - 1  # [B, W-1] row n of (b, t)
    t, s = torch.tril_indices(W - 1, W - 1, device=items.device)  # pairs s ≤ t
    keep = valid[:, t]  # [B, P]
    b = torch.arange(B, device=items.device)[:, None].expand_as(keep)
    hist, target = items[:, s], items[:, t + 1]  # [B, P]
    keep = keep & (hist != target) & (hist > 0)
    return row_of[b[keep], t.expand_as(keep)[keep]], hist[keep]


class ArgusTrainTask(nn.Module):
    """Sparse arch + objective. `forward(batch) -> (loss, logs)` as TrainPipelineSparseDist expects.

    precision "bf16": the dense arch runs under bf16 autocast (matmuls on tensor cores / AMX);
    embeddings, losses (float32/float64 logits) and all optimizer states stay float32.
    """

    def __init__(
        self, sparse: ArgusSparseArch, objective: ArgusObjective, precision: str = "fp32", device_type: str = "cpu"
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}; use fp32 or bf16")
        self.sparse = sparse
        self.objective = objective
        self.precision = precision
        # A plain string, not read from a tensor: TrainPipelineSparseDist FX-traces this forward.
        self.device_type = device_type

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        emb = self.sparse(batch.sparse_features)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.objective(emb, batch)
