"""Model math at inference time, shared by Serve (online) and Tune (offline, over many users).

encode_next:  histories + the next event's context → heads' input h [B, H] and query q [B, D]
retrieval:    top-K of <q, E_item(j)> over the catalogue, excluded items removed
              (exact FAISS flat search, or a FAISS IVF index for large catalogues)
ranking:      P(a | h, candidate) from the feedback heads (candidates never see each other:
              one row per candidate, or candidate isolation for three_token models);
              score = Σ_a w_a · P(a)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from argus_models.checkpoint import InferenceModel
from argus_models.losses import feedback_probability
from argus_models.model import ITEM, ITEM_IDS, ctx_feature, fb_feature, hash_feature, table_name
from argus_models.tokenization import EVENT_TIMES
from argus_models.weights import ENGAGE, SHARPNESS

log = logging.getLogger(__name__)


@dataclass
class Events:
    """One user's events in model indices, oldest first (L events).

    items:    [L] item indices (1..C; 0 for an item outside the vocabulary, see `hashes`)
    contexts: {column: [L] context indices (0 = unknown)}
    feedback: {action: [L] feedback-token codes}
    hashes:   [L, K] multi-hash bucket rows (`hashing.hash_buckets` of the raw id) of the events
              whose item is outside the vocabulary, 0 elsewhere; None when every item is known
    times:    [L] event times in seconds; None when unknown (only an HSTU encoder with a time-gap
              bias reads them, and it needs them)
    """

    items: np.ndarray
    contexts: dict[str, np.ndarray]
    feedback: dict[str, np.ndarray]
    hashes: np.ndarray | None = None
    times: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _rows(self, rows: slice) -> "Events":
        return Events(
            self.items[rows],
            {k: v[rows] for k, v in self.contexts.items()},
            {k: v[rows] for k, v in self.feedback.items()},
            None if self.hashes is None else self.hashes[rows],
            None if self.times is None else self.times[rows],
        )

    def tail(self, n: int) -> "Events":
        return self._rows(slice(len(self) - min(n, len(self)), None))

    def head(self, n: int) -> "Events":
        """The first n events."""
        return self._rows(slice(None, n))

    def concat(self, other: "Events") -> "Events":
        hashes = None
        if self.hashes is not None or other.hashes is not None:
            k = (self.hashes if self.hashes is not None else other.hashes).shape[1]
            hashes = np.concatenate(
                [e.hashes if e.hashes is not None else np.zeros((len(e), k), dtype=np.int64) for e in (self, other)]
            )
        return Events(
            np.concatenate([self.items, other.items]),
            {k: np.concatenate([v, other.contexts[k]]) for k, v in self.contexts.items()},
            {k: np.concatenate([v, other.feedback[k]]) for k, v in self.feedback.items()},
            hashes,
            None if self.times is None or other.times is None else np.concatenate([self.times, other.times]),
        )


def hashed_item_rows(model: InferenceModel, codes: np.ndarray) -> torch.Tensor:
    """Item-table rows [n, D·(1+K)] of items outside the vocabulary: no id row (zeros), only the
    rows of their hash buckets `codes` [n, K] — the multi-hash tables' cold-id path."""
    buckets = model.schema.item_hash_buckets
    if not buckets:
        raise ValueError("the model has no multi-hash tables: items outside the vocabulary cannot be embedded")
    codes = torch.as_tensor(codes, dtype=torch.int64)
    if codes.ndim != 2 or codes.shape[1] != len(buckets):
        raise ValueError(f"hash codes have shape {tuple(codes.shape)}; the model has {len(buckets)} hash tables")
    hashed = [model.tables[table_name(hash_feature(k))][codes[:, k]] for k in range(len(buckets))]
    return torch.cat([torch.zeros_like(hashed[0]), *hashed], dim=-1)


def next_event_inputs(
    model: InferenceModel,
    histories: list[Events],
    next_contexts: list[dict[str, int]],
    next_times: list[float] | None = None,
) -> tuple[dict, torch.Tensor]:
    """Padded windows: each row's (last max_seq_len) history plus one next event whose item is
    unknown (padding id 0) and whose context is the request's; for a model that reads event times,
    each history's times and the next event's (`next_times`, default: now). Returns
    ({feature: [B, W, D]}, lengths [B])."""
    schema, tables = model.schema, model.tables
    hist = [h.tail(model.config.max_seq_len) for h in histories]
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
    for b, h in enumerate(hist):
        cold = np.flatnonzero(h.items == 0) if h.hashes is not None else ()
        if len(cold):
            emb[ITEM][b, cold] = hashed_item_rows(model, h.hashes[cold]).to(emb[ITEM].dtype)
    emb[ITEM_IDS] = torch.from_numpy(ids[ITEM])
    if schema.time_buckets:
        emb[EVENT_TIMES] = torch.from_numpy(window_times(hist, W, next_times))
    return emb, torch.from_numpy(lengths)


