"""Attention masks drawn as matrices, model shapes, local lookups vs the TorchRec module, the item tower."""

import pytest
import torch

from argus_models.config import ActionHead, ModelConfig, ModelSchema
from argus_models.encoder import causal_padding_mask
from argus_models.model import ArgusDenseArch, ArgusSparseArch, lookup_local

SCHEMA = ModelSchema(
    num_items=30, contexts={"source": 4}, actions=[ActionHead("like", "binary", 2), ActionHead("rating", "graded", 5)]
)


def test_causal_padding_mask_picture():
    mask = causal_padding_mask(torch.tensor([3]), 5)[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],  # padded query rows: valid prefix only (never an empty row; output ignored)
            [1, 1, 1, 0, 0],
        ]
    )
    assert torch.equal(mask, expected)


def _features(sparse_keys, lengths, num_items=30):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(0)
    values, all_lengths = [], []
    sizes = {"item": num_items + 1, "neg_item": num_items + 1, "ctx_source": 4, "fb_like": 2, "fb_rating": 5}
    for key in sparse_keys:
        n = int(lengths.sum()) if key != "neg_item" else 3
        values.append(torch.randint(1 if key in ("item", "neg_item") else 0, sizes[key], (n,), generator=g))
        all_lengths.append(lengths if key != "neg_item" else torch.tensor([3] + [0] * (len(lengths) - 1)))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=sparse_keys, values=torch.cat(values), lengths=torch.cat(all_lengths).int()
    )


def test_local_lookup_equals_embedding_collection():
    sparse = ArgusSparseArch(SCHEMA, 8, device="cpu")
    keys = ["item", "ctx_source", "fb_like", "fb_rating", "neg_item"]
    kjt = _features(keys, torch.tensor([3, 1]))
    via_ec = sparse(kjt)
    tables = {name: w for name, w in ((k.split(".")[-2], v) for k, v in sparse.state_dict().items())}
    via_local = lookup_local(tables, kjt)
    for key in keys:
        assert torch.allclose(via_ec[key], via_local[key]), key
    assert via_ec["item"].shape == (2, 3, 8) and via_ec["neg_item"].shape == (3, 8)


def test_dense_arch_shapes_and_named_heads():
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=6, dropout=0.0)
    dense = ArgusDenseArch(cfg, SCHEMA)
    emb = {k: torch.randn(2, 4, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    out = dense(emb, torch.tensor([4, 2]))
    assert out["query"].shape == (2, 3, 8) and out["feedback"].shape == (2, 3, 1 + 5)
    heads = dense.action_logits(out["feedback"])
    assert heads["like"].shape == (2, 3) and heads["rating"].shape == (2, 3, 5)


@pytest.mark.parametrize("tokenization", ["one_token", "three_token"])
def test_dense_arch_at_valid_positions_equals_the_full_outputs_indexed(tokenization):
    """`valid` runs the heads on the valid positions only: the same values as the [B, W-1] outputs
    indexed by it, and the same gradients."""
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=6, dropout=0.0, tokenization=tokenization)
    dense = ArgusDenseArch(cfg, SCHEMA).train()
    emb = {k: torch.randn(3, 5, 8, requires_grad=True) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    lengths = torch.tensor([5, 2, 4])
    valid = torch.arange(4)[None, :] < (lengths - 1)[:, None]
    full, picked = dense(emb, lengths), dense(emb, lengths, valid)
    grads = []
    for outputs in ({k: v[valid] for k, v in full.items()}, picked):
        assert outputs["query"].shape == (int(valid.sum()), 8)
        loss = sum((v * torch.linspace(0, 1, v.numel()).view_as(v)).sum() for v in outputs.values())
        grads.append(torch.autograd.grad(loss, [emb["item"], *dense.parameters()]))
    for key in full:
        assert torch.allclose(full[key][valid], picked[key], atol=1e-6), key
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("encoder", ["transformer", "hstu", "dense_attention"])
def test_causality_future_events_do_not_change_past_states(encoder):
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=2, max_seq_len=6, dropout=0.0, encoder=encoder)
    dense = ArgusDenseArch(cfg, SCHEMA).eval()
    emb = {k: torch.randn(1, 5, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    a = dense(emb, torch.tensor([5]))["state"]
    emb2 = {k: v.clone() for k, v in emb.items()}
    emb2["item"][:, 3] += 1.0  # change event 3 (an input at position 3)
    b = dense(emb2, torch.tensor([5]))["state"]
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3])


def test_loading_a_non_checkpoint_names_what_is_missing(tmp_path):
    import pytest

    from argus_models.checkpoint import load_inference_model

    with pytest.raises(FileNotFoundError, match=r"\.metadata missing"):
        load_inference_model(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        load_inference_model(tmp_path)


def test_default_causal_attention_equals_the_padding_mask_reference():
    from argus_models.encoder import CausalEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.0)
    enc = CausalEncoder(cfg).eval()
    x, lengths = torch.randn(3, 8, 16), torch.tensor([8, 5, 1])
    fast = enc(x, lengths)  # is_causal: fused SDPA, no [S, S] mask
    reference = enc(x, lengths, causal_padding_mask(lengths, 8))
    valid = torch.arange(8)[None] < lengths[:, None]
    assert torch.allclose(fast[valid], reference[valid], atol=1e-6)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    from argus_models.encoder import CausalEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.1)
    plain, recomputed = (
        CausalEncoder(cfg).train(),
        CausalEncoder(ModelConfig(**{**vars(cfg), "activation_checkpointing": True})).train(),
    )
    recomputed.load_state_dict(plain.state_dict())
    x, lengths = torch.randn(2, 8, 16), torch.tensor([8, 6])
    results = []
    for enc in (plain, recomputed):
        torch.manual_seed(1)  # same dropout masks; checkpointing replays them in backward
        enc(x, lengths).square().sum().backward()
        results.append([p.grad.clone() for p in enc.parameters()])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6)


