"""Next-item and feedback losses.

Sampled softmax with **corrected logQ** (Khrylchenko et al., RecSys 2025), standard logQ
(Yi et al., 2019) and full softmax. Negatives are drawn from one proposal Q (in this platform a
mixture of in-batch and uniform sampling, see `mixed_log_q`); a negative equal to the positive is
masked to −inf. Training calls `sampled_softmax_loss`, which makes the same values and gradients as
the composed `corrected_logq_loss` / `logq_loss` in fewer passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from argus_models.config import ActionHead
from argus_models.rows import pad_rows


def mixed_log_q(item_probs: torch.Tensor, n_in_batch: int, n_uniform: int) -> torch.Tensor:
    """log Q(j) of one draw from the mixture that samples in-batch and uniform negatives.

    item_probs: [N+1] training-split item frequencies (index 0 = padding, probability 0).
    In-batch negatives are positives of the batch, so they follow item popularity; uniform
    negatives follow 1/N. Returns [N+1] (index 0 is −inf).
    """
    num_items = item_probs.numel() - 1
    total = n_in_batch + n_uniform
    uniform = torch.full_like(item_probs, 1.0 / num_items)
    uniform[0] = 0.0
    q = (n_in_batch / total) * item_probs + (n_uniform / total) * uniform
    return q.log()


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for float32/bf16 logits, float64 for float64 ones."""
    return torch.promote_types(logits.dtype, torch.float32)


def corrected_logq_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    hit_mask: torch.Tensor,
) -> torch.Tensor:
    """Corrected-logQ sampled softmax, per example.

    pos_logits: [N]     f(u, i)
    neg_logits: [N, K]  f(u, j) for the K sampled negatives
    pos_log_q:  [N]     log Q(i)
    neg_log_q:  [K] or [N, K]  log Q(j)
    hit_mask:   [N, K]  True where negative j equals the positive i (removed)

    ℓ  = −f(u,i) + logsumexp_j( f(u,j) − log Q'(j) ),  Q'(j) = Q(j) / (1 − Q(i))
    P̂ = e^{f(u,i)} / ( e^{f(u,i)} + (1/k) Σ_j e^{f(u,j) − log Q'(j)} ),  k = non-hit negatives
    L  = stopgrad(1 − P̂) · ℓ                                           returns [N]

    Computed in float32 (float64 inputs stay float64): logsumexp is shifted by its maximum, and
    the [N, K] terms in float64 cost twice the time on CPU for no measurable change.
    """
    dt = _loss_dtype(pos_logits)
    pos = pos_logits.to(dt)
    log_q_prime = neg_log_q.to(dt) - torch.log1p(-pos_log_q.double().exp()).to(dt)[:, None]  # [N, K]
    corrected = (neg_logits.to(dt) - log_q_prime).masked_fill(hit_mask, float("-inf"))
    lse = torch.logsumexp(corrected, dim=1)  # [N]
    loss = lse - pos
    k = (~hit_mask).sum(dim=1).clamp_min(1).to(dt)
    # log P̂ = f_i − log(e^{f_i} + e^{lse}/k)
    log_p_hat = pos - torch.logaddexp(pos, lse - k.log())
    weight = (1.0 - log_p_hat.exp()).detach()
    return (weight * loss).to(pos_logits.dtype)


def logq_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    hit_mask: torch.Tensor,
) -> torch.Tensor:
    """Standard logQ-corrected sampled softmax (positive in the denominator), per example [N]."""
    dt = _loss_dtype(pos_logits)
    pos = pos_logits.to(dt) - pos_log_q.to(dt)
    neg = (neg_logits.to(dt) - neg_log_q.to(dt)).masked_fill(hit_mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).to(pos_logits.dtype)


