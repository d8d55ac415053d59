"""Exploration in the Ranker: a neural-linear bandit (Bayesian linear payoffs on the network's last
hidden layer, Thompson-sampled), learned online from the feedback POST /v1/events ingests.

Per action a, the payoff of showing item i to a user is modelled as linear in

    x_a = [φ / ‖φ‖; 1; P_net(a)]

φ the feedback head's last hidden layer for (user state, item) — the head cut before its output
layer — and P_net(a) the network's own probability. The prior is centred on the network (weight 1
on P_net(a), 0 elsewhere), so with no feedback the posterior mean ranks exactly as the network
does; every observed event moves it. The model is the normal-normal conjugate one, noise known:

    θ ~ N(m0, s² I),  r = θ·x + ε,  ε ~ N(0, σ²)
    precision A = I/s² + Σ x xᵀ/σ²,  b = m0/s² + Σ r x/σ²,  mean A⁻¹b,  covariance A⁻¹

A and b (the natural parameters: an update is a sum, so replicas' updates commute) live in Redis
under the model version and the prior, with per user the sequence number of the last event folded
in, so an event counts once however often its batch is retried (`PosteriorStore`). The
StateRefresher's `FeedbackLearner` folds ingested events in off the request path; every Ranker
replica reads the shared posterior when its version moves.

At ranking time a request draws θ̃_a ~ N(mean, A⁻¹) per action from a generator seeded by
(exploration_seed, the user, the posterior's version): the same request against the same
posterior gets the same list, on any replica. `exploration_share` of the k slots (the last ones)
go to the best candidates by the sampled payoffs Σ_a w_a·θ̃_a·x_a among those the posterior mean
did not already place; the response marks them `explored`.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import redis
import redis.asyncio as aioredis
import torch

from argus_models.config import ActionHead
from argus_models.inference import Events, action_features, encode_next
from argus_serve.scoring import diversify

log = logging.getLogger("ray.serve")


# -- the model -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BanditPrior:
    """What defines a posterior besides the model: a change starts a new one."""

    prior_std: float = 0.1  # s: prior std of each weight (‖φ̂‖ = 1, so also of the φ part of a payoff)
    noise_std: float = 0.5  # σ: std of an observed reward around its linear payoff (≤ 0.5 for a 0/1 reward)

    def __post_init__(self) -> None:
        if not self.prior_std > 0 or not self.noise_std > 0:
            raise ValueError(f"prior_std={self.prior_std}, noise_std={self.noise_std}: both must be > 0")

    @property
    def tag(self) -> str:
        return f"s{self.prior_std:g}-n{self.noise_std:g}"


def payoff_features(hidden: torch.Tensor, prob: torch.Tensor) -> np.ndarray:
    """x [..., F+2] = [φ/‖φ‖; 1; P_net(a)] from the head's last hidden layer [..., F] and P(a) [...]."""
    phi = torch.nn.functional.normalize(hidden.double(), dim=-1)
    ones = torch.ones_like(prob, dtype=torch.float64)[..., None]
    return torch.cat([phi, ones, prob.double()[..., None]], dim=-1).numpy()


def reward_value(head: ActionHead, codes: np.ndarray) -> np.ndarray:
    """An event's stored feedback codes as the value P(a) predicts: 0/1 (binary), the bucket's middle
    (ratio), the level's place in [0, 1] (graded)."""
    c = np.asarray(codes, dtype=np.float64)
    if head.kind == "ratio":
        return (c + 0.5) / head.num_codes
    if head.kind == "graded":
        return c / max(head.num_codes - 1, 1)
    return c