def window_times(hist: list[Events], width: int, next_times: list[float] | None) -> np.ndarray:
    """[B, width] each history's event times, then its next event's (`next_times`, default now)."""
    missing = [b for b, h in enumerate(hist) if h.times is None and len(h)]
    if missing:
        raise ValueError(
            f"history {missing[0]} has no event times: this model's HSTU encoder has a time-gap bias and "
            "needs each event's timestamp"
        )
    now = time.time()
    times = np.zeros((len(hist), width), dtype=np.int64)
    for b, h in enumerate(hist):
        if len(h):
            times[b, : len(h)] = h.times
        times[b, len(h)] = int(now if next_times is None else next_times[b])
    return times


@torch.no_grad()
def encode_next(
    model: InferenceModel,
    histories: list[Events],
    next_contexts: list[dict[str, int]],
    next_times: list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads' input [B, H] and next-item query [B, D] for the event after each history (at
    `next_times`, default now: read only by a model with a time-gap bias and a three-token layout)."""
    emb, lengths = next_event_inputs(model, histories, next_contexts, next_times)
    _, head_in = model.dense.encode(emb, lengths)  # [B, W-1, H]
    head_in = head_in[torch.arange(len(lengths)), lengths - 2]  # the position that predicts event L
    return head_in, model.dense.query(head_in)


class _Searcher:
    """Top-k over a FAISS index whose row r is item r+1, excluded items removed: fetches k plus the
    longest exclusion list, so k items survive the exclusions."""

    index = None
    num_items = 0

    def _fetch(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(query, n)  # (scores, rows) [B, n]; missing rows are -1

    def search(self, query: torch.Tensor, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """query [B, D] → (ids [B, k'], scores [B, k']), k' = min(k, items); padded with id 0, score −inf."""
        fetch = min(self.num_items, k + max((len(e) for e in exclude), default=0))
        scores, ids = self._fetch(np.ascontiguousarray(query.numpy(), dtype=np.float32), fetch)
        ids = ids + 1  # faiss row r is item r+1; missing results come back as -1 → 0
        for b, ex in enumerate(exclude):
            if len(ex):
                scores[b, np.isin(ids[b], ex)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return _drop_excluded(np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1))


def _faiss(vectors: torch.Tensor):
    """faiss, with as many OpenMP threads as torch uses here (its default, every core, spins between
    calls and takes the CPU the other replicas on the host need), and the item rows [C, D] without padding."""
    import faiss  # imported here: training never needs it

    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss, np.ascontiguousarray(vectors[1:].numpy(), dtype=np.float32)


class ExactIndex(_Searcher):
    """Exact inner product against every item (FAISS flat): 1.5 ms a query at 100k items × 64 on
    one thread, where a torch matmul + top-k took 3.2 ms; both read every vector once per query."""

    kind = "exact"

    def __init__(self, vectors: torch.Tensor) -> None:
        faiss, data = _faiss(vectors)  # vectors [C+1, D]; row 0 is padding
        self.num_items = data.shape[0]
        self.index = faiss.IndexFlatIP(data.shape[1])
        self.index.add(data)

    def describe(self) -> dict:
        return {"kind": self.kind, "items": self.num_items}


