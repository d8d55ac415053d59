"""The model deployments. Each is scaled on its own and holds its own copy of the checkpoint.

Retriever: history → query vector → top-N candidates (exact or FAISS), seen/excluded removed.
Ranker:    history + candidates → P(a) per candidate → Σ_a w_a·P(a) → diversity → top-k.
           The encoder runs once per request: the Retriever hands its encoder state to the
           Ranker with the candidates, used when both serve the same model version.

Both batch concurrent requests with `@serve.batch` and reload through `user_config`: a new
`checkpoint` (same vocabulary as the app was started with) or, for the Ranker, new weights. A
reload that fails keeps what was loaded, logs why and reports it in `status()`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import psutil
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from argus_models.inference import Events, action_probabilities, build_index, combine, encode_next
from argus_serve.artifacts import (
    ServingModel,
    absolute,
    load_serving_model,
    resolve_checkpoint,
    run_dir_of,
    serving_dir,
)
from argus_serve.scoring import Ranked, diversify, item_groups
from argus_serve.weights import ScoringWeights, resolve_weights

log = logging.getLogger("ray.serve")


@dataclass
class RetrievalQuery:
    events: Events
    next_context: dict[str, int]
    exclude: np.ndarray  # item indices never to return
    n: int  # candidates wanted


@dataclass
class Candidates:
    items: np.ndarray  # [n'] item indices, best first
    scores: np.ndarray  # [n'] <q, E_item>
    head_in: np.ndarray  # [H] the encoder's state for the next event: the Ranker's input when it serves the same model
    model_version: str
    index: str
    compute_ms: float
    batch_size: int


@dataclass
class RankQuery:
    events: Events
    next_context: dict[str, int]
    candidates: np.ndarray
    retrieval_scores: np.ndarray
    k: int
    head_in: np.ndarray | None = None  # the Retriever's encoder state, reused when `encoded_by` is the Ranker's model
    encoded_by: str = ""


@dataclass
class RankResult:
    ranked: Ranked
    model_version: str
    weights_version: str
    compute_ms: float
    batch_size: int


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field("", description="checkpoint or run dir to reload; '' = the one the app started with")
    max_batch_size: int = Field(16, ge=1, description="requests per @serve.batch call")
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="how long a batch waits to fill")


class RetrieverOptions(_Options):
    # a full scan reads every item per request (float32: 2.9 ms at 100k items × 64, one thread; 8-bit codes: 1.4 ms)
    ann_min_items: int = Field(200_000, ge=0, description="use a FAISS IVF index from this catalogue size (0 = never)")
    scan: Literal["sq8", "float32"] = Field(
        "sq8",
        description="below ann_min_items: scan 8-bit codes and re-score the "
        "shortlist exactly (sq8), or scan float32 vectors",
    )
    ann_lists: int = Field(0, ge=0, description="IVF lists (k-means cells); 0 = about 4·sqrt(items)")
    ann_probe: int = Field(32, ge=1, description="lists scanned per query: more finds more of the exact top-k, slower")


class RankerOptions(_Options):
    weights_file: str = Field("", description="weights YAML (the Tune job's format)")
    weights: dict[str, float] = Field(default_factory=dict, description="inline weights; win over weights_file")
    diversity_decay: float = Field(
        0.85, gt=0, le=1, description="score decay per earlier pick of the same group; 1 = off"
    )
    diversity_groups: int = Field(32, ge=1, description="k-means groups over item vectors")
    revision: str = Field("", description="change it to re-read an edited weights file")


class _ModelReplica:
    """Shared load/reload logic of the two model deployments."""

    options_cls: type[_Options] = _Options

    def __init__(self, checkpoint: str, torch_threads: int) -> None:
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.app_checkpoint = str(absolute(checkpoint))
        self.options = self.options_cls()
        self.model = load_serving_model(checkpoint)
        self.vocab_version = self.model.vocab_version
        self.reload_error: str | None = None
        self.reloaded_at: float | None = None
        self.configured = False  # becomes True after the first successful reconfigure
        self._apply(self.options, self.model)

    def _apply(self, options: _Options, model: ServingModel) -> None:  # prepare derived state; raise to refuse
        raise NotImplementedError

    def _set_batching(self, method, options: _Options) -> None:
        method.set_max_batch_size(options.max_batch_size)
        method.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict) -> None:
        """Serve calls this with the deployment's `user_config`, at start and on every change.

        At start a bad config fails the replica (there is nothing to keep); later, a failed
        reload keeps the loaded model and weights and records why."""
        try:
            options = self.options_cls(**(user_config or {}))
            target = resolve_checkpoint(options.checkpoint) if options.checkpoint else Path(self.app_checkpoint)
            model = self.model
            if target != model.checkpoint:
                model = load_serving_model(target)
                if model.vocab_version != self.vocab_version:
                    raise ValueError(
                        f"{target} has vocabulary {model.vocab_version}, the app serves {self.vocab_version}: "
                        "a new vocabulary needs a redeploy with args.checkpoint"
                    )
            self._apply(options, model)
        except (ValueError, ValidationError, OSError) as exc:
            if not self.configured:
                raise
            self.reload_error = f"{type(exc).__name__}: {exc}"
            log.error("%s: reload refused, keeping %s: %s", type(self).__name__, self.model.version, self.reload_error)
            return
        self.options, self.model, self.reload_error, self.reloaded_at = options, model, None, time.time()
        self.configured = True
        log.info("%s: serving %s with %s", type(self).__name__, model.version, options.model_dump())

    def base_status(self) -> dict:
        return {
            "pid": os.getpid(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "model_version": self.model.version,
            "checkpoint": str(self.model.checkpoint),
            "vocab_version": self.vocab_version,
            "reload_error": self.reload_error,
            "reloaded_at": self.reloaded_at,
        }


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Retriever(_ModelReplica):
    options_cls = RetrieverOptions

    def __init__(self, checkpoint: str, torch_threads: int = 1) -> None:
        self.index = None
        super().__init__(checkpoint, torch_threads)

    def _apply(self, options: RetrieverOptions, model: ServingModel) -> None:
        if self.index is None or model is not self.model or options != self.options:
            self.index = build_index(
                model.item_vectors,
                options.ann_min_items,
                options.ann_lists,
                options.ann_probe,
                cache_dir=serving_dir(run_dir_of(model.checkpoint)),
                scan=options.scan,
            )
        self._set_batching(self.retrieve, options)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def retrieve(self, queries: list[RetrievalQuery]) -> list[Candidates]:
        t0 = time.perf_counter()
        model, index = self.model, self.index
        head_in, query = encode_next(model.model, [q.events for q in queries], [q.next_context for q in queries])
        n = max(q.n for q in queries)
        ids, scores = index.search(query, n, [q.exclude for q in queries])
        head_in = head_in.numpy()
        ms = (time.perf_counter() - t0) * 1000
        out = []
        for b, q in enumerate(queries):
            keep = ids[b, : q.n] > 0
            out.append(
                Candidates(
                    ids[b, : q.n][keep], scores[b, : q.n][keep], head_in[b], model.version, index.kind, ms, len(queries)
                )
            )
        return out

    def status(self) -> dict:
        return self.base_status() | {
            "index": self.index.kind,
            "index_info": self.index.describe(),
            "items": self.model.num_items,
            "options": self.options.model_dump(),
        }


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Ranker(_ModelReplica):
    options_cls = RankerOptions

    def __init__(self, checkpoint: str, torch_threads: int = 1) -> None:
        self.weights: ScoringWeights | None = None
        self.groups: np.ndarray | None = None
        self._groups_key = None
        super().__init__(checkpoint, torch_threads)

    def _apply(self, options: RankerOptions, model: ServingModel) -> None:
        actions = [a.name for a in model.model.schema.actions]
        weights = resolve_weights(options.weights, options.weights_file, actions, run_dir_of(model.checkpoint))
        key = (model.version, options.diversity_groups)
        if key != self._groups_key:
            self.groups, self._groups_key = item_groups(model.item_vectors, options.diversity_groups), key
        self.weights = weights
        self._set_batching(self.rank, options)
        log.info("Ranker weights (%s): %s", weights.source, weights.weights)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def rank(self, queries: list[RankQuery]) -> list[RankResult]:
        t0 = time.perf_counter()
        model, weights, groups, decay = self.model, self.weights, self.groups, self.options.diversity_decay
        events, contexts = [q.events for q in queries], [q.next_context for q in queries]
        if all(q.encoded_by == model.version and q.head_in is not None for q in queries):
            head_in = torch.from_numpy(np.stack([q.head_in for q in queries]))  # the Retriever ran the same encoder
        else:  # another model (a reload under way in one of the deployments): encode here
            head_in, _ = encode_next(model.model, events, contexts)
        width = max(len(q.candidates) for q in queries)
        cand = torch.zeros((len(queries), width), dtype=torch.int64)
        for b, q in enumerate(queries):
            cand[b, : len(q.candidates)] = torch.from_numpy(q.candidates)
        probs = action_probabilities(model.model, head_in, cand, events, contexts)
        scores = combine(probs, weights.weights).numpy() if probs else None
        results = []
        for b, q in enumerate(queries):
            n = len(q.candidates)
            s = scores[b, :n] if scores is not None else q.retrieval_scores.astype(np.float32)
            order = diversify(s, groups[q.candidates], decay, q.k)
            ranked = Ranked(
                items=q.candidates[order],
                scores=s[order],
                retrieval_scores=q.retrieval_scores[order],
                probabilities={a: p[b, :n].numpy()[order] for a, p in probs.items()},
                groups=groups[q.candidates[order]],
            )
            results.append(ranked)
        ms = (time.perf_counter() - t0) * 1000
        return [RankResult(r, model.version, weights.version, ms, len(queries)) for r in results]

    def status(self) -> dict:
        return self.base_status() | {
            "weights": self.weights.weights,
            "weights_source": self.weights.source,
            "weights_version": self.weights.version,
            "options": self.options.model_dump(),
        }