def test_rope_rotates_each_channel_pair_by_its_angle():
    from argus_models.encoder import _apply_rope_real, apply_rope, rope_cache

    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)  # [B, H, S, hd]
    rot = rope_cache(7, 8, x.device)  # [S, hd/2]
    # Reference: channel pair j of position s as a real 2-vector, turned by the angle s·10000^(-2j/hd).
    angles = torch.outer(torch.arange(7.0), 10000.0 ** (-torch.arange(0, 8, 2) / 8))

    def turned(v: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        a, b = v[..., 0::2], v[..., 1::2]
        return torch.stack((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), dim=-1).flatten(-2)

    ref = turned(x, angles)
    assert torch.allclose(apply_rope(x, rot), ref, atol=1e-6)
    # The real form (bf16 autocast, torch.compile) is the same rotation; bf16 stays bf16.
    assert torch.allclose(_apply_rope_real(x, rot), ref, atol=1e-6)
    assert apply_rope(x.bfloat16(), rot).dtype == torch.bfloat16
    # Per-row positions: [B, S, hd/2] rotations broadcast over the heads.
    positions = torch.tensor([[3, 1, 0, 6, 2, 5, 4], [0, 1, 2, 3, 4, 5, 6]])
    per_row = apply_rope(x, rot[positions][:, None])
    for b in range(2):
        for s in range(7):
            assert torch.allclose(per_row[b, :, s], turned(x[b, :, s], angles[positions[b, s]]), atol=1e-6)


def test_rope_gradient_matches_the_real_form():
    from argus_models.encoder import _apply_rope_real, apply_rope, rope_cache

    torch.manual_seed(0)
    qkv = torch.randn(2, 5, 3, 2, 8, requires_grad=True)  # [B, S, 3, H, hd] as the attention makes it
    rot = rope_cache(5, 8, qkv.device)[:, None, None, :]
    w = torch.randn(2, 5, 2, 2, 8)
    (apply_rope(qkv[:, :, :2], rot) * w).sum().backward()
    fast, qkv.grad = qkv.grad.clone(), None
    (_apply_rope_real(qkv[:, :, :2], rot) * w).sum().backward()
    assert torch.allclose(fast, qkv.grad, atol=1e-6)
    assert fast[:, :, 2].abs().max() == 0  # v is not rotated


def test_cpu_dropout_drops_at_rate_p_and_scales_what_it_keeps():
    from argus_models.encoder import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.2).train()
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.003  # 400k Bernoulli(0.2) draws: std 0.0006
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.8), rtol=1e-4)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes through the same mask and scale
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))  # masks follow the CPU generator (replayed under checkpointing)
    assert not torch.equal(a, drop(x))
    assert torch.equal(Dropout(0.2).eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize(
    ("positions", "encoder"),
    [("rope", "transformer"), ("learned", "transformer"), ("rope", "hstu"), ("learned", "dense_attention")],
)
def test_length_groups_give_the_same_states_and_gradients(positions, encoder):
    from argus_models.encoder import CausalEncoder, length_groups

    torch.manual_seed(0)
    cfg = ModelConfig(
        embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.0, positions=positions, encoder=encoder
    )
    # DenseAttention's queries get gradients that nearly cancel (its output MaxNorm makes the block
    # blind to their scale): compared in float64, where both agree to 1e-15 (float32: ~50 % apart)
    dtype = torch.float64 if encoder == "dense_attention" else torch.float32
    whole = CausalEncoder(cfg).train().to(dtype)
    grouped = CausalEncoder(ModelConfig(**{**vars(cfg), "length_groups": 3})).train().to(dtype)
    grouped.load_state_dict(whole.state_dict())
    lengths = torch.tensor([8, 2, 5, 1, 7, 3, 8])
    assert [(rows.tolist(), width) for rows, width in length_groups(lengths, 3, 8)] == [
        ([3, 1, 5], 3),
        ([2, 4], 7),
        ([0, 6], 8),
    ]
    valid = torch.arange(8)[None, :] < lengths[:, None]
    x = torch.randn(7, 8, 16, dtype=dtype)
    states, grads = [], []
    for enc in (whole, grouped):
        out = enc(x, lengths)
        out[valid].square().sum().backward()
        states.append(out[valid].detach())
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert torch.allclose(*states, atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="model.length_groups is 0"):
        CausalEncoder(ModelConfig(**{**vars(cfg), "length_groups": 0}))


def _hstu_reference(block, x: torch.Tensor, positions: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
    """HSTU's layer one query position, head and key at a time (the paper's equations as written):
    a_ts = SiLU(q_t·k_s + rab(p_s − p_t, τ_t − τ_s)) / N for s ≤ t, out_t = x_t + W2(norm(Σ_s a_ts v_s) ⊙ u_t),
    the time part w_time[min(⌊ln(max(|τ_t − τ_s|, 1)) / 0.301⌋, buckets)]."""
    import math

    import torch.nn.functional as F

    B, S, D = x.shape
    H, hd, N = block.num_heads, D // block.num_heads, block.max_tokens
    out = torch.empty_like(x)
    for b in range(B):
        u, v, q, k = F.silu(block.uvqk(block.norm_in(x[b]))).chunk(4, dim=-1)  # [S, D] each
        for t in range(S):
            av = torch.zeros(D)
            for h in range(H):
                c = slice(h * hd, (h + 1) * hd)
                for s_ in range(t + 1):
                    rab = block.rel_bias[int(positions[b, s_] - positions[b, t]) + N - 1]
                    if times is not None:
                        gap = max(abs(int(times[b, t]) - int(times[b, s_])), 1)
                        rab = rab + block.time_bias[min(int(math.log(gap) / 0.301), block.time_buckets)]
                    av[c] += F.silu(q[t, c] @ k[s_, c] + rab) / N * v[s_, c]
            out[b, t] = x[b, t] + block.out(block.norm_attn(av) * u[t])
    return out


def test_hstu_layer_equals_its_loop_by_loop_reference():
    """The vectorised HSTU layer against `_hstu_reference`, with the positions 0..S-1 and with
    per-row position ids (gaps, as the three-token layout and candidate rows have)."""
    from argus_models.encoder import HSTUBlock

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=12, dropout=0.0, encoder="hstu")
    block = HSTUBlock(cfg, cfg.max_seq_len).eval()
    with torch.no_grad():
        block.rel_bias.normal_()
    x = torch.randn(3, 6, 8)
    default = torch.arange(6).expand(3, 6)
    gaps = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 2, 4, 6, 8, 10], [3, 4, 7, 8, 9, 11]])
    with torch.no_grad():
        assert torch.allclose(block(x, None, None), _hstu_reference(block, x, default), atol=1e-5)
        assert torch.allclose(block(x, None, gaps), _hstu_reference(block, x, gaps), atol=1e-5)
        assert not torch.allclose(block(x, None, gaps), block(x, None, None), atol=1e-3)  # the bias is read


