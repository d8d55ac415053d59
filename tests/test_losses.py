"""Loss functions against direct, loop-by-loop formulas."""

import math

import pytest
import torch

from argus_models.config import ActionHead
from argus_models.losses import (
    chunked_full_softmax_loss,
    corrected_logq_loss,
    feedback_loss,
    feedback_probability,
    full_softmax_loss,
    logq_loss,
    mixed_log_q,
    sampled_softmax_loss,
)


def _case(seed=0, n=5, k=7):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, generator=g, dtype=torch.float64)
    neg = torch.randn(n, k, generator=g, dtype=torch.float64)
    q = torch.rand(20, generator=g, dtype=torch.float64) * 0.1 + 0.001
    pos_ids = torch.randint(0, 20, (n,), generator=g)
    neg_ids = torch.randint(0, 20, (k,), generator=g)
    neg_ids[0] = pos_ids[0]  # force one accidental hit
    return pos, neg, q, pos_ids, neg_ids


def test_corrected_logq_matches_direct_formula():
    pos, neg, q, pos_ids, neg_ids = _case()
    hit = neg_ids[None, :] == pos_ids[:, None]
    got = corrected_logq_loss(pos, neg, q[pos_ids].log(), q[neg_ids].log(), hit)
    for r in range(len(pos)):
        qi = q[pos_ids[r]].item()
        terms = [
            neg[r, j].item() - math.log(q[neg_ids[j]].item() / (1 - qi))
            for j in range(len(neg_ids))
            if neg_ids[j] != pos_ids[r]
        ]
        lse = math.log(sum(math.exp(t) for t in terms))
        ell = -pos[r].item() + lse
        k = len(terms)
        p_hat = math.exp(pos[r].item()) / (math.exp(pos[r].item()) + sum(math.exp(t) for t in terms) / k)
        assert math.isclose(got[r].item(), (1 - p_hat) * ell, rel_tol=1e-9), r


