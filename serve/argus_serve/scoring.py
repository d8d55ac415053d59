"""The model math of serving, as plain functions over a loaded checkpoint (no Ray here).

encode_next:  histories + the next event's context → heads' input h [B, H] and query q [B, D]
retrieval:    top-K of <q, E_item(j)> over the catalogue, seen/excluded items removed
              (exact matmul + top-k, or a FAISS HNSW index for large catalogues)
ranking:      P(a | h, candidate) from the feedback heads, one row per candidate (candidates never
              see each other), score = Σ_a w_a · P(a), then a greedy group-diversity re-rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from argus_models.losses import feedback_probability
from argus_models.model import ITEM, ctx_feature, fb_feature, table_name

from argus_serve.artifacts import ServingModel
from argus_serve.store import Events

log = logging.getLogger(__name__)


def next_event_inputs(sm: ServingModel, histories: list[Events], next_contexts: list[dict[str, int]]) -> tuple[dict, torch.Tensor]:
    """Padded windows: each row's (last max_seq_len) history plus one next event whose item is
    unknown (padding id 0) and whose context is the request's. Returns ({feature: [B, W, D]}, lengths [B])."""
    schema, tables = sm.model.schema, sm.model.tables
    hist = [h.tail(sm.model.config.max_seq_len) for h in histories]
    lengths = np.array([len(h) + 1 for h in hist], dtype=np.int64)
    B, W = len(hist), int(lengths.max())
    ids = {ITEM: np.zeros((B, W), dtype=np.int64)}
    ids |= {ctx_feature(c): np.zeros((B, W), dtype=np.int64) for c in schema.contexts}
    ids |= {fb_feature(a.name): np.zeros((B, W), dtype=np.int64) for a in schema.actions}
    for b, h in enumerate(hist):
        L = len(h)
        ids[ITEM][b, :L] = h.items
        for c in schema.contexts:
            ids[ctx_feature(c)][b, :L] = h.contexts[c]
            ids[ctx_feature(c)][b, L] = next_contexts[b].get(c, 0)
        for a in schema.actions:
            ids[fb_feature(a.name)][b, :L] = h.feedback[a.name]
    emb = {k: F.embedding(torch.from_numpy(v), tables[table_name(k)]) for k, v in ids.items()}
    return emb, torch.from_numpy(lengths)


@torch.no_grad()
def encode_next(sm: ServingModel, histories: list[Events], next_contexts: list[dict[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads' input [B, H] and next-item query [B, D] for the event after each history."""
    emb, lengths = next_event_inputs(sm, histories, next_contexts)
    _, head_in = sm.model.dense.encode(emb, lengths)  # [B, W-1, H]
    head_in = head_in[torch.arange(len(lengths)), lengths - 2]  # the position that predicts event L
    return head_in, sm.model.dense.query(head_in)


class ExactIndex:
    """Inner product against every item, excluded ids set to −inf, then top-k."""

    kind = "exact"

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = vectors  # [C+1, D]; row 0 is padding

    def search(self, query: torch.Tensor, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """query [B, D] → (ids [B, k'], scores [B, k']), k' = min(k, items left); padded with id 0."""
        scores = query @ self.vectors.T  # [B, C+1]
        scores[:, 0] = float("-inf")
        for b, ex in enumerate(exclude):
            if len(ex):
                scores[b, torch.from_numpy(ex)] = float("-inf")
        top = scores.topk(min(k, scores.shape[1] - 1), dim=1)
        return _drop_excluded(top.indices.numpy(), top.values.numpy())


class FaissIndex:
    """HNSW graph over the item vectors (inner product); over-fetches to make room for exclusions."""

    kind = "faiss-hnsw"

    def __init__(self, vectors: torch.Tensor, m: int = 32, ef_search: int = 256) -> None:
        import faiss  # imported here: only large catalogues need it

        data = np.ascontiguousarray(vectors[1:].numpy().astype(np.float32))
        self.index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = max(2 * m, 64)
        self.index.add(data)
        self.index.hnsw.efSearch = ef_search
        self.num_items = data.shape[0]

    def search(self, query: torch.Tensor, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(self.num_items, k + max((len(e) for e in exclude), default=0))
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, fetch)
        scores, ids = self.index.search(np.ascontiguousarray(query.numpy().astype(np.float32)), fetch)
        ids = ids + 1  # faiss row r is item r+1; missing results come back as -1 → 0
        for b, ex in enumerate(exclude):
            if len(ex):
                scores[b, np.isin(ids[b], ex)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return _drop_excluded(np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1))


def _drop_excluded(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.where(np.isfinite(scores) & (ids > 0), ids, 0)
    return ids, np.where(ids > 0, scores, -np.inf)


def build_index(vectors: torch.Tensor, ann_min_items: int, hnsw_m: int = 32, ef_search: int = 256) -> ExactIndex | FaissIndex:
    num_items = vectors.shape[0] - 1
    if ann_min_items and num_items >= ann_min_items:
        log.info("building a FAISS HNSW index over %d items (M=%d)", num_items, hnsw_m)
        return FaissIndex(vectors, hnsw_m, ef_search)
    return ExactIndex(vectors)


@torch.no_grad()
def action_probabilities(sm: ServingModel, head_in: torch.Tensor, candidates: torch.Tensor) -> dict[str, torch.Tensor]:
    """head_in [B, H], candidates [B, K] item indices → {action: P(a) [B, K]}.

    Each (request, candidate) pair is its own row through the feedback MLP, so a candidate's
    probabilities do not depend on which other candidates are scored with it."""
    schema = sm.model.schema
    if not schema.actions:
        return {}
    dense = sm.model.dense
    items = F.embedding(candidates, sm.model.tables[table_name(ITEM)])  # [B, K, D]
    logits = dense.feedback_logits(head_in[:, None, :].expand(-1, candidates.shape[1], -1), items)
    named = dense.action_logits(logits)
    return {a.name: feedback_probability(a, named[a.name]) for a in schema.actions}


def combine(probs: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """score = Σ_a w_a · P(a), [B, K]."""
    return sum(w * probs[a] for a, w in weights.items())


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