class RescoredIndex(_Searcher):
    """Every item scanned from 8-bit codes (FAISS scalar quantizer: a quarter of the float32 bytes,
    and a scan of the catalogue reads memory, not arithmetic, at batch 1), then the best
    k + exclusions + `margin` re-scored exactly in float32 and re-ordered. The scores returned are
    exact; an item is missed only when 8-bit rounding pushes it below the shortlist. On a trained
    98,580-item catalogue: the exact top-200 found for 300 of 300 queries (margin 50; the default is 64), 1.4 ms a query
    against 2.9 ms for the float32 scan on one thread."""

    kind = "sq8-rescored"

    def __init__(self, vectors: torch.Tensor, margin: int = 64) -> None:
        faiss, data = _faiss(vectors)
        self.vectors, self.num_items, self.margin = data, data.shape[0], margin
        self.index = faiss.IndexScalarQuantizer(
            data.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        self.index.train(data)
        self.index.add(data)

    def _fetch(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        _, rows = self.index.search(query, min(self.num_items, n + self.margin))
        scores = np.einsum("bkd,bd->bk", self.vectors[np.maximum(rows, 0)], query)
        scores[rows < 0] = -np.inf
        return scores.astype(np.float32), rows

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "items": self.num_items,
            "margin": self.margin,
            "bytes": int(self.index.sa_code_size()) * self.num_items,
        }


class FaissIndex(_Searcher):
    """FAISS inverted lists over the item vectors (IVF-Flat, inner product): k-means cells, a query
    scans the `probe` cells whose centroids score highest, exactly. Over-fetches to make room for
    exclusions.

    Chosen over an HNSW graph because item vectors are not normalised: on a 717,650-item catalogue
    HNSW (inner product, M=32) found 26% of the exact top-200 at any efSearch up to 1024, IVF with
    2,048 lists and 32 probes 98% in 0.9 ms a query (one thread). With `cache_dir` the index is
    written there once (named by a hash of the vectors and the list count) and read back by every
    later replica of the same checkpoint instead of being trained again."""

    kind = "faiss-ivf"

    def __init__(
        self, vectors: torch.Tensor, lists: int = 0, probe: int = 32, cache_dir: Path | None = None, seed: int = 0
    ) -> None:
        t0 = time.perf_counter()
        faiss, data = _faiss(vectors)
        n, d = data.shape
        lists = lists or ivf_lists(n)
        key = hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()
        path = Path(cache_dir) / f"ivf-{key}-{lists}.faiss" if cache_dir is not None else None
        self.cached = path is not None and path.is_file()
        if self.cached:
            self.index = faiss.read_index(str(path))
        else:
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).choice(n, size=min(n, 64 * lists), replace=False)
            self.index.train(data[np.sort(sample)])
            self.index.add(data)
            if path is not None:
                write_atomically(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        if self.index.ntotal != n or self.index.d != d:
            raise ValueError(
                f"{path} holds {self.index.ntotal} × {self.index.d} vectors, the model has {data.shape}; delete it"
            )
        self.index.nprobe = min(probe, lists)
        self.num_items, self.lists, self.path = n, lists, path
        self.build_seconds = time.perf_counter() - t0
        self.bytes = path.stat().st_size if path is not None else int(faiss.serialize_index(self.index).size)
        log.info(
            "FAISS IVF-Flat over %d items (%d lists, %d probed): %s in %.1fs, %.0f MiB",
            n,
            lists,
            self.index.nprobe,
            f"read from {path}" if self.cached else "trained",
            self.build_seconds,
            self.bytes / 2**20,
        )

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "items": self.num_items,
            "build_seconds": round(self.build_seconds, 2),
            "from_cache": self.cached,
            "bytes": self.bytes,
            "file": str(self.path) if self.path else None,
            "lists": self.lists,
            "probe": self.index.nprobe,
        }


