"""The deployments. Each is scaled on its own and holds its own copy of the checkpoint.

Retriever: the HTTP ingress (ingress.py's FastAPI app: validation, raw ids, the user store or the
           Redis event store that POST /v1/events appends to) and
           retrieval: history → query vector → top-N candidates (exact or FAISS), seen/excluded
           removed; then one handle call to the Ranker, whose result it returns in raw ids.
Ranker:    history + candidates → P(a) per candidate → Σ_a w_a·P(a) → diversity → top-k.
           The encoder runs once per request: the Retriever hands its encoder state to the
           Ranker with the candidates, used when both serve the same model version.
StateRefresher (with the event store): re-encodes the users POST /v1/events touched, off the
           request path, and stores their states in Redis; the Retriever then reads a user's
           stored state instead of running the encoder (`state_mode`, SOAP-style serving).

Retrieval is in the replica that answers HTTP because each hop between deployments costs CPU
(serialization, gRPC, the replica's request machinery) comparable to the model work itself: on
2 cores, a separate ingress deployment took a quarter of the CPU per request (serve/README.md).

Both batch concurrent requests with `@serve.batch` and reload through `user_config`: a new
`checkpoint` (same vocabulary as the app was started with) or, for the Ranker, new weights. A
reload that fails keeps what was loaded, logs why and reports it in `status()`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request/response classes
# on the methods that `serve.ingress` wraps.
import asyncio
import collections
import gc
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import psutil
import redis
import torch
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

from argus_models.config import ModelSchema
from argus_models.inference import Events, action_features, action_probabilities, build_index, combine, encode_next
from argus_serve.api import EventsRequest, EventsResponse, IngestEvent, RecommendRequest, RecommendResponse
from argus_serve.artifacts import (
    ServingModel,
    absolute,
    load_serving_model,
    load_vocabulary,
    read_actions,
    resolve_checkpoint,
    run_dir_of,
    serving_dir,
)
from argus_serve.bandit import (
    BanditPrior,
    Posterior,
    PosteriorStore,
    Solved,
    explore_order,
    observations,
    payoff_features,
    request_rng,
)
from argus_serve.events import EventStore, StoreUnavailable, UserState
from argus_serve.ingress import BadRequest, Limits, RequestReader, api, read_token, store_layout
from argus_serve.scoring import Ranked, diversify, item_groups
from argus_serve.weights import ScoringWeights, resolve_weights

log = logging.getLogger("ray.serve")


@dataclass
class RetrievalQuery:
    events: Events
    next_context: dict[str, int]
    exclude: np.ndarray  # item indices never to return
    n: int  # candidates wanted
    state: tuple[np.ndarray, np.ndarray] | None = None  # a stored (query, head input): no encoder run


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
    user_key: str = ""  # who asks (user id, or a digest of an anonymous history): seeds exploration


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
    state_mode: Literal["off", "latest", "mean2"] = Field(
        "latest",
        description="with the state refresher: use the user's stored encoder state (the latest, or the mean of "
        "the two latest as SOAP does) instead of running the encoder; off = always the encoder",
    )
    state_max_age_s: float = Field(300.0, ge=0, description="a stored state older than this is not used")


class RankerOptions(_Options):
    weights_file: str = Field("", description="weights YAML (the Tune job's format)")
    weights: dict[str, float] = Field(
        default_factory=dict, description="inline weights (per action, and `engage`); win over weights_file"
    )
    engage_sharpness: float = Field(
        0.0,
        ge=0,
        description="with inline weights: the score is multiplied by P(engage | list) = softmax of this · the "
        "retrieval score over the candidates; 0 = off (a weights file carries its own)",
    )
    diversity_decay: float = Field(
        0.85, gt=0, le=1, description="score decay per earlier pick of the same group; 1 = off"
    )
    diversity_groups: int = Field(32, ge=1, description="k-means groups over item vectors")
    revision: str = Field("", description="change it to re-read an edited weights file")
    exploration: Literal["none", "neural_linear"] = Field(
        "none",
        description="neural_linear: Thompson sampling from a Bayesian linear payoff per action over the feedback "
        "head's last hidden layer, learned from ingested feedback (needs events_store and feedback_learner)",
    )
    exploration_share: float = Field(
        0.2, ge=0, le=1, description="share of the k slots (the last ones) filled by the sampled payoffs"
    )
    exploration_seed: int = Field(0, ge=0, description="seeds the sampling, with the user and the posterior version")
    posterior_refresh_s: float = Field(1.0, ge=0, description="how often a replica checks for a newer posterior")


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

    @staticmethod
    def _freeze_heap() -> None:
        """Move every object alive now (torch, Ray, FastAPI, the model: ~450k of them) out of the
        garbage collector's reach: a full collection over them takes ~250 ms on a 2-core host, a
        pause that lands on whichever requests are in flight. Called once loading is done."""
        gc.collect()
        gc.freeze()

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
        self._freeze_heap()
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


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
@serve.ingress(api)
class Retriever(_ModelReplica):
    options_cls = RetrieverOptions

    def __init__(
        self,
        checkpoint: str,
        ranker: DeploymentHandle,
        torch_threads: int = 1,
        limits: dict | None = None,
        events: dict | None = None,
        refresher: DeploymentHandle | None = None,
        auth: dict | None = None,
    ) -> None:
        self.index = None
        super().__init__(checkpoint, torch_threads)
        self.limits = Limits(**(limits or {}))
        api.state.max_body_bytes = self.limits.max_body_bytes
        api.state.token = read_token(**(auth or {}))  # read here: the file or variable is the replica's
        self.reader = RequestReader(absolute(checkpoint), self.limits)
        self.ranker = ranker
        self.events = self._event_store(events or {})
        self.refresher = refresher
        self.requests = Counter("argus_requests", description="recommend requests by HTTP status", tag_keys=("status",))
        self.ingested = Counter("argus_events", description="ingested events by outcome", tag_keys=("outcome",))
        self.latency = Histogram(
            "argus_stage_latency_ms",
            description="latency per stage (ms)",
            boundaries=[1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000],
            tag_keys=("stage",),
        )
        log.info(
            "Retriever: %d known users, %d items, limits %s, bearer token %s",
            len(self.reader.store),
            self.model.num_items,
            self.limits,
            "required" if api.state.token is not None else "not required",
        )
        self._freeze_heap()

    def _event_store(self, events: dict) -> EventStore | None:
        """With `events.url`: histories in Redis, the training run's loaded once (every replica
        but the first finds them there)."""
        if not events.get("url"):
            return None
        cap = events.get("history_cap") or self.model.model.config.max_seq_len
        store = EventStore(
            events["url"], self.reader.vocab.version(), self.reader.layout(), cap, prefix=events.get("prefix", "argus")
        )
        known = self.reader.store
        store.seed(known.histories(self.reader.vocab.users), len(known))
        log.info("Retriever: histories in %s (%s)", events["url"], store.stats())
        return store

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

    @api.post("/v1/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        t0 = time.perf_counter()
        try:
            stored, state, state_info = None, None, {"state_source": "encoder"}
            if self.events is not None and req.user_id is not None:
                stored, seq, saved = await self.events.read(req.user_id)
                state, state_info = self._usable_state(req, saved, seq)
            p = self.reader.prepare(req, stored, from_store=self.events is None)
        except StoreUnavailable as exc:
            self.requests.inc(tags={"status": "503"})
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from None
        except BadRequest as exc:
            self.requests.inc(tags={"status": "422"})
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except LookupError as exc:
            self.requests.inc(tags={"status": "404"})
            raise HTTPException(status_code=404, detail=str(exc)) from None
        t1 = time.perf_counter()
        cands = await self.retrieve(RetrievalQuery(p.events, p.next_context, p.exclude, self.limits.retrieve_k, state))
        t2 = time.perf_counter()
        result = await self.ranker.rank.remote(
            RankQuery(
                p.events,
                p.next_context,
                cands.items,
                cands.scores,
                req.k,
                cands.head_in,
                cands.model_version,
                req.user_id if req.user_id is not None else f"history:{zlib.crc32(p.events.items.tobytes())}",
            )
        )
        t3 = time.perf_counter()
        items = self.reader.items(result.ranked, req.debug)
        t4 = time.perf_counter()
        stages = {"prepare": t1 - t0, "retrieve": t2 - t1, "rank": t3 - t2, "respond": t4 - t3, "total": t4 - t0}
        for stage in ("retrieve", "rank", "total"):  # each observation costs ~0.1 ms; prepare and respond stay under 1
            self.latency.observe(stages[stage] * 1000, tags={"stage": stage})
        self.requests.inc(tags={"status": "200"})
        timings = None
        if req.debug:
            timings = {f"{k}_ms": round(v * 1000, 3) for k, v in stages.items()}
            timings |= {
                "retriever_compute_ms": round(cands.compute_ms, 3),
                "retriever_batch": float(cands.batch_size),
                "ranker_compute_ms": round(result.compute_ms, 3),
                "ranker_batch": float(result.batch_size),
                "candidates": float(len(cands.items)),
            }
        return RecommendResponse(
            user_id=req.user_id,
            items=items,
            history_events=len(p.events),
            history_source=p.source,
            model_version={"retriever": cands.model_version, "ranker": result.model_version, "index": cands.index},
            weights_version=result.weights_version,
            warnings=p.warnings,
            timings_ms=timings,
            **state_info,
        )

    def _usable_state(self, req: RecommendRequest, saved: UserState | None, seq: int):
        """The stored (query, head input) to use for this request, if any, and what the response says."""
        mode = self.options.state_mode
        if mode == "off" or self.refresher is None or saved is None or req.history or req.context:
            return None, {"state_source": "encoder"}  # a request's own events or context: encoded now
        age = max(0.0, time.time() - saved.at)
        if saved.version != self.model.version or age > self.options.state_max_age_s:
            return None, {"state_source": "encoder"}
        state = (saved.query, saved.head_in) if mode == "latest" else saved.mean_of_two()
        info = {
            "state_source": "stored" if mode == "latest" or saved.previous is None else "stored_mean2",
            "state_age_s": round(age, 3),
            "state_lag_events": max(0, seq - saved.seq),
        }
        return state, info

    @api.post("/v1/events", response_model=EventsResponse)
    async def ingest(self, body: EventsRequest | IngestEvent) -> EventsResponse:
        """Append events to users' histories in the event store (one event or {"events": [...]})."""
        if self.events is None:
            raise HTTPException(
                status_code=404,
                detail="this service reads the histories frozen in its training run: start it with "
                "args.events_store=redis://HOST:PORT/DB to ingest events",
            )
        req = body if isinstance(body, EventsRequest) else EventsRequest(events=[body])
        try:
            ing = self.reader.ingest(req, self.events.layout)
        except BadRequest as exc:
            self.ingested.inc(len(req.events), tags={"outcome": "refused"})
            raise HTTPException(status_code=422, detail=str(exc)) from None
        try:
            done = await self.events.append(ing.per_user) if ing.per_user else {}
            await self.events.quarantine([q.model_dump() for q in ing.quarantined])
        except StoreUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "1"}) from None
        appended = sum(r.appended for r in done.values())
        duplicates = sum(r.duplicates for r in done.values())
        for outcome, n in (("appended", appended), ("duplicate", duplicates), ("quarantined", len(ing.quarantined))):
            if n:
                self.ingested.inc(n, tags={"outcome": outcome})
        return EventsResponse(
            received=len(req.events),
            appended=appended,
            duplicates=duplicates,
            quarantined=ing.quarantined,
            history_events={u: r.history_events for u, r in done.items()},
            warnings=ing.warnings,
        )

    @api.get("/healthz")
    async def healthz(self) -> dict:
        try:
            ranker = await self.ranker.status.remote()
        except Exception as exc:  # a Ranker that cannot answer makes the service unhealthy, not the Retriever
            raise HTTPException(status_code=503, detail=f"the Ranker did not answer: {exc}") from None
        retriever = self.status()
        degraded = bool(retriever["reload_error"] or ranker["reload_error"])
        refresher = None
        if self.refresher is not None:
            try:
                refresher = await self.refresher.status.remote()
            except Exception as exc:
                refresher, degraded = {"error": f"the state refresher did not answer: {exc}"}, True
        if self.events is not None:
            try:
                await self.events.ping()
                retriever["event_store"]["reachable"] = True
            except StoreUnavailable as exc:
                retriever["event_store"] |= {"reachable": False, "error": str(exc)}
                degraded = True
        return {
            "status": "degraded" if degraded else "ok",
            "users": len(self.reader.store),
            "items": self.reader.vocab.num_items,
            "retriever": retriever,
            "ranker": ranker,
            "state_refresher": refresher,
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def retrieve(self, queries: list[RetrievalQuery]) -> list[Candidates]:
        t0 = time.perf_counter()
        model, index = self.model, self.index
        fresh = [b for b, q in enumerate(queries) if q.state is None]  # the encoder runs for these only
        dim_q, dim_h = model.item_vectors.shape[1], None
        if fresh:
            h, q = encode_next(
                model.model, [queries[b].events for b in fresh], [queries[b].next_context for b in fresh]
            )
            dim_h = h.shape[1]
        else:
            dim_h = len(queries[0].state[1])
        query = torch.zeros((len(queries), dim_q), dtype=torch.float32)
        head_in = torch.zeros((len(queries), dim_h), dtype=torch.float32)
        if fresh:
            query[fresh], head_in[fresh] = q, h
        for b, qu in enumerate(queries):
            if qu.state is not None:
                query[b], head_in[b] = torch.from_numpy(qu.state[0]), torch.from_numpy(qu.state[1])
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
            "user_store": self.reader.store.stats(),
            "event_store": self.events.stats() if self.events is not None else None,
            "index": self.index.kind,
            "index_info": self.index.describe(),
            "items": self.model.num_items,
            "options": self.options.model_dump(),
        }