def test_hstu_time_gap_bias_equals_the_reference_and_is_read():
    """With a time-gap bias (seconds apart: one second to a year, repeated and unordered times) the
    vectorised layer equals the loop-by-loop reference; the bias changes the output; the gap buckets
    are the paper's log buckets, clamped; a timed layer without times is an error."""
    from argus_models.encoder import HSTUBlock, time_gap_buckets

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=12, dropout=0.0, encoder="hstu")
    block = HSTUBlock(cfg, cfg.max_seq_len, time_buckets=40).eval()
    with torch.no_grad():
        block.rel_bias.normal_()
        block.time_bias.normal_()
    x = torch.randn(2, 6, 8)
    t0 = 1_700_000_000
    times = torch.tensor([[t0, t0 + 1, t0 + 60, t0 + 3_600, t0 + 86_400, t0 + 31_536_000], [t0] * 3 + [t0 + 5] * 3])
    positions = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        gaps = time_gap_buckets(times, 40)
        assert torch.allclose(block(x, None, None, gaps), _hstu_reference(block, x, positions, times), atol=1e-5)
        same_time = time_gap_buckets(torch.full_like(times, t0), 40)
        assert not torch.allclose(block(x, None, None, gaps), block(x, None, None, same_time), atol=1e-3)
    gaps = torch.tensor([0, 1, 2, 3, 60, 86_400, 10**12])
    got = time_gap_buckets(torch.stack([torch.zeros_like(gaps), gaps], 1), 40)[:, 1, 0]
    assert got.tolist() == [0, 0, 2, 3, 13, 37, 40]  # ln(2)/0.301 = 2.3, ln(86400)/0.301 = 37.8, clamped
    with pytest.raises(ValueError, match="time-gap bias"):
        block(x, None, None)


