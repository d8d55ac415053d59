"""Greedy ranking vs neural-linear exploration, against simulated users who behave as the synthetic
log's generator says (its saved ground truth), through the live service.

A session: a user (drawn with a seeded generator, the same sequence for every policy) asks
`/v1/recommend` for k items on the `recommended` surface; they pick one of the k with the
generator's choice model, P(i | slate) = softmax(T·(a_i + 0.5·b_i)) (a_i = <u, v_i> the true
affinity, b_i the clickbait level, T the surface's temperature), react to it as the generator
does (played_ratio, skip, like, dislike drawn from their true laws) and the event goes to
`/v1/events`, so the next recommendation excludes it and the feedback learner folds it in.

What a slate is worth is exact, from the oracle: its true engagement is E[Σ_a w_a·a] over the
user's choice and their reactions (w the Ranker's weights). Its regret is the engagement of the
oracle's slate — the user's k unseen items of highest true value, shown to the same choice
model — minus its own. Each policy starts from the training run's histories (a namespace of its
own in Redis) and a fresh posterior; the sessions' users and random draws are the same for every
policy (common random numbers), so their differences are paired session by session.

Policies: `greedy` (exploration none: the network's scores, nothing learned online) and, for each
exploration share s, `nlb@s` (exploration neural_linear; `nlb@0` learns online but never explores).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import requests

from argus_models.contract import ITEM_COL, USER_IDX, Vocabulary
from argus_platform.data.synthetic import (
    SOURCE_TEMPERATURE,
    SOURCES,
    choice_logits,
    expected_actions,
    load_ground_truth,
)
from argus_serve.artifacts import ArtifactError, resolve_checkpoint, run_dir_of
from argus_serve.launch import deploy, serve_config
from argus_serve.redis_local import local_store


@dataclass
class BanditSimConfig:
    sessions: int = 3000  # simulated sessions per policy
    users: int = 300  # drawn from this many of the run's users (a seeded sample)
    k: int = 10  # items per slate
    source: str = "recommended"  # the surface: the requests' and events' context
    shares: tuple[float, ...] = (0.0, 0.2)  # exploration_share of each neural-linear policy (besides greedy)
    prior_std: float = 0.1  # the neural-linear prior (app args bandit_prior_std / bandit_noise_std)
    noise_std: float = 0.5
    seed: int = 0  # the sessions' users and draws, and the exploration seed
    think_s: float = 0.0  # pause after each session's event (the learner runs beside the sessions)
    port: int = 8000
    events_store: str = "local"  # `local` = a redis-server started for the simulation, or a Redis URL
    torch_threads: int = 1
    deploy_timeout_s: float = 600.0

    def validate(self) -> None:
        if self.sessions < 1 or self.users < 1 or not 1 <= self.k <= 100:
            raise ValueError(f"sessions={self.sessions}, users={self.users}, k={self.k}: need ≥ 1, ≥ 1 and 1..100")
        if any(not 0 <= s <= 1 for s in self.shares):
            raise ValueError(f"shares={self.shares}: each exploration share is in [0, 1]")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: the synthetic surfaces are {SOURCES.tolist()}")


@dataclass
class World:
    """The generator's truth in the run's index space: what the simulated users know."""

    user_factors: np.ndarray  # [U, k] by vocabulary user position (after their last logged event)
    item_factors: np.ndarray  # [C+1, k] by item index (row 0 padding)
    bait: np.ndarray  # [C+1]
    temperature: float  # of the choice on the simulated surface
    raw_users: np.ndarray  # vocabulary user ids (str)
    raw_items: np.ndarray  # vocabulary item ids (str), index i ↔ raw_items[i - 1]
    seen: list[set[int]]  # items in each user's stored history

    def item_index(self) -> dict[str, int]:
        return {raw: i + 1 for i, raw in enumerate(self.raw_items.tolist())}


def load_world(run_dir: Path, source: str) -> World:
    directory = run_dir / "data" / "synthetic"
    truth = load_ground_truth(directory)
    if truth is None:
        raise ArtifactError(
            f"{run_dir} has no synthetic ground truth ({directory}/ground_truth.npz): the simulation needs "
            "a run of the synthetic source (data.source: synthetic), whose users it can play"
        )
    config = json.loads((directory / "ground_truth.json").read_text())["config"]
    vocab = Vocabulary.load(run_dir / "vocab")
    users = np.searchsorted(truth["user_raw_ids"], vocab.users.astype(np.int64))
    items = np.searchsorted(truth["item_raw_ids"], vocab.items.astype(np.int64))
    item_factors = np.zeros((vocab.num_items + 1, truth["item_factors"].shape[1]))
    item_factors[1:] = truth["item_factors"][items]
    bait = np.zeros(vocab.num_items + 1)
    bait[1:] = truth["item_bait"][items]
    seen: list[set[int]] = [set() for _ in range(len(vocab.users))]
    rows = pq.read_table(run_dir / "data" / "test", columns=[USER_IDX, ITEM_COL]).to_pylist()
    for r in rows:  # leave-last-out: the test rows hold each user's whole sequence
        seen[r[USER_IDX]].update(r[ITEM_COL])
    temperature = config["affinity_temperature"] * SOURCE_TEMPERATURE[SOURCES.tolist().index(source)]
    return World(
        truth["user_final_factors"][users], item_factors, bait, float(temperature), vocab.users, vocab.items, seen
    )


def slate_engagement(world: World, user: int, slate: np.ndarray, weights: dict[str, float]) -> dict[str, float]:
    """Exact expectations over the user's choice among `slate` (item indices) and their reactions."""
    aff = world.item_factors[slate] @ world.user_factors[user]
    logits = choice_logits(aff, world.bait[slate], world.temperature)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    expected = expected_actions(aff, world.bait[slate])
    out = {a: float(p @ v) for a, v in expected.items()}
    out["value"] = float(p @ sum(w * expected[a] for a, w in weights.items() if a in expected))
    out["clickbait_chosen"] = float(p @ (world.bait[slate] > 0))
    return out


