"""Next-item and feedback losses.

Sampled softmax with **corrected logQ** (Khrylchenko et al., RecSys 2025), standard logQ
(Yi et al., 2019) and full softmax. Negatives are drawn from one proposal Q (in this platform a
mixture of in-batch and uniform sampling, see `mixed_log_q`); logits are computed in float64
as in the reference implementation, and a negative equal to the positive is masked to −inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from argus_models.config import ActionHead


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


def corrected_logq_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    hit_mask: torch.Tensor,
) -> torch.Tensor:
    """Corrected-logQ sampled softmax (DESIGN.md §4), per example.

    pos_logits: [N]     f(u, i)
    neg_logits: [N, K]  f(u, j) for the K sampled negatives
    pos_log_q:  [N]     log Q(i)
    neg_log_q:  [K] or [N, K]  log Q(j)
    hit_mask:   [N, K]  True where negative j equals the positive i (removed)

    ℓ  = −f(u,i) + logsumexp_j( f(u,j) − log Q'(j) ),  Q'(j) = Q(j) / (1 − Q(i))
    P̂ = e^{f(u,i)} / ( e^{f(u,i)} + (1/k) Σ_j e^{f(u,j) − log Q'(j)} ),  k = non-hit negatives
    L  = stopgrad(1 − P̂) · ℓ                                           returns [N]
    """
    pos = pos_logits.double()
    log_q_prime = neg_log_q.double() - torch.log1p(-pos_log_q.double().exp())[:, None]  # [N, K]
    corrected = (neg_logits.double() - log_q_prime).masked_fill(hit_mask, float("-inf"))
    lse = torch.logsumexp(corrected, dim=1)  # [N]
    loss = lse - pos
    k = (~hit_mask).sum(dim=1).clamp_min(1).double()
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
    pos = pos_logits.double() - pos_log_q.double()
    neg = (neg_logits.double() - neg_log_q.double()).masked_fill(hit_mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).to(pos_logits.dtype)


def full_softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, excluded: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue, in float32. logits: [N, C] for items 1..C (column j is
    item j+1; the padding item is not a class); targets: [N] item ids in 1..C; excluded: optional
    (rows, item ids) left out of those rows' denominators (never a row's target)."""
    logits = logits.float()
    if excluded is not None:
        rows, items = excluded
        # in place on the float32 copy (its backward does not need it)
        logits.index_put_((rows, items - 1), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, targets - 1, reduction="none")


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