def test_hstu_time_bias_through_the_encoder_length_groups_and_the_dense_arch():
    """An HSTU encoder with a time bias: length groups give the same states as one pass (the times
    are cut with the rows), the dense arch reads `event_times` from its inputs, a later event's time
    changes no earlier state (causal), and inputs without times are refused by name."""
    from argus_models.encoder import CausalEncoder
    from argus_models.tokenization import EVENT_TIMES

    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.0, encoder="hstu")
    grouped = CausalEncoder(ModelConfig(**{**vars(cfg), "length_groups": 2}), time_buckets=64).eval()
    single = CausalEncoder(cfg, time_buckets=64).eval()
    with torch.no_grad():
        for block in grouped.blocks:
            block.time_bias.normal_()
    single.load_state_dict(grouped.state_dict())
    x, lengths = torch.randn(4, 8, 8), torch.tensor([8, 2, 5, 3])
    times = torch.cumsum(torch.randint(1, 100_000, (4, 8)), 1)
    valid = torch.arange(8)[None] < lengths[:, None]
    with torch.no_grad():
        a, b = grouped(x, lengths, times=times), single(x, lengths, times=times)
    assert torch.allclose(a[valid], b[valid], atol=1e-5)
    with pytest.raises(ValueError, match=r"needs the tokens' times \[4, 8\], got None"):
        single(x, lengths)
    with pytest.raises(ValueError, match="a time-gap bias is an HSTU encoder's"):
        CausalEncoder(ModelConfig(embedding_dim=8, num_heads=2), time_buckets=8)

    timed = ModelSchema(**{**vars(SCHEMA), "time_buckets": 64})
    dense = ArgusDenseArch(ModelConfig(**{**vars(cfg), "length_groups": 1}), timed).eval()
    emb = {k: torch.randn(1, 6, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    times = torch.cumsum(torch.randint(1, 100_000, (1, 6)), 1)
    with torch.no_grad():
        for block in dense.encoder.blocks:
            block.time_bias.normal_()
        a = dense({**emb, EVENT_TIMES: times}, torch.tensor([6]))["state"]
        later = times.clone()
        later[:, 3:] += 10**7
        b = dense({**emb, EVENT_TIMES: later}, torch.tensor([6]))["state"]
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)
    with pytest.raises(ValueError, match="the inputs need 'event_times'"):
        dense(emb, torch.tensor([6]))


def test_dense_attention_in_linear_time_equals_the_quadratic_form():
    """The chunked O(N) causal DenseAttention equals (tril(Q Xᵀ)) X for chunks that divide the
    length, that do not, and one chunk; the masked (quadratic) path with the causal mask agrees."""
    from argus_models.encoder import DenseAttentionBlock, causal_dense_attention, max_norm

    torch.manual_seed(0)
    q, x = torch.randn(2, 3, 37, 4, dtype=torch.float64), torch.randn(2, 3, 37, 4, dtype=torch.float64)
    quadratic = (q @ x.transpose(-1, -2)).tril() @ x
    for chunk in (1, 8, 10, 64):
        assert torch.allclose(causal_dense_attention(q, x, chunk), quadratic, atol=1e-10), chunk
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=12, encoder="dense_attention")
    block = DenseAttentionBlock(cfg, chunk=5).eval()
    h = max_norm(torch.randn(2, 12, 8))
    causal = torch.ones(12, 12, dtype=torch.bool).tril()[None, None]
    assert torch.allclose(block.attend(h, None), block.attend(h, causal), atol=1e-6)
    assert max_norm(torch.tensor([[3.0, -6.0]])).abs().max() <= 1.0