def item_values(world: World, user: int, weights: dict[str, float]) -> np.ndarray:
    aff = world.item_factors[1:] @ world.user_factors[user]
    expected = expected_actions(aff, world.bait[1:])
    return np.concatenate([[-np.inf], sum(w * expected[a] for a, w in weights.items() if a in expected)])


def react(world: World, user: int, slate: np.ndarray, rng: np.random.Generator) -> tuple[int, dict[str, float]]:
    """The user's pick among `slate` and their actions, drawn from the generator's laws."""
    aff = world.item_factors[slate] @ world.user_factors[user]
    bait = world.bait[slate]
    logits = choice_logits(aff, bait, world.temperature)
    j = int(np.argmax(logits + rng.gumbel(size=len(slate))))
    a, b = float(aff[j]), float(bait[j])
    ratio = 1.0 / (1.0 + np.exp(-(2.0 * a - 3.0 * b + rng.normal(scale=0.5))))
    like = rng.random() < 1.0 / (1.0 + np.exp(-(3.0 * a - 2.0)))
    dislike = rng.random() < 1.0 / (1.0 + np.exp(-(-3.0 * a - 3.0 + 5.0 * b)))
    actions = {"played_ratio": round(ratio, 6), "skip": float(ratio < 0.3), "like": float(like)}
    return j, actions | {"dislike": float(dislike)}