def _sampled_case(seed: int, n: int, k: int, items: int, scale: float, log_q_span: float):
    """Positive and negative logits (float64, ~N(0, scale²)), log Q over `items` in [−1 − span, −1],
    ids and the hit mask of a sampled-softmax batch."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = (
        torch.randn(n, generator=g, dtype=torch.float64) * scale,
        torch.randn(n, k, generator=g, dtype=torch.float64) * scale,
    )
    log_q = -torch.rand(items, generator=g, dtype=torch.float64) * log_q_span - 1
    pos_ids, neg_ids = torch.randint(0, items, (n,), generator=g), torch.randint(0, items, (k,), generator=g)
    return g, pos, neg, log_q, pos_ids, neg_ids, neg_ids[None, :] == pos_ids[:, None]


@pytest.mark.parametrize("fn", [corrected_logq_loss, logq_loss])
def test_sampled_losses_in_float32_match_float64(fn):
    """Realistic magnitudes (log Q down to about −20, logits up to ±15): the float32 path agrees
    with float64 in value and gradient."""
    _, pos, neg, log_q, pos_ids, neg_ids, hit = _sampled_case(3, n=512, k=256, items=4000, scale=5, log_q_span=19)
    out = {}
    for dt in (torch.float64, torch.float32):
        p, q = pos.to(dt).detach().clone().requires_grad_(True), neg.to(dt).detach().clone().requires_grad_(True)
        loss = fn(p, q, log_q[pos_ids], log_q[neg_ids], hit)
        assert loss.dtype == dt
        loss.sum().backward()
        out[dt] = (loss.double(), p.grad.double(), q.grad.double())
    for a, b in zip(out[torch.float32], out[torch.float64]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_corrected_logq_weight_is_stop_gradient():
    pos, neg, q, pos_ids, neg_ids = _case(1)
    pos.requires_grad_(True)
    hit = neg_ids[None, :] == pos_ids[:, None]
    corrected_logq_loss(pos, neg, q[pos_ids].log(), q[neg_ids].log(), hit).sum().backward()
    # d/df_i of stopgrad(w)·(−f_i + lse) = −w, with w = 1 − P̂ in (0, 1)
    assert torch.all(pos.grad < 0) and torch.all(pos.grad > -1)


def test_standard_logq_matches_direct_formula():
    pos, neg, q, pos_ids, neg_ids = _case(2)
    hit = neg_ids[None, :] == pos_ids[:, None]
    got = logq_loss(pos, neg, q[pos_ids].log(), q[neg_ids].log(), hit)
    for r in range(len(pos)):
        s_pos = pos[r].item() - math.log(q[pos_ids[r]].item())
        logits = [s_pos] + [
            neg[r, j].item() - math.log(q[neg_ids[j]].item()) for j in range(len(neg_ids)) if neg_ids[j] != pos_ids[r]
        ]
        expected = -s_pos + math.log(sum(math.exp(x) for x in logits))
        assert math.isclose(got[r].item(), expected, rel_tol=1e-9)


def test_full_softmax_on_tiny_catalogue():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])  # items 1..3 (the padding item is no class)
    targets = torch.tensor([2, 3])
    got = full_softmax_loss(logits, targets)
    for r in range(2):
        row = logits[r].tolist()
        expected = -logits[r, targets[r] - 1].item() + math.log(sum(math.exp(x) for x in row))
        assert math.isclose(got[r].item(), expected, rel_tol=1e-6)


def test_mixed_log_q_is_a_distribution():
    probs = torch.tensor([0.0, 0.5, 0.3, 0.2], dtype=torch.float64)
    q = mixed_log_q(probs, n_in_batch=1, n_uniform=3).exp()
    assert q[0] == 0 and math.isclose(q.sum().item(), 1.0, rel_tol=1e-12)
    assert math.isclose(q[1].item(), 0.25 * 0.5 + 0.75 / 3, rel_tol=1e-12)


def test_feedback_losses_and_probabilities():
    binary = ActionHead("like", "binary", 2)
    graded = ActionHead("rating", "graded", 5)
    logit = torch.tensor([0.3])
    assert math.isclose(
        feedback_loss(binary, logit, torch.tensor([1.0])).item(), -math.log(1 / (1 + math.exp(-0.3))), rel_tol=1e-6
    )
    levels = torch.tensor([[0.0, 0.0, 0.0, 0.0, 10.0]])
    assert feedback_loss(graded, levels, torch.tensor([4])).item() < 1e-3
    assert feedback_probability(graded, levels).item() > 0.99


def test_full_softmax_without_the_history_matches_a_per_row_reference():
    from argus_models.task import history_pairs

    items = torch.tensor([[3, 1, 3, 2, 0], [4, 2, 1, 0, 0]])  # row 0 repeats item 3 as a target
    lengths = torch.tensor([4, 3])
    valid = torch.arange(4)[None, :] < (lengths - 1)[:, None]  # predictions of events 1..len-1
    rows, hist = history_pairs(items, valid)
    pairs = sorted(zip(rows.tolist(), hist.tolist()))
    # rows: (0,t0)→1 [3], (0,t1)→3 [3,1] but 3 is the target, (0,t2)→2 [3,1,3], (1,t0)→2 [4], (1,t1)→1 [4,2]
    assert pairs == [(0, 3), (1, 1), (2, 1), (2, 3), (2, 3), (3, 4), (4, 2), (4, 4)]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g)  # items 1..4
    targets = torch.tensor([1, 3, 2, 2, 1])
    got = full_softmax_loss(logits, targets, (rows, hist))
    for r in range(5):
        excluded = {i for (n, i) in pairs if n == r}
        row = [logits[r, j - 1].item() for j in range(1, 5) if j not in excluded]
        expected = -logits[r, targets[r] - 1].item() + math.log(sum(math.exp(x) for x in row))
        assert math.isclose(got[r].item(), expected, rel_tol=1e-6)


def _chunked_case(seed=0, n=37, c=11, d=8, w=9):
    from argus_models.task import history_pairs

    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, c + 1, (n // 4 + 1, w), generator=g)
    lengths = torch.randint(2, w + 1, (items.shape[0],), generator=g)
    items[torch.arange(w)[None, :] >= lengths[:, None]] = 0
    valid = torch.arange(w - 1)[None, :] < (lengths - 1)[:, None]
    targets = items[:, 1:][valid]
    query = torch.randn(targets.numel(), d, generator=g, requires_grad=True)
    vectors = torch.randn(c, d, generator=g, requires_grad=True)
    return query, vectors, targets, history_pairs(items, valid)


def _loss_and_grads(fn):
    query, vectors, targets, excluded = _chunked_case()
    loss = fn(query, vectors, targets, excluded)
    (loss * 3.0).backward()  # an upstream gradient other than 1
    return loss.detach(), query.grad, vectors.grad


def test_chunked_full_softmax_equals_the_whole_logits_reference():
    want = _loss_and_grads(lambda q, e, t, ex: full_softmax_loss(q @ e.T, t, ex).mean())
    for chunk_elements in (1, 11 * 5, 11 * 1000):  # one row per chunk, ragged chunks, one chunk
        got = _loss_and_grads(lambda q, e, t, ex: chunked_full_softmax_loss(q, e, t, ex, chunk_elements=chunk_elements))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without exclusions too
    want = _loss_and_grads(lambda q, e, t, ex: full_softmax_loss(q @ e.T, t).mean())
    got = _loss_and_grads(lambda q, e, t, ex: chunked_full_softmax_loss(q, e, t, chunk_elements=30))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_full_softmax_under_bf16_autocast_matches_autocast_logits():
    def reference(q, e, t, ex):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = q @ e.T  # bf16, as the unchunked objective made them
        return full_softmax_loss(logits, t, ex).mean()

    def chunked(q, e, t, ex):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return chunked_full_softmax_loss(q, e, t, ex, chunk_elements=40)

    want, got = _loss_and_grads(reference), _loss_and_grads(chunked)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)  # same bf16 logits, float32 softmax
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)  # bf16 products in backward


def test_chunked_full_softmax_without_grad_and_without_rows():
    query, vectors, targets, excluded = _chunked_case()
    with torch.no_grad():
        loss = chunked_full_softmax_loss(query, vectors, targets, excluded)
    torch.testing.assert_close(loss, full_softmax_loss(query @ vectors.T, targets, excluded).mean().detach())
    with pytest.raises(ValueError, match="no rows"):
        chunked_full_softmax_loss(query[:0], vectors, targets[:0])


@pytest.mark.parametrize("kind", ["corrected_logq", "logq"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_sampled_softmax_equals_its_reference_in_value_and_gradient(kind, dtype):
    """`sampled_softmax_loss` (the training path, gradient made in the forward) against the composed
    reference, with hits, a row whose every negative is a hit, and a weighted sum as the upstream."""
    n, k = 64, 32
    g, pos, neg, log_q, pos_ids, neg_ids, hit = _sampled_case(5, n, k, items=50, scale=4, log_q_span=9)
    assert hit.any()
    upstream = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    reference = corrected_logq_loss if kind == "corrected_logq" else logq_loss
    out = []
    for fn in (reference, lambda *a: sampled_softmax_loss(kind, *a)):
        p, q = pos.to(dtype).clone().requires_grad_(True), neg.to(dtype).clone().requires_grad_(True)
        loss = fn(p, q, log_q[pos_ids], log_q[neg_ids], hit)
        assert loss.dtype == dtype
        (loss * upstream).sum().backward()
        out.append((loss, p.grad, q.grad))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, **tol)
    # A row with no usable negative: loss 0 and no gradient (the reference's would be nan or inf).
    all_hit = torch.ones(1, k, dtype=torch.bool)
    p, q = pos[:1].to(dtype).clone().requires_grad_(True), neg[:1].to(dtype).clone().requires_grad_(True)
    loss = sampled_softmax_loss("corrected_logq", p, q, log_q[pos_ids[:1]], log_q[neg_ids], all_hit)
    loss.sum().backward()
    assert loss.item() == 0 and p.grad.abs().max() == 0 and q.grad.abs().max() == 0


def test_fused_sampled_softmax_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown sampled softmax 'softmax'"):
        sampled_softmax_loss(
            "softmax",
            torch.zeros(1),
            torch.zeros(1, 1),
            torch.zeros(1),
            torch.zeros(1),
            torch.zeros(1, 1, dtype=torch.bool),
        )


def test_pad_rows_pads_only_for_cpu_bf16_matmuls():
    from argus_models.rows import ROW_MULTIPLE, pad_rows

    x = torch.randn(70, 8)
    assert pad_rows(x) is x  # no autocast: fp32 kernels do not care about shapes
    assert pad_rows(x, bf16=False) is x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = pad_rows(x)
    assert padded.shape == (2 * ROW_MULTIPLE, 8)
    assert torch.equal(padded[:70], x) and not padded[70:].any()
    assert pad_rows(torch.randn(ROW_MULTIPLE, 3), bf16=True).shape == (ROW_MULTIPLE, 3)  # already a multiple
    # rows padded, computed and sliced back give what the unpadded rows give, gradients included
    lin = torch.nn.Linear(8, 5)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lin(pad_rows(x))[:70]
    out.float().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = lin(x.detach())
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(70, 8), rtol=1e-2, atol=1e-2)