@pytest.mark.parametrize("encoder", ["hstu", "dense_attention"])
def test_other_encoders_train_in_the_dense_arch(encoder):
    """`model.encoder` hstu or dense_attention end to end through the dense arch: every encoder
    parameter gets a gradient (HSTU's relative bias included) and a few steps lower the loss."""
    torch.manual_seed(0)
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=2, max_seq_len=6, dropout=0.0, encoder=encoder)
    dense = ArgusDenseArch(cfg, SCHEMA).train()
    emb = {k: torch.randn(4, 5, 8) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    target = torch.randn(4, 4, 8)
    optim = torch.optim.Adam(dense.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (dense(emb, torch.tensor([5, 3, 5, 2]))["query"] - target).square().mean()
        optim.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dense.encoder.parameters())
        optim.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_blocks_give_the_same_states_and_gradients(checkpointing):
    from argus_models.encoder import CausalEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(
        embedding_dim=16, num_heads=2, num_layers=2, max_seq_len=8, dropout=0.0, activation_checkpointing=checkpointing
    )
    eager, compiled = CausalEncoder(cfg).train(), CausalEncoder(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints stay interchangeable
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    x, lengths = torch.randn(3, 8, 16), torch.tensor([8, 6, 3])
    outs, grads = [], []
    for enc in (eager, compiled):
        y = enc(x, lengths)
        (y[:, :3].square().sum() + y.sum()).backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled encoder really ran through dynamo
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for g_compiled, g_eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_compiled, g_eager, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_keeps_the_loss_float32():
    from torchrec import KeyedJaggedTensor

    from argus_models.task import ArgusObjective, ArgusTrainTask, SequenceBatch

    schema = ModelSchema(num_items=30)
    cfg = ModelConfig(embedding_dim=16, num_heads=2, num_layers=1, max_seq_len=8, dropout=0.0)
    items, lengths = (
        torch.randint(1, 31, (4, 9), generator=torch.Generator().manual_seed(0)),
        torch.tensor([9, 9, 5, 3]),
    )
    flat = torch.cat([items[b, : lengths[b]] for b in range(4)])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "neg_item"],
        values=torch.cat([flat, torch.arange(31)]),
        lengths=torch.cat([lengths, torch.tensor([31, 0, 0, 0])]).int(),
    )
    batch = SequenceBatch(
        kjt, items * (torch.arange(9)[None] < lengths[:, None]), lengths, torch.zeros(4, 9, 0), torch.arange(31)
    )
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(2)
        task = ArgusTrainTask(
            ArgusSparseArch(schema, 16, device="cpu"),
            ArgusObjective(ArgusDenseArch(cfg, schema), torch.zeros(31), "full_softmax", 0),
            precision,
        )
        loss, _ = task(batch)
        assert loss.dtype == torch.float32
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in task.objective.parameters() if p.grad is not None)
        losses[precision] = loss.item()
    assert losses["bf16"] != losses["fp32"]  # autocast did run
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]