def run_policy(base: str, world: World, name: str, cfg: BanditSimConfig, weights: dict[str, float]) -> dict:
    """The sessions of one policy against the deployed service; per-session records."""
    session = requests.Session()
    index = world.item_index()
    users = np.random.default_rng([cfg.seed, 0]).choice(len(world.raw_users), size=cfg.users, replace=False)
    pick = np.random.default_rng([cfg.seed, 1]).integers(0, cfg.users, size=cfg.sessions)
    seen = {int(u): set(world.seen[u]) for u in users}
    oracle_cache: dict[int, np.ndarray] = {int(u): item_values(world, int(u), weights) for u in users}
    keys = ("value", "oracle", "like", "dislike", "clickbait_chosen", "explored", "ms", "user", "slate", "chosen")
    records = {k: [] for k in keys}
    t0, last_print = time.time(), time.time()
    for t in range(cfg.sessions):
        user = int(users[pick[t]])
        raw_user = str(world.raw_users[user])
        started = time.perf_counter()
        r = session.post(
            f"{base}/v1/recommend",
            json={"user_id": raw_user, "k": cfg.k, "context": {"source": cfg.source}},
            timeout=60,
        )
        r.raise_for_status()
        body = r.json()
        records["ms"].append((time.perf_counter() - started) * 1000)
        slate = np.array([index[i["item_id"]] for i in body["items"]])
        if len(slate) < cfg.k:
            raise RuntimeError(f"session {t}: {len(slate)} items for user {raw_user}, asked {cfg.k}: {body}")
        records["explored"].append(sum(bool(i.get("explored")) for i in body["items"]))
        got = slate_engagement(world, user, slate, weights)
        values = oracle_cache[user].copy()
        values[list(seen[user])] = -np.inf
        best = np.argsort(-values)[: cfg.k]
        records["oracle"].append(slate_engagement(world, user, best, weights)["value"])
        for key in ("value", "like", "dislike", "clickbait_chosen"):
            records[key].append(got[key])
        j, actions = react(world, user, slate, np.random.default_rng([cfg.seed, 2, t]))
        seen[user].add(int(slate[j]))
        records["user"].append(user)
        records["slate"].append(slate.tolist())
        records["chosen"].append(int(slate[j]))
        event = {
            "user_id": raw_user,
            "item_id": str(world.raw_items[slate[j] - 1]),
            "timestamp": 1_900_000_000 + t,
            "event_id": f"{name}-{t}",
            "actions": actions,
            "context": {"source": cfg.source},
        }
        session.post(f"{base}/v1/events", json=event, timeout=60).raise_for_status()
        if cfg.think_s:
            time.sleep(cfg.think_s)
        if time.time() - last_print > 15 or t == cfg.sessions - 1:
            rate = (t + 1) / (time.time() - t0)
            regret = np.sum(np.array(records["oracle"]) - np.array(records["value"]))
            print(
                f"[bandit] {name:<8} {t + 1:>6,}/{cfg.sessions:,} sessions, cumulative regret {regret:.1f}, "
                f"{rate:.1f}/s, ETA {(cfg.sessions - t - 1) / rate:.0f}s",
                flush=True,
            )
            last_print = time.time()
    return records