@dataclass
class _Exploration:
    """The posterior a Ranker replica samples from: its model version, Redis version, solved form."""

    model_version: str
    version: int
    solved: dict[str, Solved]
    checked: float  # time.monotonic() of the last version check


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Ranker(_ModelReplica):
    options_cls = RankerOptions

    def __init__(
        self, checkpoint: str, torch_threads: int = 1, events: dict | None = None, bandit: dict | None = None
    ) -> None:
        self.weights: ScoringWeights | None = None
        self.groups: np.ndarray | None = None
        self._groups_key = None
        self.posteriors: PosteriorStore | None = None
        self._explore: _Exploration | None = None
        self.explore_error: str | None = None
        super().__init__(checkpoint, torch_threads)  # options at their defaults: exploration off
        events = events or {}
        if events.get("url"):  # the posterior of the event store's namespace (EventStore.ns)
            self.posteriors = PosteriorStore(
                events["url"],
                f"{events.get('prefix', 'argus')}:{self.vocab_version}",
                list(self.model.model.schema.actions),
                BanditPrior(**(bandit or {})),
            )
        self._freeze_heap()

    def _apply(self, options: RankerOptions, model: ServingModel) -> None:
        actions = [a.name for a in model.model.schema.actions]
        if options.exploration == "neural_linear":
            if self.posteriors is None:
                raise ValueError(
                    "exploration=neural_linear learns from ingested feedback: start the app with "
                    "args.events_store=redis://HOST:PORT/DB (and feedback_learner: true)"
                )
            if not actions:
                raise ValueError("exploration=neural_linear needs action heads; the model has none")
        weights = resolve_weights(
            options.weights, options.weights_file, actions, run_dir_of(model.checkpoint), options.engage_sharpness
        )
        key = (model.version, options.diversity_groups)
        if key != self._groups_key:
            self.groups, self._groups_key = item_groups(model.item_vectors, options.diversity_groups), key
        self.weights = weights
        self._set_batching(self.rank, options)
        log.info(
            "Ranker weights (%s): %s, engage_sharpness %s", weights.source, weights.weights, weights.engage_sharpness
        )

    async def _posterior(self, model: ServingModel) -> _Exploration:
        """The shared posterior, re-read from Redis when its version moved (checked at most every
        posterior_refresh_s). Redis down: the last one read (or the prior), the error in status()."""
        now, cached = time.monotonic(), self._explore
        current = cached is not None and cached.model_version == model.version
        if current and now - cached.checked < self.options.posterior_refresh_s:
            return cached
        dim = model.model.dense.feedback_head[0].out_features + 2
        try:
            version = await self.posteriors.version(model.version)
            if not current or version != cached.version:
                version, posts = await self.posteriors.load(model.version, dim)
                cached = _Exploration(model.version, version, {a: p.solved() for a, p in posts.items()}, now)
            cached.checked = now
            self.explore_error = None
        except (OSError, redis.RedisError) as exc:
            self.explore_error = f"posterior not read from {self.posteriors.url} ({type(exc).__name__}: {exc})"
            if not current:
                prior = Posterior.prior(dim, self.posteriors.prior).solved()
                cached = _Exploration(model.version, 0, {a.name: prior for a in self.posteriors.actions}, now)
            cached.checked = now
        self._explore = cached
        return cached

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def rank(self, queries: list[RankQuery]) -> list[RankResult]:
        t0 = time.perf_counter()
        model, weights, groups, options = self.model, self.weights, self.groups, self.options
        explore = await self._posterior(model) if options.exploration == "neural_linear" else None
        events, contexts = [q.events for q in queries], [q.next_context for q in queries]
        if all(q.encoded_by == model.version and q.head_in is not None for q in queries):
            head_in = torch.from_numpy(np.stack([q.head_in for q in queries]))  # the Retriever ran the same encoder
        else:  # another model (a reload under way in one of the deployments): encode here
            head_in, _ = encode_next(model.model, events, contexts)
        width = max(len(q.candidates) for q in queries)
        cand = torch.zeros((len(queries), width), dtype=torch.int64)
        retrieval = torch.zeros((len(queries), width), dtype=torch.float32)
        for b, q in enumerate(queries):
            cand[b, : len(q.candidates)] = torch.from_numpy(q.candidates)
            retrieval[b, : len(q.candidates)] = torch.from_numpy(q.retrieval_scores.astype(np.float32))
        if explore is not None:
            probs, hidden = action_features(model.model, head_in, cand, events, contexts)
        else:
            probs = action_probabilities(model.model, head_in, cand, events, contexts)
        scores = (
            combine(probs, weights.weights, retrieval, weights.engage_sharpness, cand > 0).numpy() if probs else None
        )
        results = []
        for b, q in enumerate(queries):
            n = len(q.candidates)
            probabilities = {a: p[b, :n].numpy() for a, p in probs.items()}
            s = scores[b, :n] if scores is not None else q.retrieval_scores.astype(np.float32)
            explored = None
            if explore is None:
                order = diversify(s, groups[q.candidates], options.diversity_decay, q.k)
            else:
                s, sampled, probabilities = self._payoffs(explore, q, hidden[b, :n], probs, b, retrieval[b : b + 1, :n])
                order, explored = explore_order(
                    s, sampled, groups[q.candidates], options.diversity_decay, q.k, options.exploration_share
                )
                s = s.copy()
                s[order[explored]] = sampled[order[explored]]  # an explored slot shows the score that placed it
            ranked = Ranked(
                items=q.candidates[order],
                scores=s[order],
                retrieval_scores=q.retrieval_scores[order],
                probabilities={a: p[order] for a, p in probabilities.items()},
                groups=groups[q.candidates[order]],
                explored=explored,
            )
            results.append(ranked)
        ms = (time.perf_counter() - t0) * 1000
        version = weights.version if explore is None else f"{weights.version}+nlb{explore.version}"
        return [RankResult(r, model.version, version, ms, len(queries)) for r in results]

    def _payoffs(self, explore: _Exploration, q: RankQuery, hidden, probs, b: int, retrieval):
        """One request's posterior-mean scores, Thompson-sampled scores and posterior-mean P(a)."""
        rng = request_rng(self.options.exploration_seed, q.user_key, explore.version)
        weights = self.weights
        mean, sampled = {}, {}
        for a in sorted(probs):
            x = payoff_features(hidden, probs[a][b, : len(q.candidates)])
            post = explore.solved[a]
            mean[a] = torch.from_numpy(np.clip(x @ post.mean, 0.0, 1.0))[None]
            sampled[a] = torch.from_numpy(np.clip(x @ post.sample(rng), 0.0, 1.0))[None]
        valid = torch.ones_like(retrieval, dtype=torch.bool)
        score = lambda p: combine(p, weights.weights, retrieval, weights.engage_sharpness, valid)[0].numpy()  # noqa: E731
        return score(mean), score(sampled), {a: p[0].numpy() for a, p in mean.items()}

    def status(self) -> dict:
        explore = None
        if self.options.exploration == "neural_linear":
            e = self._explore
            explore = {
                "posterior_version": e.version if e else None,
                "observations": {a: s.count for a, s in e.solved.items()} if e else None,
                "prior": vars(self.posteriors.prior),
                "error": self.explore_error,
            }
        return self.base_status() | {
            "weights": self.weights.weights,
            "engage_sharpness": self.weights.engage_sharpness,
            "weights_source": self.weights.source,
            "weights_version": self.weights.version,
            "options": self.options.model_dump(),
            "exploration": explore,
        }