def test_candidate_isolation_mask_picture():
    from argus_models.tokenization import candidate_isolation_mask

    # 5 history slots of which 3 are real, then 2 candidates of a request after the whole history
    mask = candidate_isolation_mask(torch.tensor([3]), torch.tensor([[3, 3]]), 5)[0, 0].int()
    expected = torch.tensor(
        [
            # h0 h1 h2 p3 p4 c0 c1
            [1, 0, 0, 0, 0, 0, 0],  # h0
            [1, 1, 0, 0, 0, 0, 0],  # h1
            [1, 1, 1, 0, 0, 0, 0],  # h2
            [1, 1, 1, 1, 0, 0, 0],  # p3: padding (output unused) sees the real prefix and itself
            [1, 1, 1, 0, 1, 0, 0],  # p4
            [1, 1, 1, 0, 0, 1, 0],  # c0: the real history and itself
            [1, 1, 1, 0, 0, 0, 1],  # c1: never c0
        ]
    )
    assert torch.equal(mask, expected)


def test_candidate_isolation_mask_with_two_requests_picture():
    from argus_models.tokenization import candidate_isolation_mask

    # one user, 4 real history positions; a slate shown after position 1 and one after position 2
    mask = candidate_isolation_mask(torch.tensor([4]), torch.tensor([[2, 2, 3]]), 4)[0, 0].int()
    expected = torch.tensor(
        [
            # h0 h1 h2 h3 a0 a1 b0
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],  # request a: history before position 2, itself
            [1, 1, 0, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 0, 1],  # request b: one more history position
        ]
    )
    assert torch.equal(mask, expected)


def _three_token(dropout=0.0, encoder="transformer", time_buckets=0):
    cfg = ModelConfig(
        embedding_dim=16,
        num_heads=2,
        num_layers=2,
        max_seq_len=6,
        dropout=dropout,
        tokenization="three_token",
        encoder=encoder,
    )
    torch.manual_seed(0)
    dense = ArgusDenseArch(cfg, ModelSchema(**{**vars(SCHEMA), "time_buckets": time_buckets})).eval()
    if time_buckets:
        with torch.no_grad():
            for block in dense.encoder.blocks:
                block.time_bias.normal_()
    return dense