def summarize(records: dict, reference: dict | None) -> dict:
    value, oracle = np.array(records["value"]), np.array(records["oracle"])
    regret = oracle - value
    half = len(value) // 2
    out = {
        "sessions": len(value),
        "cumulative_regret": float(regret.sum()),
        "engagement": float(value.mean()),
        "engagement_last_half": float(value[half:].mean()),
        "like": float(np.mean(records["like"])),
        "dislike": float(np.mean(records["dislike"])),
        "clickbait_chosen": float(np.mean(records["clickbait_chosen"])),
        "explored_per_slate": float(np.mean(records["explored"])),
        "recommend_ms_p50": float(np.percentile(records["ms"], 50)),
    }
    if reference is not None:  # paired, session by session (same users and draws)
        d = value - np.array(reference["value"])
        out["engagement_vs_greedy"] = float(d.mean())
        out["engagement_vs_greedy_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
        out["engagement_vs_greedy_last_half"] = float(d[half:].mean())
        out["engagement_vs_greedy_last_half_se"] = float(d[half:].std(ddof=1) / np.sqrt(len(d) - half))
    return out


def simulate(run_dir: str | Path, cfg: BanditSimConfig) -> dict:
    cfg.validate()
    checkpoint = resolve_checkpoint(str(run_dir))
    run = run_dir_of(checkpoint)
    world = load_world(run, cfg.source)
    redis_server, store = local_store(cfg.events_store, "bandit-redis-")
    base = f"http://127.0.0.1:{cfg.port}"
    policies = {"greedy": None} | {f"nlb@{s:g}": s for s in cfg.shares}
    runs, curves = {}, {}
    try:
        for j, (name, share) in enumerate(policies.items()):
            ranker = {"exploration": "none"}
            if share is not None:
                ranker = {"exploration": "neural_linear", "exploration_share": share, "exploration_seed": cfg.seed}
            config = serve_config(
                args={
                    "checkpoint": str(checkpoint),
                    "torch_threads": cfg.torch_threads,
                    "events_store": store,
                    "events_prefix": f"bandit{j}-{int(time.time())}",  # fresh histories and posterior
                    "feedback_learner": share is not None,
                    "bandit_prior_std": cfg.prior_std,
                    "bandit_noise_std": cfg.noise_std,
                },
                user_configs={"Retriever": {"state_mode": "off"}, "Ranker": ranker},
                port=cfg.port,
            )
            deploy(config, timeout_s=cfg.deploy_timeout_s)
            health = requests.get(f"{base}/healthz", timeout=60).json()
            weights = health["ranker"]["weights"]
            t0 = time.time()
            records = run_policy(base, world, name, cfg, weights)
            health = requests.get(f"{base}/healthz", timeout=60).json()
            runs[name] = summarize(records, curves.get("greedy")) | {
                "exploration_share": share,
                "seconds": round(time.time() - t0, 1),
                "weights": weights,
                "learner": (health.get("state_refresher") or {}).get("counts"),
                "posterior": health["ranker"].get("exploration"),
            }
            curves[name] = records
    finally:
        if redis_server is not None:
            redis_server.stop()
    return {
        "policies": runs,
        "curves": {n: {"value": r["value"], "oracle": r["oracle"]} for n, r in curves.items()},
        "setup": asdict(cfg) | {"checkpoint": str(checkpoint), "choice_temperature": world.temperature},
    }


def format_simulation(result: dict) -> str:
    lines = [
        f"{'policy':<10}{'regret':>9}{'engagement':>12}{'Δ vs greedy':>13}{'± se':>8}"
        f"{'Δ last half':>13}{'± se':>8}{'like':>7}{'dislike':>9}{'bait':>7}{'explored':>10}"
    ]
    for name, r in result["policies"].items():
        d = r.get("engagement_vs_greedy")
        cols = (
            f"{d:>+13.4f}{r['engagement_vs_greedy_se']:>8.4f}{r['engagement_vs_greedy_last_half']:>+13.4f}"
            f"{r['engagement_vs_greedy_last_half_se']:>8.4f}"
            if d is not None
            else f"{'':>13}{'':>8}{'':>13}{'':>8}"
        )
        lines.append(
            f"{name:<10}{r['cumulative_regret']:>9.1f}{r['engagement']:>12.4f}{cols}{r['like']:>7.3f}"
            f"{r['dislike']:>9.3f}{r['clickbait_chosen']:>7.3f}{r['explored_per_slate']:>10.2f}"
        )
    return "\n".join(lines)


def plot_simulation(result: dict, path: str | Path, window: int = 200) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, c in result["curves"].items():
        value, oracle = np.array(c["value"]), np.array(c["oracle"])
        x = np.arange(1, len(value) + 1)
        left.plot(x, np.cumsum(oracle - value), label=name)
        w = min(window, len(value))
        right.plot(x[w - 1 :], np.convolve(value, np.ones(w) / w, mode="valid"), label=name)
    left.set(xlabel="session", ylabel="cumulative regret (vs the oracle's slate)", title="regret")
    right.set(xlabel="session", ylabel=f"true engagement, mean of {window} sessions", title="engagement")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    setup = result["setup"]
    fig.suptitle(f"greedy vs neural-linear exploration: {setup['sessions']} sessions, k={setup['k']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
