"""Full-catalogue evaluation.

Each evaluation row is a history whose last event is the target. The model's query at the last
history position scores every item; items already in the history are filtered when
`eval.filter_seen` (the target itself is never filtered, so a repeat can still be a hit).
Metrics: NDCG@k, HR@k, MRR, catalogue coverage of the top-10; per action head AUC and
normalised entropy (binary, ratio ≥ 0.5 for AUC) or accuracy/MAE (graded). The popularity
baseline (training-split counts) runs through the same ranking code.

Workers evaluate their own users and the sums are reduced across ranks; the catalogue is scored in
bounded memory, each rank against its own block of items (`catalogue_ranking`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from argus_models.contract import USER_IDX
from argus_models.losses import feedback_probability
from argus_models.model import ITEM, ArgusDenseArch, lookup_local, table_name
from argus_platform.catalogue_ranking import (
    CatalogueShard,
    Lookup,
    PopularityRanker,
    Queries,
    all_reduce_,
    catalogue_shard,
    gather_queries,
    model_ranks,
)
from argus_platform.collate import Collator, history_items
from argus_platform.config import EvalConfig
from argus_platform.progress import Progress

RANKERS = ("model", "popularity")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties averaged. NaN when only one class is present."""
    labels = labels.astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def normalized_entropy(p: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss divided by the entropy of the base rate (< 1 beats predicting the rate).
    NaN when the labels hold a single class (the base rate has no entropy to compare with)."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    y = y.astype(np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    rate = np.clip(y.mean(), 1e-7, 1 - 1e-7)
    base = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    return float(ll / base)


class RankingAccumulator:
    """Sums of per-example ranking metrics for one ranker, and of the NDCGs' squares: each
    `ndcg@k` and `hr@k` comes with `<metric>_se`, the standard error of its mean over the users
    (a 95% interval is about ±2 of them: two runs closer than that are not told apart)."""

    def __init__(self, ks: list[int], num_items: int) -> None:
        self.ks = ks
        self.sums = {f"ndcg@{k}": 0.0 for k in ks} | {f"hr@{k}": 0.0 for k in ks} | {"mrr": 0.0}
        self.sums |= {f"ndcg@{k}^2": 0.0 for k in ks}
        self.count = 0
        self.covered = torch.zeros(num_items + 1, dtype=torch.bool)

    def add(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """scores: [B, C+1] (−inf = excluded); target: [B]."""
        t_score = scores.gather(1, target[:, None])
        self.add_ranks((scores > t_score).sum(dim=1).double(), scores.topk(min(10, scores.shape[1]), dim=1).indices)

    def add_ranks(self, rank: torch.Tensor, top: torch.Tensor) -> None:
        """rank: [B] 0-based ranks of the targets (float64); top: [B, 10] each user's top-10 item ids."""
        for k in self.ks:
            hit = rank < k
            self.sums[f"hr@{k}"] += hit.double().sum().item()
            gain = torch.where(hit, 1.0 / torch.log2(rank + 2.0), 0.0)
            self.sums[f"ndcg@{k}"] += gain.sum().item()
            self.sums[f"ndcg@{k}^2"] += gain.square().sum().item()
        self.sums["mrr"] += (1.0 / (rank + 1.0)).sum().item()
        self.count += len(rank)
        self.covered[top.flatten()] = True

    def reduce(self, collective: bool = True) -> dict[str, float]:
        """The metrics over every rank's users (collective when distributed and `collective`)."""
        keys = sorted(self.sums)
        vec = torch.tensor([self.sums[k] for k in keys] + [float(self.count)], dtype=torch.float64)
        covered = self.covered.to(torch.int32)
        covered[0] = 0
        if collective and dist.is_initialized():
            dist.all_reduce(vec)
            dist.all_reduce(covered)
        n = max(vec[-1].item(), 1.0)
        means = {k: vec[i].item() / n for i, k in enumerate(keys)}
        out = {k: v for k, v in means.items() if not k.endswith("^2")}
        for k in self.ks:
            hr, ndcg = means[f"hr@{k}"], means[f"ndcg@{k}"]
            out[f"hr@{k}_se"] = math.sqrt(max(hr * (1 - hr), 0.0) / n)
            out[f"ndcg@{k}_se"] = math.sqrt(max(means[f"ndcg@{k}^2"] - ndcg * ndcg, 0.0) / n)
        out["coverage@10"] = (covered > 0).sum().item() / max(len(covered) - 1, 1)
        out["users"] = int(vec[-1].item())
        return out


@torch.no_grad()
def evaluate(
    dense: ArgusDenseArch,
    lookup: Lookup,
    batches: Iterable[pa.Table],
    collator: Collator,
    item_counts: torch.Tensor,
    cfg: EvalConfig,
    device: torch.device,
    catalogue: CatalogueShard | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """{"model": {...}, "popularity": {...}} for one split (collective when distributed).

    lookup: the sparse lookup (`sharded.task.sparse` under DMP, `local_lookup` for full tables);
    catalogue: this rank's item vectors (`catalogue_shard`; made here when not given, so one
    evaluation can share it between splits); progress: counts the users (rank 0 prints)."""
    was_training = dense.training
    dense.eval()
    schema = dense.schema
    if catalogue is None:
        catalogue = catalogue_shard(dense, lookup, collator.id_features, device, cfg.catalogue_block)
    popularity = PopularityRanker(item_counts)
    accs = {r: RankingAccumulator(cfg.ks, schema.num_items) for r in RANKERS}
    preds: dict[str, list[np.ndarray]] = {h.name: [] for h in schema.actions}
    labels: dict[str, list[np.ndarray]] = {h.name: [] for h in schema.actions}
    D = catalogue.vectors.shape[1]
    empty = Queries(
        torch.zeros(0, D, device=device), *(torch.zeros(0, dtype=torch.int64, device=device) for _ in range(3))
    )
    tables = iter(batches)
    while True:
        table = next(tables, None)
        # Sharded lookups and the scoring are collective: every rank steps until all are done.
        if not all_reduce_(torch.tensor([table is not None], dtype=torch.int64, device=device)).item():
            break
        if table is None:
            lookup(collator.id_features(np.zeros(1, np.int64)).to(device))
            local = empty
        else:
            batch = collator(table).to(device)
            B = len(batch.lengths)
            rows = torch.arange(B, device=device)
            last = batch.lengths - 2  # last history position; it predicts event lengths-1
            wanted = torch.zeros(B, batch.items.shape[1] - 1, dtype=torch.bool, device=device)
            wanted[rows, last] = True  # the heads run on these positions only: outputs are [B, ...]
            out = dense(batch.dense_inputs(lookup(batch.sparse_features)), batch.lengths, wanted)
            targets = batch.items[rows, batch.lengths - 1]
            if bool((targets < 1).any()):
                raise ValueError("an evaluation row ends in the padding item 0; prepared splits hold real items only")
            seen_vals, seen_offsets = history_items(table)
            seen_rows = np.repeat(np.arange(B), np.diff(seen_offsets))
            local = Queries(
                out["query"].float(),
                targets,
                torch.from_numpy(seen_rows).to(device),
                torch.from_numpy(seen_vals.astype(np.int64)).to(device),
            )
            pop_rank, pop_top = popularity.ranks(
                targets.cpu().numpy(), seen_rows, seen_vals.astype(np.int64), cfg.filter_seen
            )
            accs["popularity"].add_ranks(torch.from_numpy(pop_rank), torch.from_numpy(pop_top))
            if "feedback" in out:
                logits = dense.action_logits(out["feedback"])
                for a_i, head in enumerate(schema.actions):
                    preds[head.name].append(
                        feedback_probability(head, logits[head.name]).float().cpu().numpy()
                        if head.kind != "graded"
                        else logits[head.name].float().cpu().numpy()
                    )
                    labels[head.name].append(batch.actions[rows, batch.lengths - 1, a_i].cpu().numpy())
        gathered, mine = gather_queries(local)
        ranks, top = model_ranks(gathered, catalogue, cfg.catalogue_block, cfg.filter_seen)
        accs["model"].add_ranks(ranks[mine].cpu(), top[mine].cpu())
        if progress is not None:
            progress.update(len(gathered.targets))
    result = {r: acc.reduce() for r, acc in accs.items()}
    result["model"].update(_feedback_metrics(schema, preds, labels))
    if was_training:
        dense.train()
    return result


def user_sample(batches: Iterable[pa.Table], max_users: int, split_users: int) -> Iterator[pa.Table]:
    """The rows of about `max_users` of the split's `split_users` users (0 = all): a fixed sample, by a
    hash of user_idx, so every evaluation during a run (and every rank) sees the same users."""
    if not max_users or max_users >= split_users:
        yield from batches
        return
    threshold = np.uint64(int(max_users / split_users * 2**32))
    for table in batches:
        users = table.column(USER_IDX).to_numpy().astype(np.uint64)
        keep = (users * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32) < threshold  # Fibonacci hash, top 32 bits
        if keep.any():
            yield table.filter(pa.array(keep))


def local_lookup(dense: ArgusDenseArch, tables: dict[str, torch.Tensor]) -> Lookup:
    """The sparse lookup from full in-memory tables (one process: a loaded checkpoint, tests)."""
    full = dense.local_tables(tables)
    return lambda features: lookup_local(full, features)


@torch.no_grad()
def evaluate_reference(
    dense: ArgusDenseArch,
    tables: dict[str, torch.Tensor],
    batches: Iterable[pa.Table],
    collator: Collator,
    item_counts: torch.Tensor,
    cfg: EvalConfig,
) -> dict[str, dict[str, float]]:
    """The plain ranking the bounded path must reproduce: full tables in one process, dense
    [users × catalogue] score blocks (the popularity baseline too). Ranking metrics only; never
    collective (it sees only the batches it is given)."""
    dense.eval()
    tables = dense.local_tables(tables)
    item_matrix = dense.item_vectors(tables[table_name(ITEM)])  # [C+1, D]
    C = dense.schema.num_items
    pop_scores = item_counts.double() * (C + 2) - torch.arange(C + 1, dtype=torch.float64)
    accs = {r: RankingAccumulator(cfg.ks, C) for r in RANKERS}
    for table in batches:
        batch = collator(table)
        out = dense(lookup_local(tables, batch.sparse_features), batch.lengths)
        B = len(batch.lengths)
        rows = torch.arange(B)
        target = batch.items[rows, batch.lengths - 1]
        seen_vals, seen_offsets = history_items(table)
        seen_rows = torch.from_numpy(np.repeat(np.arange(B), np.diff(seen_offsets)))
        seen_items = torch.from_numpy(seen_vals.astype(np.int64))
        for ranker, acc in accs.items():
            if ranker == "model":
                scores = (out["query"][rows, batch.lengths - 2] @ item_matrix.T).float()
            else:
                scores = pop_scores[None, :].expand(B, -1).clone()
            scores[:, 0] = float("-inf")
            if cfg.filter_seen:
                t_score = scores[rows, target].clone()
                scores[seen_rows, seen_items] = float("-inf")
                scores[rows, target] = t_score
            acc.add(scores, target)
    return {r: acc.reduce(collective=False) for r, acc in accs.items()}


def _gather_arrays(parts: list[np.ndarray]) -> np.ndarray:
    local = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return np.concatenate([g for g in gathered if g is not None and len(g)]) if any(len(g) for g in gathered) else local


def _feedback_metrics(schema, preds, labels) -> dict[str, float]:
    out = {}
    for head in schema.actions:
        p, y = _gather_arrays(preds[head.name]), _gather_arrays(labels[head.name])
        if len(y) == 0:
            continue
        if head.kind == "graded":
            probs = torch.from_numpy(p).softmax(-1).numpy()
            expected = probs @ np.arange(probs.shape[1])
            out[f"{head.name}/accuracy"] = float((probs.argmax(1) == y).mean())
            out[f"{head.name}/mae"] = float(np.abs(expected - y).mean())
        else:
            out[f"{head.name}/auc"] = auc(p, y >= 0.5)
            out[f"{head.name}/ne"] = normalized_entropy(p, y)
    return out