def ivf_lists(num_items: int) -> int:
    """Inverted lists for a catalogue: 2·√N rounded to a power of two (1,024 at 200k items, 2,048 from
    about 700k to 1.5M), each list trained on at least 39 vectors."""
    return max(1, min(num_items // 39, int(2 ** round(math.log2(2 * math.sqrt(num_items))))))


def write_atomically(path: Path, write) -> None:
    """`write(tmp)` to a temporary name beside `path`, then rename it over `path` (readers never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _drop_excluded(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.where(np.isfinite(scores) & (ids > 0), ids, 0)
    return ids, np.where(ids > 0, scores, -np.inf)


SCANS = ("sq8", "float32")


def build_index(
    vectors: torch.Tensor,
    ann_min_items: int,
    ann_lists: int = 0,
    ann_probe: int = 32,
    cache_dir: Path | None = None,
    scan: str = "sq8",
) -> ExactIndex | RescoredIndex | FaissIndex:
    """FAISS IVF from `ann_min_items` items (0 = never); below it every item is scanned, from 8-bit
    codes with the shortlist re-scored exactly (`scan="sq8"`) or in float32 (`scan="float32"`)."""
    if scan not in SCANS:
        raise ValueError(f"unknown scan {scan!r}; use one of {SCANS}")
    num_items = vectors.shape[0] - 1
    if ann_min_items and num_items >= ann_min_items:
        return FaissIndex(vectors, ann_lists, ann_probe, cache_dir)
    return RescoredIndex(vectors) if scan == "sq8" else ExactIndex(vectors)


@torch.no_grad()
def action_probabilities(
    model: InferenceModel,
    head_in: torch.Tensor,
    candidates: torch.Tensor,
    histories: list[Events] | None = None,
    next_contexts: list[dict[str, int]] | None = None,
    next_times: list[float] | None = None,
) -> dict[str, torch.Tensor]:
    """head_in [B, H], candidates [B, K] item indices → {action: P(a) [B, K]}.

    A candidate's probabilities never depend on which other candidates are scored with it:
    one_token models run each (request, candidate) pair as its own row through the feedback MLP;
    three_token models append the candidates' item tokens after the history and the next
    context, each attending to the history and itself only (candidate isolation), which needs
    the `histories` and `next_contexts` (and, with a time-gap bias, `next_times`) that `head_in` came from."""
    if not model.schema.actions:
        return {}
    return _score_candidates(model, head_in, candidates, histories, next_contexts, next_times, with_features=False)[0]


def action_features(
    model: InferenceModel,
    head_in: torch.Tensor,
    candidates: torch.Tensor,
    histories: list[Events] | None = None,
    next_contexts: list[dict[str, int]] | None = None,
    next_times: list[float] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`action_probabilities` and the feedback head's last hidden layer [B, K, F] it read them
    from: the features of a linear payoff model on top of the network (neural-linear bandits)."""
    if not model.schema.actions:
        raise ValueError("the schema has no actions, so the model has no feedback head to read features from")
    return _score_candidates(model, head_in, candidates, histories, next_contexts, next_times, with_features=True)


@torch.no_grad()
def _score_candidates(model, head_in, candidates, histories, next_contexts, next_times, with_features: bool):
    dense = model.dense
    items = dense.item_repr(F.embedding(candidates, model.tables[table_name(ITEM)]), candidates)  # [B, K, D]
    if dense.tokens.in_context:
        if histories is None or next_contexts is None:
            raise ValueError("three_token models score candidates in context: pass the histories and next contexts")
        emb, lengths = next_event_inputs(model, histories, next_contexts, next_times)
        inputs = {"emb": emb, "lengths": lengths}
    else:
        inputs = {"head_in": head_in}
    features = None
    if with_features:
        features, logits = dense.candidate_features(items, **inputs)
    else:
        logits = dense.candidate_logits(items, **inputs)
    named = dense.action_logits(logits)
    return {a.name: feedback_probability(a, named[a.name]) for a in model.schema.actions}, features


def engage_probability(retrieval_scores: torch.Tensor, valid: torch.Tensor, sharpness: float) -> torch.Tensor:
    """P(engage | list) [B, K]: softmax over each row's valid candidates of sharpness · <query, item>
    — the next-item model's choice among what is ranked (0 on empty slots)."""
    logits = torch.where(valid, sharpness * retrieval_scores.double(), -torch.inf)
    peak = logits.max(dim=1, keepdim=True).values
    p = torch.exp(logits - torch.where(torch.isfinite(peak), peak, 0.0))
    return p / p.sum(dim=1, keepdim=True).clamp_min(1e-300)


def combine(
    probs: dict[str, torch.Tensor],
    weights: dict[str, float],
    retrieval_scores: torch.Tensor | None = None,
    engage_sharpness: float = 0.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """score [B, K] = P(engage | list) · (w_engage + Σ_a w_a · P(a | engaged)); without the
    engagement term (engage_sharpness 0) Σ_a w_a · P(a | engaged) (argus_models.weights)."""
    conditional = sum(w * probs[a] for a, w in weights.items() if a in probs)
    if not engage_sharpness:
        return conditional
    if retrieval_scores is None:
        raise ValueError(f"{SHARPNESS} > 0 needs the candidates' retrieval scores")
    valid = torch.ones_like(retrieval_scores, dtype=torch.bool) if valid is None else valid
    value = weights.get(ENGAGE, 0.0) if ENGAGE not in probs else 0.0
    return engage_probability(retrieval_scores, valid, engage_sharpness) * (value + conditional)


def item_vectors(model: InferenceModel) -> torch.Tensor:
    """Catalogue vectors [C+1, D] as retrieval scores them."""
    with torch.no_grad():
        return model.dense.item_vectors(model.tables[table_name(ITEM)]).contiguous()