def test_three_token_heads_read_the_right_positions():
    """Event t is [c_t, i_t, f_t]; the query for event t+1 reads c_{t+1} (it must not see i_{t+1}),
    the feedback of event t+1 reads i_{t+1} (it sees the item, not f_{t+1})."""
    dense = _three_token()
    emb = {k: torch.randn(1, 5, 16) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    base = dense(emb, torch.tensor([5]))

    def changed(feature, event):
        e = {k: v.clone() for k, v in emb.items()}
        e[feature][:, event] += 1.0
        out = dense(e, torch.tensor([5]))
        # output index t predicts event t+1
        return {
            k: [not torch.allclose(out[k][0, t], base[k][0, t], atol=1e-6) for t in range(4)]
            for k in ("query", "feedback")
        }

    # Reads of the heads, drawn per predicted event 1..4 (True = the output moved).
    assert changed("ctx_source", 2) == {"query": [False, True, True, True], "feedback": [False, True, True, True]}
    assert changed("item", 2) == {"query": [False, False, True, True], "feedback": [False, True, True, True]}
    assert changed("fb_like", 2) == {"query": [False, False, True, True], "feedback": [False, False, True, True]}


@pytest.mark.parametrize("timed", [False, True], ids=["transformer", "hstu-time-bias"])
def test_three_token_candidate_isolation_matches_the_training_forward(timed):
    """A candidate scored after the history equals the training forward's feedback at that event;
    timed: an HSTU encoder with a time bias, each candidate at its event's time."""
    from argus_models.tokenization import EVENT_TIMES

    dense = _three_token(encoder="hstu", time_buckets=32) if timed else _three_token()
    emb = {k: torch.randn(2, 5, 16) for k in ("item", "ctx_source", "fb_like", "fb_rating")}
    if timed:
        emb[EVENT_TIMES] = torch.cumsum(torch.randint(1, 10**6, (2, 5)), 1)
    lengths = torch.tensor([5, 3])
    train = dense(emb, lengths)["feedback"]  # [B, W-1, outputs]
    cands = torch.randn(2, 4, 16)
    cands[0, 2], cands[1, 0] = emb["item"][0, 4], emb["item"][1, 2]  # each row's real next item among them
    scored = dense.candidate_logits(cands, emb=emb, lengths=lengths)
    assert torch.allclose(scored[0, 2], train[0, 3], atol=1e-5) and torch.allclose(scored[1, 0], train[1, 1], atol=1e-5)
    alone = dense.candidate_logits(cands[:1, 2:3], emb={k: v[:1] for k, v in emb.items()}, lengths=lengths[:1])
    shuffled = dense.candidate_logits(cands.flip(1), emb=emb, lengths=lengths)
    assert torch.allclose(alone[0, 0], scored[0, 2], atol=1e-5)
    assert torch.allclose(shuffled.flip(1), scored, atol=1e-5)


def _tower_model(normalize=False):
    from argus_models.config import ItemFeature

    features = [ItemFeature("genre", num_values=5, slots=3), ItemFeature("year", num_values=3, slots=1)]
    schema = ModelSchema(num_items=6, item_features=features)
    cfg = ModelConfig(
        embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=6, dropout=0.0, normalize_embeddings=normalize
    )
    dense = ArgusDenseArch(cfg, schema)
    codes = torch.tensor(
        [
            [0, 0, 0, 0],  # padding item
            [1, 0, 0, 2],
            [1, 2, 3, 1],
            [4, 0, 0, 0],
            [0, 0, 0, 0],
            [2, 2, 0, 1],
            [3, 1, 4, 2],
        ]
    )
    dense.item_tower.set_codes(codes)
    return dense, codes


def test_item_tower_sums_per_feature_means_of_side_embeddings():
    dense, codes = _tower_model()
    E = dense.item_tower.table.weight.detach()  # rows: 0 = none, 1..4 genre, 5..6 year

    def reference(i):
        genre = [E[c] for c in codes[i, :3].tolist() if c]
        year = [E[4 + c] for c in codes[i, 3:].tolist() if c]
        return sum((torch.stack(v).mean(0) for v in (genre, year) if v), torch.zeros(8))

    side = dense.item_tower(torch.arange(7)).detach()
    for i in range(7):
        torch.testing.assert_close(side[i], reference(i))
    assert side[0].abs().sum() == 0 and side[4].abs().sum() == 0  # no values → adds nothing
    # no ids at all (in-batch negatives only: no uniform negatives to look up)
    assert dense.item_tower(torch.zeros(0, dtype=torch.long)).shape == (0, 8)
    assert dense.item_vectors(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)).shape == (0, 8)
    with pytest.raises(ValueError, match="outside 0..4"):
        dense.item_tower.set_codes(torch.tensor([[5, 0, 0, 0]] * 7))


def test_item_features_reach_inputs_targets_and_the_catalogue():
    from argus_models.model import ITEM_IDS

    dense, _ = _tower_model(normalize=True)
    dense.eval()
    table = torch.randn(7, 8)
    ids = torch.tensor([[1, 2, 3, 5], [6, 5, 0, 0]])
    emb = {"item": table[ids], ITEM_IDS: ids}
    out = dense(emb, torch.tensor([4, 2]))
    catalogue = dense.item_vectors(table)  # [7, 8], the evaluation / Serve side
    torch.testing.assert_close(out["target"][0], catalogue[ids[0, 1:]])
    torch.testing.assert_close(
        catalogue, torch.nn.functional.normalize(table + dense.item_tower(torch.arange(7)), dim=-1)
    )
    # an item's side features change the states that read it as input
    before = out["query"][0, 2].clone()
    codes = dense.item_tower.codes.clone()
    dense.item_tower.codes[2] = torch.flip(codes[2], [0])  # item 2 (input at position 1) gets other features
    dense.item_tower.codes[2, 3] = 0
    assert not torch.allclose(dense(emb, torch.tensor([4, 2]))["query"][0, 2], before)
    with pytest.raises(ValueError, match="item_ids"):
        dense({"item": table[ids]}, torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="pass the item ids"):
        dense.item_vectors(table[:3])


def test_local_lookup_carries_padded_item_ids():
    from argus_models.model import ITEM_IDS

    kjt = _features(["item", "ctx_source", "fb_like", "fb_rating", "neg_item"], torch.tensor([3, 1]))
    tables = {
        name: torch.randn(n, 4)
        for name, n in (("t_item", 31), ("t_ctx_source", 4), ("t_fb_like", 2), ("t_fb_rating", 5))
    }
    ids = lookup_local(tables, kjt)[ITEM_IDS]
    item = kjt["item"].values()
    assert ids.tolist() == [item[:3].tolist(), [int(item[3]), 0, 0]]