class _SampledSoftmax(torch.autograd.Function):
    """`corrected_logq_loss` or `logq_loss` with its gradient made in the forward pass.

    Both losses are a softmax over the [N, K] corrected logits: the forward builds that softmax in
    one float32 buffer, in place (subtract log Q, mask the hits, shift, exponentiate), and turns it
    into d loss / d neg_logits in place; backward scales the saved gradients by its incoming one.
    The composed autograd form takes about twice as many passes over [N, K] and three more
    buffers, which is what a small model's CPU step spends its time on (memory traffic).
    Rows without a single non-hit negative give loss 0 and no gradient.
    """

    @staticmethod
    def forward(ctx, pos_logits, neg_logits, pos_log_q, neg_log_q, hit_mask, corrected: bool):
        dt = _loss_dtype(pos_logits)
        pos = pos_logits.detach().to(dt)
        z = neg_logits.detach().to(dt) - neg_log_q.to(dt)  # [N, K], the only [N, K] buffer
        z.masked_fill_(hit_mask, float("-inf"))
        if corrected:
            # log Q'(j) = log Q(j) − log(1 − Q(i)): a per-row shift of the logits, i.e. of the lse only
            pos_lq = torch.log1p(-pos_log_q.double().exp()).to(dt)
            top = z.amax(dim=1)
        else:
            pos = pos - pos_log_q.to(dt)  # the positive is one of the softmax's terms
            top = torch.maximum(z.amax(dim=1), pos)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        p = z.sub_(top[:, None]).exp_()  # unnormalised softmax, in place of the logits
        denom = p.sum(dim=1)
        if corrected:
            valid = denom > 0
            lse = top + denom.log() + pos_lq
            k = (~hit_mask).sum(dim=1).clamp_min(1).to(dt)
            # log P̂ = f_i − log(e^{f_i} + e^{lse}/k);  L = stopgrad(1 − P̂)·(lse − f_i)
            weight = torch.where(valid, 1.0 - (pos - torch.logaddexp(pos, lse - k.log())).exp(), 0.0)
            loss = torch.where(valid, weight * (lse - pos), 0.0)
            grad_pos = -weight
            grad_neg = p.mul_((weight / denom.clamp_min(torch.finfo(dt).tiny))[:, None])
        else:
            e_pos = (pos - top).exp()
            denom = denom + e_pos
            loss = top + denom.log() - pos
            grad_pos = e_pos / denom - 1.0
            grad_neg = p.div_(denom[:, None])
        ctx.save_for_backward(grad_pos, grad_neg)
        ctx.dtypes = (pos_logits.dtype, neg_logits.dtype)
        return loss.to(pos_logits.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_pos, grad_neg = ctx.saved_tensors
        g = grad_loss.to(grad_pos.dtype)
        return (grad_pos * g).to(ctx.dtypes[0]), (grad_neg * g[:, None]).to(ctx.dtypes[1]), None, None, None, None


def sampled_softmax_loss(
    kind: str,
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    hit_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-example sampled softmax loss [N] of `kind` "corrected_logq" or "logq": the values and
    gradients of `corrected_logq_loss` / `logq_loss` (their references), in fewer passes."""
    if kind not in ("corrected_logq", "logq"):
        raise ValueError(f"unknown sampled softmax {kind!r}; use corrected_logq or logq")
    return _SampledSoftmax.apply(pos_logits, neg_logits, pos_log_q, neg_log_q, hit_mask, kind == "corrected_logq")


# TrainPipelineSparseDist FX-traces the training task: keep this call one node of its graph.
torch.fx.wrap("sampled_softmax_loss")


def full_softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, excluded: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue, in float32. logits: [N, C] for items 1..C (column j is
    item j+1; the padding item is not a class); targets: [N] item ids in 1..C; excluded: optional
    (rows, item ids) left out of those rows' denominators (never a row's target).
    Training uses `chunked_full_softmax_loss`; this whole-logits form is its reference."""
    logits = logits.float()
    if excluded is not None:
        rows, items = excluded
        # in place on the float32 copy (its backward does not need it)
        logits.index_put_((rows, items - 1), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, targets - 1, reduction="none")


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean of `full_softmax_loss(query @ items.T, ...)` without the [N, C] logits: rows are taken
    `chunk` at a time, their logits made in `dtype` (bf16 as autocast would, or float32) and the
    softmax taken in float32. The gradients are made in the same pass (the loss is a mean, so
    d loss / d logits = (softmax − onehot) / N) and backward only scales them by its incoming scalar.

    On a 3,706-item catalogue with 12,800 positions this skips ~190 MB of float32 logits, their
    copies and the log-softmax buffers, which dominate a CPU step (memory traffic, not FLOPs), and
    one of the four [N, D] x [D, C] products a recomputing backward would need.
    """

    @staticmethod
    def forward(ctx, query, items, targets, ex_rows, ex_items, chunk: int, dtype: torch.dtype, need_grad: bool):
        q, e = query.detach().to(dtype), items.detach().to(dtype)
        n = q.shape[0]
        starts = torch.arange(0, n + chunk, chunk, device=q.device).clamp_(max=n)
        bounds = torch.searchsorted(ex_rows, starts).tolist()  # the excluded pairs of each chunk
        total = torch.zeros((), dtype=torch.float32, device=q.device)
        grad_q = torch.empty(q.shape, dtype=query.dtype, device=q.device) if need_grad else None
        grad_e = torch.zeros(e.shape, dtype=torch.float32, device=e.device) if need_grad else None
        bf16 = dtype == torch.bfloat16
        for i, s in enumerate(range(0, n, chunk)):
            qc = q[s : s + chunk]
            m = qc.shape[0]
            qc = pad_rows(qc, bf16)  # the last chunk's rows padded for bf16 kernels (argus_models.rows)
            z = (qc @ e.T)[:m].float()
            z[ex_rows[bounds[i] : bounds[i + 1]] - s, ex_items[bounds[i] : bounds[i + 1]] - 1] = float("-inf")
            rows = torch.arange(z.shape[0], device=z.device)
            cols = targets[s : s + chunk] - 1
            top = z.amax(dim=1)
            target_logit = z[rows, cols]
            p = z.sub_(top[:, None]).exp_()  # unnormalised softmax, in place of the logits
            denom = p.sum(dim=1)
            total += (top + denom.log() - target_logit).sum()
            if need_grad:
                g = p.mul_((1.0 / n) / denom[:, None])  # softmax / N
                g[rows, cols] -= 1.0 / n
                g = pad_rows(g.to(dtype), bf16)  # zero rows where qc has them
                grad_q[s : s + chunk] = (g @ e)[:m]
                grad_e += (g.T @ qc).float()
        ctx.save_for_backward(grad_q, grad_e.to(items.dtype) if need_grad else None)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_q, grad_e = ctx.saved_tensors
        return (
            grad_q * grad_loss.to(grad_q.dtype),
            grad_e * grad_loss.to(grad_e.dtype),
            None,
            None,
            None,
            None,
            None,
            None,
        )


def chunked_full_softmax_loss(
    query: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    excluded: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `query @ items.T` over the catalogue: equal to
    `full_softmax_loss(query @ items.T, targets, excluded).mean()`, made chunk by chunk (see
    `_ChunkedSoftmaxCE`). query: [N, D]; items: [C, D] vectors of items 1..C; targets: [N] in 1..C;
    excluded: (rows, item ids) as for `full_softmax_loss`, rows ascending (as `history_pairs` gives).
    The logits are bf16 under a bf16 autocast (as `query @ items.T` would be), float32 otherwise.
    chunk_elements: logits per chunk; default 2M on CPU (cache-sized), 128M on GPUs (kernels stay
    large on million-item catalogues; 512 MiB of float32)."""
    if query.shape[0] == 0:
        raise ValueError("chunked_full_softmax_loss: no rows (a batch without a single target position)")
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
    else:
        dtype = torch.promote_types(query.dtype, items.dtype)
    if excluded is None:
        empty = torch.empty(0, dtype=torch.long, device=query.device)
        excluded = (empty, empty)
    rows, ex_items = excluded
    if chunk_elements is None:
        chunk_elements = 1 << 21 if query.device.type == "cpu" else 1 << 27
    chunk = max(1, chunk_elements // max(1, items.shape[0]))
    need_grad = torch.is_grad_enabled() and (query.requires_grad or items.requires_grad)
    return _ChunkedSoftmaxCE.apply(query, items, targets, rows, ex_items, chunk, dtype, need_grad)


# TrainPipelineSparseDist FX-traces the training task: keep this call one node of its graph.
torch.fx.wrap("chunked_full_softmax_loss")


def feedback_loss(head: ActionHead, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example loss of one action head.

    binary: BCE on {0,1}; ratio: BCE against the observed ratio in [0,1] (a soft label);
    graded: cross-entropy over the levels (target = level index).
    logits: [N] for binary/ratio, [N, levels] for graded; target: [N].
    """
    if head.kind == "graded":
        return F.cross_entropy(logits.float(), target.long(), reduction="none")
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


def feedback_probability(head: ActionHead, logits: torch.Tensor) -> torch.Tensor:
    """P(a) used for ranking: sigmoid for binary/ratio, expected level in [0, 1] for graded."""
    if head.kind == "graded":
        probs = logits.float().softmax(dim=-1)
        levels = torch.linspace(0.0, 1.0, probs.shape[-1], device=probs.device)
        return probs @ levels
    return torch.sigmoid(logits.float())
