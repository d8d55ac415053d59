"""Full-catalogue ranking in bounded memory: no [users × items] score matrix, no gathered item table.

Rank r of W owns the items [lo_r, hi_r), an even split of 1..C (item 0 is padding and never ranked).
Its item vectors are made once per evaluation through the (sharded) lookup — chunks of ids looked
up as negatives, so multi-hash rows and the item tower apply exactly as in training — and hold
(C / W) × D floats. At every evaluation step the ranks' queries are gathered; each rank scores them
against its items one column block at a time, counts the items that score above the target (the
exact rank) and keeps a running top-10 (catalogue coverage); the counts are summed and the top-10s
merged across ranks. Memory per rank: its item vectors plus one [queries × block] score block.

The popularity baseline needs no scores at all: items are ordered once by training count, and a
user's rank is the target's position minus the seen items above it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torchrec import KeyedJaggedTensor

from argus_models.model import NEG_ITEM, ArgusDenseArch

TOP = 10  # the top-k kept per user for catalogue coverage@10

Lookup = Callable[[KeyedJaggedTensor], dict[str, torch.Tensor]]  # ids -> looked-up rows (collective when sharded)


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def item_range(num_items: int, rank: int, world: int) -> tuple[int, int]:
    """The items [lo, hi) that `rank` scores: 1..C cut into `world` near-equal blocks."""
    return 1 + num_items * rank // world, 1 + num_items * (rank + 1) // world


def all_reduce_(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


def gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `x` [n_r, ...] (n_r may differ), in rank order (collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [x]
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [p[:s] for p, s in zip(parts, sizes)]


@dataclass
class CatalogueShard:
    """This rank's items [lo, hi) and their vectors as the scoring side sees them: [hi − lo, D]."""

    lo: int
    hi: int
    vectors: torch.Tensor