class RefresherOptions(_Options):
    batch_users: int = Field(64, ge=1, description="users encoded per batch")


REFRESH_GROUP = "state-refresher"
LEARN_GROUP = "feedback-learner"


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=4)
class StateRefresher(_ModelReplica):
    """Users' encoder states off the request path (SOAP-style asynchronous serving): reads the
    users each POST /v1/events touched from the event store's stream (a Redis consumer group, so
    replicas share the work and an unacknowledged batch is taken again), encodes their stored
    histories in batches and writes each state (query, heads' input, the event it covers, the
    model version) to Redis, keeping the one before it for the mean of two.

    With `bandit` (the app's feedback_learner) it also folds the ingested events' feedback into the
    Ranker's neural-linear posterior (argus_serve.bandit), as a second consumer group of the same
    stream: each event scored from the history before it, counted once per event."""

    options_cls = RefresherOptions

    async def __init__(self, checkpoint: str, events: dict, torch_threads: int = 1, bandit: dict | None = None) -> None:
        super().__init__(checkpoint, torch_threads)
        ckpt = absolute(checkpoint)
        vocab = load_vocabulary(ckpt)
        hashes = list(ModelSchema.load(ckpt / "schema.json").item_hash_buckets)
        layout = store_layout(vocab, read_actions(ckpt), hashes)
        cap = events.get("history_cap") or self.model.model.config.max_seq_len
        self.events = EventStore(events["url"], vocab.version(), layout, cap, prefix=events.get("prefix", "argus"))
        self.consumer = f"refresher-{os.getpid()}"
        self.counts = collections.Counter()
        # (when, seconds from an event's ingest to its user's new state) of the latest refreshes
        self.lags = collections.deque(maxlen=20_000)
        self.last_error: str | None = None
        self.posteriors = None
        if bandit is not None:
            actions = list(self.model.model.schema.actions)
            if not actions:
                raise ValueError("feedback_learner needs a model with action heads; this one has none")
            ns = f"{events.get('prefix', 'argus')}:{vocab.version()}"
            self.posteriors = PosteriorStore(events["url"], ns, actions, BanditPrior(**bandit))
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(self.refresh_once, "last_error"))
        self.learn_error: str | None = None
        self._learn_task = loop.create_task(self._run(self.learn_once, "learn_error")) if self.posteriors else None
        self._freeze_heap()

    def _apply(self, options: RefresherOptions, model: ServingModel) -> None:
        pass

    async def _run(self, step, error: str) -> None:
        while True:
            try:
                await step()
                setattr(self, error, None)
            except StoreUnavailable as exc:
                setattr(self, error, str(exc))
                await asyncio.sleep(1.0)
            except Exception as exc:  # keep going; the error is in status()
                setattr(self, error, f"{type(exc).__name__}: {exc}")
                log.exception("StateRefresher: %s failed", step.__name__)
                await asyncio.sleep(1.0)

    async def learn_once(self, block_ms: int = 1000) -> int:
        """One batch of the feedback learner: the touched users' new events folded into the
        posterior; returns how many observations counted."""
        touched = await self.events.touched(LEARN_GROUP, self.consumer, self.options.batch_users, block_ms)
        if not touched.ids:
            return 0
        model = self.model
        users = list(touched.users)
        stored = await self.events.histories(users)
        cursors = await self.posteriors.cursors(model.version, users)
        todo = [
            (u, ev, seq, cursors.get(u, 0))
            for u, (ev, seq) in zip(users, stored)
            if ev is not None and seq > cursors.get(u, 0)
        ]
        obs, skipped = await asyncio.to_thread(observations, model.model, todo) if todo else ([], 0)
        counted = await self.posteriors.update(model.version, obs)
        await self.events.ack(LEARN_GROUP, touched.ids)
        self.counts["feedback_observed"] += counted
        self.counts["feedback_skipped"] += skipped
        return counted

    async def refresh_once(self, block_ms: int = 1000) -> int:
        """One batch: the touched users' states written; returns how many users were encoded."""
        touched = await self.events.touched(REFRESH_GROUP, self.consumer, self.options.batch_users, block_ms)
        if not touched.ids:
            return 0
        users = list(touched.users)
        stored = await self.events.histories(users)
        todo = [(u, ev, seq) for u, (ev, seq) in zip(users, stored) if ev is not None and len(ev)]
        if todo:
            model = self.model
            histories = [ev for _, ev, _ in todo]
            contexts = [{c: int(v[-1]) for c, v in ev.contexts.items()} for ev in histories]
            head_in, query = await asyncio.to_thread(encode_next, model.model, histories, contexts)
            states = [(u, seq, query[i].numpy(), head_in[i].numpy()) for i, (u, _, seq) in enumerate(todo)]
            written = await self.events.write_states(states, model.version)
            self.counts["states_written"] += written
        await self.events.ack(REFRESH_GROUP, touched.ids)
        now = time.time()
        self.lags.extend((now, now - touched.users[u][1]) for u, _, _ in todo)
        self.counts["batches"] += 1
        self.counts["users_encoded"] += len(todo)
        self.counts["entries"] += len(touched.ids)
        return len(todo)

    def status(self, since: float = 0.0) -> dict:
        """Counts, and the refresh lag of the states written from `since` (seconds since the epoch) on."""
        lags = np.asarray([lag for at, lag in self.lags if at >= since], dtype=np.float64)
        pct = lambda q: round(float(np.percentile(lags, q)), 4) if len(lags) else None  # noqa: E731
        return self.base_status() | {
            "counts": dict(self.counts),
            "refresh_lag_s": {"p50": pct(50), "p99": pct(99), "max": pct(100), "samples": len(lags)},
            "last_error": self.last_error,
            "learner": None
            if self.posteriors is None
            else {"error": self.learn_error, "posterior": self.posteriors.key(self.model.version)},
            "consumer": self.consumer,
            "options": self.options.model_dump(),
        }