@dataclass
class Posterior:
    """One action's normal-normal posterior in natural parameters (precision A, shift b)."""

    precision: np.ndarray  # [F, F]
    shift: np.ndarray  # [F]
    count: int = 0  # observations folded in

    @classmethod
    def prior(cls, dim: int, prior: BanditPrior) -> Posterior:
        m0 = np.zeros(dim)
        m0[-1] = 1.0  # the weight on P_net(a): the prior mean payoff is the network's
        inv = 1.0 / prior.prior_std**2
        return cls(np.eye(dim) * inv, m0 * inv, 0)

    def updated(self, x: np.ndarray, r: np.ndarray, noise_std: float) -> Posterior:
        """After observing rewards r [N] at features x [N, F]."""
        inv = 1.0 / noise_std**2
        return Posterior(self.precision + inv * x.T @ x, self.shift + inv * x.T @ r, self.count + len(r))

    def solved(self) -> Solved:
        chol = np.linalg.cholesky(self.precision)  # A = L Lᵀ
        mean = np.linalg.solve(chol.T, np.linalg.solve(chol, self.shift))
        return Solved(mean, chol, self.count)

    def to_redis(self, action: str) -> dict[str, bytes | int]:
        return {
            f"A:{action}": self.precision.astype("<f8").tobytes(),
            f"b:{action}": self.shift.astype("<f8").tobytes(),
            f"n:{action}": self.count,
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes], action: str) -> Posterior | None:
        if f"A:{action}".encode() not in raw:
            return None
        b = np.frombuffer(raw[f"b:{action}".encode()], dtype="<f8").copy()
        A = np.frombuffer(raw[f"A:{action}".encode()], dtype="<f8").copy().reshape(len(b), len(b))
        return cls(A, b, int(raw[f"n:{action}".encode()]))


@dataclass
class Solved:
    """A posterior ready to score: its mean and the Cholesky factor L of its precision."""

    mean: np.ndarray
    chol: np.ndarray
    count: int

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """θ̃ ~ N(mean, A⁻¹): mean + L⁻ᵀz, since (L⁻ᵀ)(L⁻ᵀ)ᵀ = (L Lᵀ)⁻¹."""
        return self.mean + np.linalg.solve(self.chol.T, rng.standard_normal(len(self.mean)))


def request_rng(seed: int, user_key: str, version: int) -> np.random.Generator:
    """The sampling generator of one request: a function of the seed, the user and the posterior."""
    return np.random.default_rng([seed, zlib.crc32(user_key.encode()), version])