@torch.no_grad()
def catalogue_shard(
    dense: ArgusDenseArch,
    lookup: Lookup,
    id_features: Callable[[np.ndarray], KeyedJaggedTensor],
    device: torch.device,
    block: int,
) -> CatalogueShard:
    """This rank's item vectors, looked up `block` ids at a time. Every rank makes the same number
    of lookups (a rank whose items are done looks up the padding id), as sharded lookups are collective."""
    rank, world = rank_world()
    C = dense.schema.num_items
    lo, hi = item_range(C, rank, world)
    steps = -(-max(item_range(C, r, world)[1] - item_range(C, r, world)[0] for r in range(world)) // block)
    parts = []
    for s in range(steps):
        ids = np.arange(lo + s * block, min(hi, lo + (s + 1) * block), dtype=np.int64)
        emb = lookup(id_features(ids if len(ids) else np.zeros(1, np.int64)).to(device))
        if len(ids):
            parts.append(dense.item_vectors(emb[NEG_ITEM], torch.from_numpy(ids).to(device)).float())
    vectors = torch.cat(parts) if parts else torch.zeros(0, dense.cfg.embedding_dim, device=device)
    return CatalogueShard(lo, hi, vectors)


@dataclass
class Queries:
    """One evaluation step's users (every rank's, after `gather_queries`).

    vectors: [N, D] next-item queries; targets: [N] item ids; seen_rows/seen_items: (row, item)
    pairs of items in the users' histories (filtered from the ranking, the target excepted)."""

    vectors: torch.Tensor
    targets: torch.Tensor
    seen_rows: torch.Tensor
    seen_items: torch.Tensor


def gather_queries(local: Queries) -> tuple[Queries, slice]:
    """All ranks' queries of this step, and the rows that are this rank's own (collective)."""
    rank, _ = rank_world()
    vectors, targets = gather_rows(local.vectors), gather_rows(local.targets)
    pairs = gather_rows(torch.stack([local.seen_rows, local.seen_items], dim=1))
    starts = np.cumsum([0] + [len(t) for t in targets])
    rows = torch.cat([p[:, 0] + int(starts[r]) for r, p in enumerate(pairs)])
    items = torch.cat([p[:, 1] for p in pairs])
    return Queries(torch.cat(vectors), torch.cat(targets), rows, items), slice(int(starts[rank]), int(starts[rank + 1]))


@torch.no_grad()
def model_ranks(q: Queries, shard: CatalogueShard, block: int, filter_seen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks [N] (float64) of the targets among all items, and the top-10 item ids [N, 10].

    Collective: every rank calls it with the same gathered queries and its own catalogue shard.
    rank = #{items j ≠ target, not filtered, with <q, v_j> > <q, v_target>}."""
    N, device = len(q.targets), q.vectors.device
    lo, hi, V = shard.lo, shard.hi, shard.vectors
    own = (q.targets >= lo) & (q.targets < hi)
    t_score = torch.zeros(N, dtype=torch.float32, device=device)
    t_score[own] = (q.vectors[own] * V[q.targets[own] - lo]).sum(-1).float()
    all_reduce_(t_score)  # each target is one rank's item
    # Entries each block overwrites: seen items (-inf) and the targets (their own score, so a
    # target never counts above itself), sorted by item so that each block takes one slice.
    rows, items = torch.arange(N, device=device)[own], q.targets[own]
    values = t_score[own]
    if filter_seen:
        keep = (q.seen_items >= lo) & (q.seen_items < hi) & (q.seen_items != q.targets[q.seen_rows])
        rows, items = torch.cat([rows, q.seen_rows[keep]]), torch.cat([items, q.seen_items[keep]])
        values = torch.cat([values, torch.full((int(keep.sum()),), float("-inf"), device=device)])
    order = torch.argsort(items)  # a seen entry never names its row's target: order within an item is free
    rows, items, values = rows[order], items[order], values[order]
    starts = list(range(lo, hi, block))
    cuts = torch.searchsorted(items, torch.tensor(starts + [hi], device=device)).tolist()
    count = torch.zeros(N, dtype=torch.int64, device=device)
    top = RunningTop(N, device)
    queries = q.vectors.float()
    buf = torch.empty(N * min(block, max(hi - lo, 1)), dtype=torch.float32, device=device)
    for k, c0 in enumerate(starts):
        c1 = min(c0 + block, hi)
        scores = buf[: N * (c1 - c0)].view(N, c1 - c0)
        torch.mm(queries, V[c0 - lo : c1 - lo].float().T, out=scores)  # [N, c]
        a, b = cuts[k], cuts[k + 1]
        if b > a:
            scores[rows[a:b], items[a:b] - c0] = values[a:b]
        count += count_above(scores, t_score)
        top.add(scores, c0)
    top_v, top_i = top.values, top.ids
    all_reduce_(count)
    top_v, top_i = _merge_top(
        torch.cat(gather_rows(top_v.T.contiguous())).T, torch.cat(gather_rows(top_i.T.contiguous())).T
    )
    return count.double(), top_i


def count_above(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """[N] how many entries of each row of scores [N, c] exceed threshold [N].

    On CPU: numpy's compare into bytes, counted 8 at a time by summing them as uint64 words (each
    byte lane gathers at most 255 ones before the lanes are added up); torch's bool reductions are
    ~7x slower and numpy's own count along an axis ~3x (3.9 vs 1.2 ms for [512, 8192])."""
    if scores.device.type != "cpu":
        return (scores > threshold[:, None]).sum(dim=1)
    s = scores.numpy()
    above = s > threshold.numpy()[:, None]
    N, c = above.shape
    if c % 8:
        return torch.from_numpy(np.count_nonzero(above, axis=1).astype(np.int64))
    words = above.view(np.uint64)  # [N, c / 8], each byte 0 or 1
    count = np.zeros(N, dtype=np.int64)
    for j in range(0, words.shape[1], 255):
        lanes = words[:, j : j + 255].sum(axis=1, dtype=np.uint64)  # 8 byte-wide counters per row
        count += lanes.view(np.uint8).reshape(N, 8).sum(axis=1, dtype=np.int64)
    return torch.from_numpy(count)


BUCKET = 128  # items per bucket of RunningTop's prefilter


class RunningTop:
    """Each row's 10 best (score, item) over the blocks seen so far.

    The first blocks go through topk. Once each row has a 10th best (its floor), a block is cut
    into buckets of BUCKET items and only the buckets whose maximum beats the row's floor are
    merged: after a few blocks that is a bucket or so per row, so a block costs one max pass
    instead of a topk (11.8 ms for [512, 8192] on one core, the max pass ~1 ms)."""

    merge_share = 0.25  # the largest share of a block's entries merged from buckets; above it, topk

    def __init__(self, rows: int, device: torch.device) -> None:
        self.values = torch.full((rows, 0), float("-inf"), device=device)
        self.ids = torch.zeros((rows, 0), dtype=torch.int64, device=device)

    def add(self, scores: torch.Tensor, offset: int) -> None:
        N, c = scores.shape
        if self.values.shape[1] < TOP or scores.device.type != "cpu" or c % BUCKET:
            self._add_topk(scores, offset)
            return
        floor = self.values[:, -1].numpy()
        buckets = scores.view(N, c // BUCKET, BUCKET)
        r, b = np.nonzero(buckets.amax(-1).numpy() > floor[:, None])  # rows ascending
        if len(r) == 0:
            return
        if len(r) * BUCKET > self.merge_share * N * c:  # much of the block is a candidate: topk is cheaper
            self._add_topk(scores, offset)
            return
        # each affected row's current best beside its candidate buckets (padded with -inf to the
        # most any row has), then the 10 largest of each
        users, first, per_row = np.unique(r, return_index=True, return_counts=True)
        slot = np.arange(len(r)) - np.repeat(first, per_row)
        u = torch.from_numpy(np.repeat(np.arange(len(users)), per_row))
        s = torch.from_numpy(slot)
        cand = torch.full((len(users), int(per_row.max()), BUCKET), float("-inf"))
        cand_ids = torch.zeros((len(users), int(per_row.max()), BUCKET), dtype=torch.int64)
        r_t, b_t = torch.from_numpy(r), torch.from_numpy(b)
        cand[u, s] = buckets[r_t, b_t]
        cand_ids[u, s] = offset + b_t[:, None] * BUCKET + torch.arange(BUCKET)
        users = torch.from_numpy(users)
        v, pos = torch.cat([self.values[users], cand.view(len(users), -1)], 1).topk(TOP, dim=1)
        self.ids[users] = torch.cat([self.ids[users], cand_ids.view(len(users), -1)], 1).gather(1, pos)
        self.values[users] = v

    def _add_topk(self, scores: torch.Tensor, offset: int) -> None:
        v, i = scores.topk(min(TOP, scores.shape[1]), dim=1)
        self.values, self.ids = _merge_top(torch.cat([self.values, v], 1), torch.cat([self.ids, i + offset], 1))


def _merge_top(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v, pos = values.topk(min(TOP, values.shape[1]), dim=1)
    return v, ids.gather(1, pos)


class PopularityRanker:
    """The training-count baseline: items ordered by count (ties: lower id first), item 0 never ranked."""

    def __init__(self, item_counts: torch.Tensor) -> None:
        counts = item_counts.numpy().astype(np.int64)
        order = np.lexsort((np.arange(1, len(counts)), -counts[1:])) + 1  # items by descending count
        self.order = order
        self.position = np.empty(len(counts), dtype=np.int64)
        self.position[order] = np.arange(len(order))
        self.position[0] = len(counts)  # never ahead of anything

    def ranks(
        self, targets: np.ndarray, seen_rows: np.ndarray, seen_items: np.ndarray, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """0-based ranks [B] of the targets and the top-10 ids [B, 10] of each user."""
        B = len(targets)
        pos_t = self.position[targets]
        if not filter_seen or len(seen_items) == 0:
            return pos_t.astype(np.float64), np.broadcast_to(self.order[:TOP], (B, min(TOP, len(self.order)))).copy()
        pairs = np.unique(np.stack([seen_rows, seen_items], 1), axis=0)
        pairs = pairs[(pairs[:, 1] != targets[pairs[:, 0]]) & (pairs[:, 1] > 0)]
        r, p = pairs[:, 0], self.position[pairs[:, 1]]
        above = np.bincount(r[p < pos_t[r]], minlength=B)
        # the top-10: the first 10 positions of the global order that the user has not seen
        width = TOP + int(np.bincount(r, minlength=B).max(initial=0))
        width = min(width, len(self.order))
        blocked = np.zeros((B, width), dtype=bool)
        near = p < width
        blocked[r[near], p[near]] = True
        first = np.argsort(blocked, axis=1, kind="stable")[:, : min(TOP, width)]
        return (pos_t - above).astype(np.float64), self.order[first]