def _hashed_model():
    from argus_models.hashing import catalogue_hash_codes

    schema = ModelSchema(
        num_items=30,
        contexts={"source": 4},
        actions=[ActionHead("like", "binary", 2), ActionHead("rating", "graded", 5)],
        item_hash_buckets=[7, 5],
    )
    cfg = ModelConfig(embedding_dim=8, num_heads=2, num_layers=1, max_seq_len=6, dropout=0.0)
    dense = ArgusDenseArch(cfg, schema).eval()
    codes = catalogue_hash_codes([f"m{i}" for i in range(1, 31)], [7, 5])
    dense.set_item_hashes(torch.from_numpy(codes))
    return schema, dense, codes


def test_multi_hash_item_vector_is_a_projection_of_the_concatenated_rows():
    schema, dense, codes = _hashed_model()
    sparse = ArgusSparseArch(schema, 8, device="cpu")
    tables = {k.split(".")[-2]: v for k, v in sparse.state_dict().items()}
    assert tables["t_item_h0"].shape == (8, 8) and tables["t_item_h1"].shape == (6, 8)
    local = dense.local_tables(tables)
    assert local["t_item"].shape == (31, 24) and dense.local_tables(local) is local  # merged once
    W = dense.item_proj.weight.detach()
    b = dense.item_proj.bias.detach()
    for i in (1, 17, 30):
        row = torch.cat([tables["t_item"][i], tables["t_item_h0"][codes[i, 0]], tables["t_item_h1"][codes[i, 1]]])
        torch.testing.assert_close(dense.item_vectors(local["t_item"])[i].detach(), W @ row + b)
    with pytest.raises(ValueError, match="width 8"):
        dense.item_vectors(tables["t_item"])
    with pytest.raises(ValueError, match="shape"):
        dense.set_item_hashes(torch.zeros(31, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        dense.set_item_hashes(torch.full((31, 2), 8, dtype=torch.long))


def test_multi_hash_sharded_lookup_equals_the_local_tables():
    """The KJT path (hashed features through TorchRec's EmbeddingCollection, as training runs it)
    and the local path (merged item table, as evaluation and Serve run it) give the same forward."""
    import numpy as np
    import pyarrow as pa

    from argus_models.model import ITEM_IDS
    from argus_platform.collate import Collator

    schema, dense, codes = _hashed_model()
    sparse = ArgusSparseArch(schema, 8, device="cpu")
    tables = dense.local_tables({k.split(".")[-2]: v for k, v in sparse.state_dict().items()})
    rng = np.random.default_rng(0)
    n = [5, 3]
    table = pa.table(
        {
            "user_idx": [0, 1],
            "item_id": [rng.integers(1, 31, k).tolist() for k in n],
            "ctx_source": [rng.integers(1, 4, k).tolist() for k in n],
            "act_like": [rng.integers(0, 2, k).tolist() for k in n],
            "act_rating": [rng.integers(0, 5, k).tolist() for k in n],
        }
    )
    kinds = {"like": ("binary", 2), "rating": ("graded", 5)}
    with pytest.raises(ValueError, match="item_parts"):
        Collator(schema, kinds, window=7)
    batch = Collator(schema, kinds, window=7, negatives="uniform", num_uniform=6, item_parts=codes)(table)
    assert "item_h1" in batch.sparse_features.keys() and "neg_item_h0" in batch.sparse_features.keys()
    via_ec = sparse(batch.sparse_features)
    via_local = lookup_local(tables, batch.sparse_features)
    assert set(via_ec) == {"item", "ctx_source", "fb_like", "fb_rating", "neg_item"}
    for key in via_ec:
        torch.testing.assert_close(via_ec[key], via_local[key], msg=key)
    assert via_ec["item"].shape[-1] == 24 and via_ec["neg_item"].shape == (6, 24)
    with torch.no_grad():
        a = dense({**via_ec, ITEM_IDS: batch.items}, batch.lengths)
        b = dense(via_local, batch.lengths)
    torch.testing.assert_close(a["query"], b["query"])
    torch.testing.assert_close(a["target"][0, :4], dense.item_vectors(tables["t_item"])[batch.items[0, 1:5]])