def explore_order(
    exploit: np.ndarray, sampled: np.ndarray, groups: np.ndarray, decay: float, k: int, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k shown candidates and which of them are explored: the first
    k − round(share·k) by the posterior-mean scores `exploit`, then the best of the others by the
    Thompson-sampled scores `sampled` (each part through the diversity rule)."""
    k = min(k, len(exploit))
    n_explore = min(k, int(round(share * k)))
    first = diversify(exploit, groups, decay, k - n_explore)
    if n_explore == 0:
        return first, np.zeros(len(first), dtype=bool)
    rest = np.setdiff1d(np.arange(len(exploit)), first, assume_unique=True)
    second = rest[diversify(sampled[rest], groups[rest], decay, n_explore)]
    order = np.concatenate([first, second])
    return order, np.arange(len(order)) >= len(first)


# -- the shared posterior in Redis -----------------------------------------------------------------
class PosteriorStore:
    """The posteriors of one model version and prior, under `<namespace>:nlb:<model version>:<prior>`:
    a hash with `A:<action>`, `b:<action>`, `n:<action>` and `version` (bumped by every update),
    and `…:cursor`, per user the sequence number of the last event folded in."""

    def __init__(self, url: str, namespace: str, actions: list[ActionHead], prior: BanditPrior) -> None:
        self.url, self.ns, self.actions, self.prior = url, namespace, actions, prior
        self._client: aioredis.Redis | None = None
        self._loop = None

    def key(self, model_version: str) -> str:
        return f"{self.ns}:nlb:{model_version}:{self.prior.tag}"

    def client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aioredis.Redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=1.0)
            self._loop = loop
        return self._client

    async def version(self, model_version: str) -> int:
        v = await self.client().hget(self.key(model_version), "version")
        return int(v) if v is not None else 0

    async def load(self, model_version: str, dim: int) -> tuple[int, dict[str, Posterior]]:
        """(version, per-action posterior); the prior for actions nothing was learned for yet."""
        raw = await self.client().hgetall(self.key(model_version))
        return int(raw.get(b"version", 0)), self._parse(raw, dim)

    def _parse(self, raw: dict, dim: int) -> dict[str, Posterior]:
        out = {}
        for a in self.actions:
            post = Posterior.from_redis(raw, a.name)
            if post is not None and len(post.shift) != dim:
                raise ValueError(f"{self.ns}: stored posterior of {a.name} has {len(post.shift)} features, not {dim}")
            out[a.name] = post if post is not None else Posterior.prior(dim, self.prior)
        return out

    async def cursors(self, model_version: str, users: list[str]) -> dict[str, int]:
        values = await self.client().hmget(self.key(model_version) + ":cursor", users) if users else []
        return {u: int(v) for u, v in zip(users, values) if v is not None}

    async def update(self, model_version: str, observations: list[Observation], attempts: int = 20) -> int:
        """Fold in the observations whose event is after its user's cursor, atomically with the
        cursors (WATCH/MULTI: a concurrent update makes this one retry). Returns how many counted."""
        if not observations:
            return 0
        key, cursor_key = self.key(model_version), self.key(model_version) + ":cursor"
        users = sorted({o.user for o in observations})
        dim = observations[0].features[next(iter(observations[0].features))].shape[-1]
        for _ in range(attempts):
            async with self.client().pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, cursor_key)
                    raw = await pipe.hgetall(key)
                    values = await pipe.hmget(cursor_key, users)
                    done = {u: int(v) for u, v in zip(users, values) if v is not None}
                    new = [o for o in observations if o.seq > done.get(o.user, 0)]
                    if not new:
                        await pipe.reset()
                        return 0
                    posts = self._parse(raw, dim)
                    fields: dict = {"version": int(raw.get(b"version", 0)) + 1}
                    for a in self.actions:
                        x = np.stack([o.features[a.name] for o in new])
                        r = np.array([o.rewards[a.name] for o in new])
                        fields |= posts[a.name].updated(x, r, self.prior.noise_std).to_redis(a.name)
                    latest = {}
                    for o in new:
                        latest[o.user] = max(o.seq, latest.get(o.user, 0))
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    pipe.hset(cursor_key, mapping=latest)
                    await pipe.execute()
                    return len(new)
                except redis.WatchError:
                    continue
        raise RuntimeError(f"{key}: {attempts} concurrent updates in a row; gave up this batch (it is retried)")


@dataclass
class Observation:
    """One ingested event as the bandit sees it: its user, sequence number, per action the payoff
    features of (the user's state before it, its item) and the observed reward."""

    user: str
    seq: int
    features: dict[str, np.ndarray]
    rewards: dict[str, float]


def observations(model, histories: list[tuple[str, Events, int, int]]) -> tuple[list[Observation], int]:
    """The events after each user's cursor as observations: (user, history, seq of its last event,
    cursor). An event is scored from the history before it, as the Ranker scored it (one encoder
    pass per event); events with no history before them, already trimmed off the capped list, or
    of an item outside the vocabulary (embedded from hash rows: never a Ranker candidate) are
    skipped (their count is returned second)."""
    heads = model.schema.actions
    rows, skipped = [], 0
    for user, ev, seq, cursor in histories:
        for s in range(cursor + 1, seq + 1):
            i = len(ev) - (seq - s) - 1  # list position of the user's s-th ingested event
            if i < 1 or ev.items[i] == 0:
                skipped += 1
                continue
            rows.append((user, s, ev.head(i), {c: int(v[i]) for c, v in ev.contexts.items()}, ev, i))
    if not rows:
        return [], skipped
    prefixes, contexts = [r[2] for r in rows], [r[3] for r in rows]
    head_in, _ = encode_next(model, prefixes, contexts)
    items = torch.tensor([[int(r[4].items[r[5]])] for r in rows], dtype=torch.int64)
    probs, hidden = action_features(model, head_in, items, prefixes, contexts)
    out = []
    for j, (user, s, _, _, ev, i) in enumerate(rows):
        feats = {a.name: payoff_features(hidden[j, 0], probs[a.name][j, 0]) for a in heads}
        rewards = {a.name: float(reward_value(a, ev.feedback[a.name][i : i + 1])[0]) for a in heads}
        out.append(Observation(user, s, feats, rewards))
    return out, skipped
