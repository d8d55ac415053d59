"""Serving-only ranking steps on top of `argus_models.inference`: item-side groups and the greedy
diversity re-rank, and the result type of one request."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def item_groups(vectors: torch.Tensor, num_groups: int, iterations: int = 15, seed: int = 0) -> np.ndarray:
    """Item-side groups for the diversity rule: k-means (cosine) over the item vectors.
    Returns [C+1] group ids (row 0, padding, gets group -1)."""
    x = F.normalize(vectors[1:].float(), dim=-1)
    k = max(1, min(num_groups, x.shape[0]))
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)[:, None]
        centroids = torch.where(counts > 0, F.normalize(sums, dim=-1), centroids)
    assign = (x @ centroids.T).argmax(dim=1).numpy()
    return np.concatenate([[-1], assign]).astype(np.int64)


def diversify(scores: np.ndarray, groups: np.ndarray, decay: float, k: int) -> np.ndarray:
    """Greedy re-rank: each pick's score is pushed down by (1 − decay^n)·|score|, n = items of
    its group already picked. decay = 1 keeps the score order. Returns positions of the top k."""
    k = min(k, len(scores))
    if decay >= 1.0:
        return np.argsort(-scores, kind="stable")[:k]
    picked: list[int] = []
    per_group = np.zeros(int(groups.max()) + 2, dtype=np.int64)  # group -1 (unknown) counts in the last slot
    left = np.ones(len(scores), dtype=bool)
    for _ in range(k):
        n = per_group[groups]
        adjusted = np.where(left, scores - (1.0 - decay**n) * np.abs(scores), -np.inf)
        best = int(np.argmax(adjusted))
        picked.append(best)
        left[best] = False
        per_group[groups[best]] += 1
    return np.asarray(picked, dtype=np.int64)


@dataclass
class Ranked:
    """One request's result in model indices."""

    items: np.ndarray  # [k]
    scores: np.ndarray  # [k] Σ w_a P(a) (retrieval score when the schema has no actions)
    retrieval_scores: np.ndarray  # [k]
    probabilities: dict[str, np.ndarray]  # {action: [k]}
    groups: np.ndarray  # [k]
    explored: np.ndarray | None = None  # [k] bool: slots filled by exploration (None: exploration off)
