"""The HTTP side of the service: the FastAPI app and its body checks, the limits, and the
translation of a request (raw ids, the stored history, context values) into model indices and of
a ranked result back into raw ids. The Retriever deployment (deployments.py) serves this app.

POST /v1/recommend   → RecommendResponse     (4xx with a reason for bad input; the service stays up)
POST /v1/events      → EventsResponse        (with an event store: events appended to users' histories)
GET  /healthz        → model versions, weights, reload errors of the deployments
GET  /docs, /openapi.json (FastAPI)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from argus_models.config import ModelSchema
from argus_models.contract import action_target, action_valid, target_code
from argus_models.hashing import hash_buckets
from argus_models.inference import Events
from argus_serve.api import EventsRequest, IngestEvent, QuarantinedEvent, RecommendedItem, RecommendRequest
from argus_serve.artifacts import load_vocabulary, read_actions, run_dir_of
from argus_serve.events import Layout
from argus_serve.scoring import Ranked
from argus_serve.store import SortedIds, UserStore


@dataclass
class Limits:
    retrieve_k: int = 200  # candidates the Retriever hands to the Ranker
    max_k: int = 100
    max_history_events: int = 2000
    max_exclude: int = 10_000
    max_body_bytes: int = 1_000_000


api = FastAPI(
    title="Argus recommender",
    version="1",
    description="Retrieval (ARGUS encoder + top-K) and multi-action ranking (score = Σ_a w_a·P(a)) "
    "of one training run.",
)
api.state.max_body_bytes = Limits.max_body_bytes
api.state.token = None  # bytes: the bearer token every request but OPEN_PATHS must carry (None = no check)
OPEN_PATHS = frozenset({"/healthz"})  # probes and load balancers call it without credentials


def read_token(token_file: str = "", token_env: str = "") -> bytes | None:
    """The API's bearer token from a file (a mounted Secret) or an environment variable; None when
    neither is named. Named but missing or empty is an error: the service must not start open."""
    if token_file and token_env:
        raise ValueError("auth_token_file and auth_token_env both given: name one source of the API token")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"auth_token_file {token_file}: {exc.strerror or exc}") from None
        source = f"auth_token_file {token_file}"
    elif token_env:
        token, source = os.environ.get(token_env, "").strip(), f"auth_token_env {token_env}"
    else:
        return None
    if not token:
        raise ValueError(f"{source} holds no token (empty or unset): the API would be open")
    return token.encode()


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse(status_code=401, content={"detail": detail}, headers={"WWW-Authenticate": "Bearer"})


class JsonBodies:
    """The checks before the handlers: the bearer token when one is configured (401 without it;
    constant-time comparison; `/healthz` open), oversized bodies refused (413), and every POST
    body read as JSON: `curl -d '{...}'` sends form content-type, and the API speaks nothing but
    JSON. Plain ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware`) runs each request through
    an extra task and memory streams, a tenth of the Ingress's CPU per request on a 2-core host."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            # the app this request runs through, not the module's `api`: Serve ships the deployment
            # class by value, so a replica's app is a copy whose state its Retriever set
            state = scope["app"].state
            token = state.token
            if token is not None and scope["path"] not in OPEN_PATHS:
                given = next((v for k, v in headers if k == b"authorization"), b"")
                scheme, _, value = given.partition(b" ")
                if scheme.lower() != b"bearer" or not value:
                    await _unauthorized("send the API token as `Authorization: Bearer <token>`")(scope, receive, send)
                    return
                if not hmac.compare_digest(value.strip(), token):
                    await _unauthorized("the bearer token is not this service's")(scope, receive, send)
                    return
            declared = next((v for k, v in headers if k == b"content-length"), b"")
            if declared.isdigit() and int(declared) > state.max_body_bytes:
                reply = JSONResponse(
                    status_code=413,
                    content={"detail": f"request body of {int(declared)} bytes exceeds {state.max_body_bytes}"},
                )
                await reply(scope, receive, send)
                return
            if scope["method"] == "POST" and not any(k == b"content-type" and b"json" in v for k, v in headers):
                scope = dict(
                    scope,
                    headers=[(k, v) for k, v in headers if k != b"content-type"]
                    + [(b"content-type", b"application/json")],
                )
        await self.app(scope, receive, send)


api.add_middleware(JsonBodies)


class BadRequest(ValueError):
    pass


def store_layout(vocab, actions, hash_buckets) -> Layout:
    """How the event store packs a vocabulary's events: its contexts, actions and hash tables, in order."""
    return Layout(tuple(vocab.contexts), tuple(a.name for a in actions), len(hash_buckets))


def event_id(ev: IngestEvent) -> str:
    """The id of an event sent without one: a digest of its fields, so the same event sent twice
    (a retried POST) has the same id."""
    body = json.dumps(ev.model_dump(exclude={"event_id"}), sort_keys=True, separators=(",", ":"))
    return "sha1:" + hashlib.sha1(body.encode()).hexdigest()[:20]


@dataclass
class Ingest:
    per_user: dict[str, list[tuple[str, bytes]]]  # user -> (event id, packed event), in the order sent
    quarantined: list[QuarantinedEvent]
    warnings: dict[str, list[str]]


@dataclass
class Prepared:
    """A request in model indices: the history the model reads and what retrieval must leave out."""

    events: Events
    source: str  # store, request or store+request
    next_context: dict[str, int]
    exclude: np.ndarray  # item indices never to return: the history's and the request's `exclude`
    warnings: dict[str, list[str]]


class RequestReader:
    """Raw ids ↔ model indices for one run's vocabulary, with the user store and the limits."""

    def __init__(self, checkpoint: Path, limits: Limits) -> None:
        self.limits = limits
        self.vocab = load_vocabulary(checkpoint)
        self.actions = read_actions(checkpoint)
        self.item_ids = SortedIds(self.vocab.items)  # raw item id -> position; the item index is position + 1
        # multi-hash models embed history items outside the vocabulary from their hash rows
        schema = ModelSchema.load(checkpoint / "schema.json")
        self.hash_buckets = list(schema.item_hash_buckets)
        self.timed = bool(schema.time_buckets)  # HSTU's time-gap bias reads each event's time
        self.context_index = {
            c: {v: i + 1 for i, v in enumerate(vals.tolist())} for c, vals in self.vocab.contexts.items()
        }
        self.store = UserStore.load(run_dir_of(checkpoint), self.vocab, self.actions)

    def item(self, raw: str) -> int | None:
        pos = self.item_ids.get(raw)
        return None if pos is None else pos + 1

    def _context(self, raw: dict[str, str], where: str, warnings: dict[str, list[str]]) -> dict[str, int]:
        unknown_cols = sorted(set(raw) - set(self.context_index))
        if unknown_cols:
            raise BadRequest(
                f"{where}: unknown context column(s) {unknown_cols}; the model knows {sorted(self.context_index)}"
            )
        out = {}
        for c, v in raw.items():
            idx = self.context_index[c].get(v)
            if idx is None:
                warnings.setdefault("unknown_context_values", []).append(f"{c}={v}")
            out[c] = idx or 0
        return out

    def _encode(
        self, evs: list, where: str, warnings: dict[str, list[str]], arrived: float | None = None
    ) -> tuple[Events, list[int], list[int]]:
        """Events (HistoryEvent or IngestEvent: item_id, actions, context, timestamp) in model
        indices: the encoded events, the positions in `evs` they came from, and the positions of
        items outside the vocabulary that no hash table can embed (left out). An event without a
        timestamp is at `arrived`; without that either, a model that reads event times refuses it.
        Bad actions, context columns or missing times raise BadRequest with the field named."""
        names = {a.name: a for a in self.actions}
        keep, ctx, fb, cold, unknown, kept = [], {c: [] for c in self.context_index}, {a: [] for a in names}, {}, [], []
        times = []
        for i, ev in enumerate(evs):
            at = ev.timestamp if ev.timestamp is not None else arrived
            if at is None and self.timed:
                raise BadRequest(
                    f"{where}[{i}]: no timestamp; this model's HSTU encoder has a time-gap bias and reads each "
                    "event's time (seconds since 1970)"
                )
            bad = sorted(set(ev.actions) - set(names))
            if bad:
                raise BadRequest(f"{where}[{i}]: unknown action(s) {bad}; the model's actions are {sorted(names)}")
            for a, value in ev.actions.items():
                info = names[a]
                if not action_valid(info.kind, info.levels, np.array([value]))[0]:
                    expected = {"binary": "0 or 1", "ratio": "a number in [0, 1]"}.get(
                        info.kind, f"one of {info.levels}"
                    )
                    raise BadRequest(f"{where}[{i}].actions.{a}: {value!r} is not {expected}")
            item = self.item(ev.item_id)
            if item is None and not self.hash_buckets:
                unknown.append(i)
                continue
            if item is None:  # embedded from its hash rows alone
                warnings.setdefault("hashed_history_items", []).append(ev.item_id)
                cold[len(keep)] = ev.item_id
                item = 0
            keep.append(item)
            kept.append(i)
            times.append(int(at or 0))
            for c, v in self._context(ev.context, f"{where}[{i}].context", warnings).items():
                ctx[c].append(v)
            for c in self.context_index:
                if c not in ev.context:
                    ctx[c].append(0)
            for a, info in names.items():
                target = action_target(info.kind, info.levels, np.array([ev.actions.get(a, 0.0)]))
                fb[a].append(int(target_code(info.kind, info.num_codes, target)[0]))
        as_arr = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        hashes = None
        if cold:
            hashes = np.zeros((len(keep), len(self.hash_buckets)), dtype=np.int64)
            hashes[list(cold)] = hash_buckets(list(cold.values()), self.hash_buckets)
        events = Events(
            as_arr(keep),
            {c: as_arr(v) for c, v in ctx.items()},
            {a: as_arr(v) for a, v in fb.items()},
            hashes,
            as_arr(times),
        )
        return events, kept, unknown

    def _request_events(self, req: RecommendRequest, warnings: dict[str, list[str]]) -> Events:
        events, _, unknown = self._encode(req.history, "history", warnings)
        if unknown:
            warnings["unknown_history_items"] = [req.history[i].item_id for i in unknown]
        return events

    def layout(self) -> Layout:
        """How the event store packs this vocabulary's events."""
        return store_layout(self.vocab, self.actions, self.hash_buckets)

    def ingest(self, req: EventsRequest, layout: Layout) -> Ingest:
        """The events of a POST /v1/events in the store's form, per user and in order; events of
        items outside the vocabulary (and without hash tables) go to quarantine with the reason."""
        if len(req.events) > self.limits.max_history_events:
            raise BadRequest(
                f"{len(req.events)} events in one request; at most {self.limits.max_history_events} are accepted"
            )
        warnings: dict[str, list[str]] = {}
        events, kept, unknown = self._encode(req.events, "events", warnings, arrived=time.time())
        ids = [ev.event_id or event_id(ev) for ev in req.events]
        per_user: dict[str, list[tuple[str, bytes]]] = {}
        for row, i in zip(layout.pack(events), kept):
            per_user.setdefault(req.events[i].user_id, []).append((ids[i], row))
        quarantined = [
            QuarantinedEvent(
                index=i,
                event_id=ids[i],
                user_id=req.events[i].user_id,
                item_id=req.events[i].item_id,
                reason=f"item_id {req.events[i].item_id!r} is not in the model's vocabulary",
            )
            for i in unknown
        ]
        return Ingest(per_user, quarantined, warnings)

    def prepare(self, req: RecommendRequest, stored: Events | None = None, from_store: bool = True) -> Prepared:
        """The request in model indices. The stored history is the run's (`from_store`) or, with
        the event store, `stored`: what the caller read from it."""
        lim = self.limits
        if req.k > lim.max_k:
            raise BadRequest(f"k={req.k} is out of range: 1..{lim.max_k}")
        if len(req.history) > lim.max_history_events:
            raise BadRequest(f"history has {len(req.history)} events; at most {lim.max_history_events} are accepted")
        if len(req.exclude) > lim.max_exclude:
            raise BadRequest(f"exclude has {len(req.exclude)} ids; at most {lim.max_exclude} are accepted")
        warnings: dict[str, list[str]] = {}
        if from_store:
            stored = self.store.get(req.user_id) if req.user_id is not None else None
        if stored is None and not req.history:
            who = f"unknown user_id {req.user_id!r}" if req.user_id is not None else "no user_id"
            raise LookupError(
                f"{who} and no history: send `history` (raw item ids, oldest first) for users outside the training run"
            )
        supplied = self._request_events(req, warnings)
        if stored is not None and len(supplied):
            events, source = stored.concat(supplied), "store+request"
        elif stored is not None:
            events, source = stored, "store"
        else:
            events, source = supplied, "request"
        if not len(events):
            raise BadRequest(
                f"none of the {len(req.history)} history items is known to the model: "
                f"{warnings.get('unknown_history_items')}"
            )
        next_ctx = {c: int(v[-1]) for c, v in events.contexts.items()}  # default: the last event's context
        next_ctx |= self._context(req.context, "context", warnings)
        excluded = [self.item(x) for x in req.exclude]
        if any(x is None for x in excluded):
            warnings["unknown_exclude_items"] = [x for x, i in zip(req.exclude, excluded) if i is None]
        exclude = np.unique(
            np.concatenate([events.items[events.items > 0], np.asarray([i for i in excluded if i], dtype=np.int64)])
        )
        return Prepared(events, source, next_ctx, exclude, warnings)

    def items(self, r: Ranked, debug: bool) -> list[RecommendedItem]:
        """A ranked result in raw item ids."""
        return [
            RecommendedItem(
                item_id=str(self.vocab.items[r.items[i] - 1]),
                score=float(r.scores[i]),
                retrieval_score=float(r.retrieval_scores[i]),
                probabilities={a: float(p[i]) for a, p in r.probabilities.items()},
                group=int(r.groups[i]) if debug else None,
                explored=None if r.explored is None else bool(r.explored[i]),
            )
            for i in range(len(r.items))
        ]
