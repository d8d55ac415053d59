"""What stale user states cost in quality: held-out events replayed through the deployed service.

A run trained with a temporal split (`data.split: temporal` or `temporal_windows`) never saw the
events from its test start on. For each of them in the first `window_h` hours (a day by default;
time order, at most `max_events`), the replay asks `/v1/recommend` for the event's user, scores
where the event's item lands in the answer (NDCG@10, HR@10, HR@k), then POSTs the event to
`/v1/events` — as the user's next request would come after their last play. Each user starts
from their events before the test start, ingested under a fresh id per replay (`r<j>:<user id>`),
so every replay begins from the same state and none reads another's events.

One replay per Retriever `state_mode`: `off` (the encoder over the stored history on every request:
always current, the reference) and the stored states (`latest`, `mean2`), which trail an ingest by
the refresher's lag. `think_s` is the least time between a user's ingest and that user's next
request: 0 is the worst case (the next request right behind the event), a few tens of ms lets
the refresher catch up. Each stored replay is compared to `off` event by event (paired).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import requests

from argus_serve.artifacts import ArtifactError, resolve_checkpoint, run_dir_of
from argus_serve.launch import deploy, refresher_status, serve_config, wait_for_states
from argus_serve.redis_local import local_store

MODES = ("off", "latest", "mean2")


@dataclass
class ReplayConfig:
    window_h: float = 24.0  # held-out events replayed: those in the first window_h hours from the test start
    max_events: int = 5000  # … and at most this many of them (the first, in time order)
    k: int = 100  # items asked per request (NDCG@10 and HR@10 from its top 10)
    modes: tuple[str, ...] = MODES  # Retriever state_mode per replay; `off` is the reference
    think_s: tuple[float, ...] = (0.0, 0.05)  # least gap from a user's ingest to their next request (stored modes)
    history_cap: int = 0  # events kept per user in the store (0 = the model's window)
    weights_file: str = ""  # the Ranker's weights ('' = <run>/tune/weights.yaml, else uniform)
    port: int = 8000
    events_store: str = "local"  # `local` = a redis-server started for the replay, or a Redis URL
    torch_threads: int = 1
    refresh_timeout_s: float = 300.0
    deploy_timeout_s: float = 600.0

    def validate(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"modes: unknown state_mode {unknown}; expected some of {list(MODES)}")
        if "off" not in self.modes:
            raise ValueError("modes must include 'off': the synchronous encoder is the reference")
        if not 10 <= self.k <= 200:
            raise ValueError(f"k={self.k}: NDCG@10 needs k ≥ 10, and the Retriever hands the Ranker 200")
        if self.window_h <= 0 or self.max_events < 1:
            raise ValueError(f"window_h={self.window_h}, max_events={self.max_events}: both must be > 0")
        if any(t < 0 for t in self.think_s):
            raise ValueError(f"think_s={self.think_s}: gaps must be ≥ 0")


@dataclass
class HeldOut:
    """The replay's input: per user the events before the test start (`prefix`) and the held-out
    events (`events`, time order, each with the index of its user). A user's first event is not
    scored when they have no prefix: there is no history to recommend from (`cold`), only to ingest."""

    users: list[str]
    prefix: list[list[dict]]
    events: list[tuple[int, dict]]
    test_start: float

    @property
    def cold(self) -> list[bool]:
        seen = {n for n, p in enumerate(self.prefix) if p}
        out = []
        for n, _ in self.events:
            out.append(n not in seen)
            seen.add(n)
        return out


def held_out_events(run_dir: Path, window_h: float, max_events: int, history_cap: int) -> HeldOut:
    """The events of a temporal run's test period (its first `window_h` hours, at most `max_events`)."""
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    cuts = summary.get("temporal_cuts")
    if not cuts:
        raise ArtifactError(
            f"{run_dir} was split {summary.get('split')!r}: the replay needs a temporal split "
            "(data.split=temporal or temporal_windows), whose events from the test start on were never trained on"
        )
    return events_from(run_dir, float(cuts[3]), window_h, max_events, history_cap)


def events_from(run_dir: Path, start: float, window_h: float, max_events: int, history_cap: int) -> HeldOut:
    """The run's prepared events (data/events.parquet) from time `start` on, split as `HeldOut`;
    each user's prefix capped at their last `history_cap` events (0 = all)."""
    spec = json.loads((run_dir / "spec.json").read_text())
    table = pq.read_table(run_dir / "data" / "events.parquet")
    u, i, t = spec["user_column"], spec["item_column"], spec["timestamp_column"]
    table = table.take(pc.sort_indices(table, [(t, "ascending")]))  # a stable sort: ties keep the log's order
    times = table.column(t).to_numpy().astype(np.float64)
    held = np.nonzero((times >= start) & (times < start + window_h * 3600))[0][:max_events]
    if len(held) == 0:
        raise ArtifactError(f"{run_dir}: no events in the {window_h:g} h from the test start {start:.0f}")
    actions = [a["name"] for a in spec["actions"]]
    rows = table.to_pydict()

    def event(r: int) -> dict:
        acts = {a: float(rows[a][r]) for a in actions if rows[a][r] is not None and not np.isnan(rows[a][r])}
        ctx = {c: str(rows[c][r]) for c in spec["context_columns"] if rows[c][r] is not None}
        return {"item_id": str(rows[i][r]), "timestamp": float(rows[t][r]), "actions": acts, "context": ctx}

    users = list(dict.fromkeys(str(rows[u][r]) for r in held))
    index = {x: n for n, x in enumerate(users)}
    before: dict[str, list[int]] = {x: [] for x in users}
    for r in range(int(held[0])):
        x = str(rows[u][r])
        if x in before:
            before[x].append(r)
    cap = history_cap or None
    prefix = [[event(r) for r in (before[x][-cap:] if cap else before[x])] for x in users]
    return HeldOut(users, prefix, [(index[str(rows[u][r])], event(r)) for r in held], start)


def post_events(session: requests.Session, url: str, events: list[dict], batch: int = 200) -> int:
    """POST `events` in batches (oldest first); the number appended."""
    appended = 0
    for j in range(0, len(events), batch):
        r = session.post(url, json={"events": events[j : j + batch]}, timeout=60)
        r.raise_for_status()
        appended += r.json()["appended"]
    return appended


def dcg_at(rank: int | None, k: int) -> float:
    """1/log2(rank + 2) for a 0-based rank below k, else 0 (one relevant item: NDCG = DCG)."""
    return 0.0 if rank is None or rank >= k else float(1.0 / np.log2(rank + 2))


def replay_once(base: str, held: HeldOut, tag: str, think_s: float, cfg: ReplayConfig) -> dict:
    """Seed the users' prefixes under `tag`, wait for their states, then recommend → ingest each
    held-out event; per event: the target's rank, the answer's state source and lag."""
    uid = [f"{tag}:{x}" for x in held.users]
    seed = [
        e | {"user_id": uid[n], "event_id": f"{tag}:p{n}:{j}"}
        for n, p in enumerate(held.prefix)
        for j, e in enumerate(p)
    ]
    with requests.Session() as s:
        done0 = refresher_status().get("counts", {}).get("users_encoded", 0)
        t0 = time.time()
        post_events(s, f"{base}/v1/events", seed)
        wait_for_states(sum(1 for p in held.prefix if p), done0, t0, cfg.refresh_timeout_s)
        ranks, sources, lags, ages, history, latency, quarantined = [], [], [], [], [], [], 0
        last_ingest: dict[int, float] = {}
        for j, ((n, e), cold) in enumerate(zip(held.events, held.cold)):
            if not cold:
                wait = think_s - (time.perf_counter() - last_ingest.get(n, -1e9))
                if wait > 0:
                    time.sleep(wait)
                t1 = time.perf_counter()
                r = s.post(f"{base}/v1/recommend", json={"user_id": uid[n], "k": cfg.k}, timeout=60)
                latency.append((time.perf_counter() - t1) * 1000)
                r.raise_for_status()
                body = r.json()
                items = [x["item_id"] for x in body["items"]]
                ranks.append(items.index(e["item_id"]) if e["item_id"] in items else None)
                sources.append(body["state_source"])
                lags.append(body.get("state_lag_events"))
                ages.append(body.get("state_age_s"))
                history.append(body["history_events"])
            ev = e | {"user_id": uid[n], "event_id": f"{tag}:h{j}"}
            out = s.post(f"{base}/v1/events", json=ev, timeout=60)
            out.raise_for_status()
            quarantined += len(out.json()["quarantined"])
            last_ingest[n] = time.perf_counter()
    return {
        "ranks": ranks,
        "sources": sources,
        "lags": lags,
        "ages": ages,
        "history_events": history,
        "latency_ms": latency,
        "quarantined": quarantined,
    }


def metrics(ranks: list[int | None], k: int) -> dict:
    ndcg = np.array([dcg_at(r, 10) for r in ranks])
    hit10 = np.array([r is not None and r < 10 for r in ranks], dtype=float)
    hitk = np.array([r is not None for r in ranks], dtype=float)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
    return {
        "events": len(ranks),
        "ndcg@10": float(ndcg.mean()),
        "ndcg@10_se": se(ndcg),
        "hr@10": float(hit10.mean()),
        "hr@10_se": se(hit10),
        f"hr@{k}": float(hitk.mean()),
    }


def paired(ranks: list[int | None], reference: list[int | None]) -> dict:
    """NDCG@10 of a replay minus the reference's, event by event: mean and its standard error."""
    d = np.array([dcg_at(a, 10) - dcg_at(b, 10) for a, b in zip(ranks, reference)])
    return {
        "ndcg@10_delta": float(d.mean()),
        "ndcg@10_delta_se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
        "same_rank_share": float(np.mean([a == b for a, b in zip(ranks, reference)])),
    }


def summarize_replay(raw: dict, k: int) -> dict:
    lags = [x for x in raw["lags"] if x is not None]
    ages = [x for x in raw["ages"] if x is not None]
    sources: dict[str, int] = {}
    for s in raw["sources"]:
        sources[s] = sources.get(s, 0) + 1
    return metrics(raw["ranks"], k) | {
        "state_source": sources,
        "lagging_share": float(np.mean([x > 0 for x in lags])) if lags else 0.0,
        "lag_events_mean": float(np.mean(lags)) if lags else 0.0,
        "state_age_p50_s": float(np.median(ages)) if ages else None,
        "recommend_p50_ms": float(np.median(raw["latency_ms"])),
        "quarantined_events": raw["quarantined"],
    }


def replay(run_dir: str | Path, cfg: ReplayConfig) -> dict:
    cfg.validate()
    checkpoint = resolve_checkpoint(str(run_dir))
    run = run_dir_of(checkpoint)
    held = held_out_events(run, cfg.window_h, cfg.max_events, cfg.history_cap)
    print(
        f"[replay] {len(held.events):,} held-out events of {len(held.users):,} users in the "
        f"{(held.events[-1][1]['timestamp'] - held.test_start) / 3600:.1f} h from the test start {held.test_start:.0f} "
        f"({sum(held.cold)} first events of new users ingested, not scored); their "
        f"{sum(map(len, held.prefix)):,} earlier events seed each replay",
        flush=True,
    )
    redis_server, store = local_store(cfg.events_store, "replay-redis-")
    base = f"http://127.0.0.1:{cfg.port}"
    runs: dict[str, dict] = {}
    try:
        j = 0
        for mode in cfg.modes:
            config = serve_config(
                args={
                    "checkpoint": str(checkpoint),
                    "torch_threads": cfg.torch_threads,
                    "events_store": store,
                    "history_cap": cfg.history_cap,
                },
                user_configs={
                    "Retriever": {"state_mode": mode},
                    "Ranker": {"weights": {}, "weights_file": cfg.weights_file},
                },
                port=cfg.port,
            )
            deploy(config, timeout_s=cfg.deploy_timeout_s)
            for think in (0.0,) if mode == "off" else cfg.think_s:
                name = mode if mode == "off" else f"{mode}@{think * 1000:.0f}ms"
                t0 = time.time()
                raw = replay_once(base, held, f"r{j}", think, cfg)
                j += 1
                r = runs[name] = summarize_replay(raw, cfg.k) | {"state_mode": mode, "think_s": think}
                r["_ranks"] = raw["ranks"]
                print(
                    f"[replay] {name:<14} NDCG@10 {r['ndcg@10']:.4f} ± {r['ndcg@10_se']:.4f}  HR@10 {r['hr@10']:.4f}  "
                    f"sources {r['state_source']}  lagging {100 * r['lagging_share']:.0f}%  "
                    f"({time.time() - t0:.0f}s)",
                    flush=True,
                )
    finally:
        if redis_server is not None:
            redis_server.stop()
    reference = runs["off"]["_ranks"]
    for r in runs.values():
        r.update(paired(r.pop("_ranks"), reference))
    return {
        "replays": runs,
        "setup": asdict(cfg)
        | {
            "checkpoint": str(checkpoint),
            "events": len(held.events),
            "users": len(held.users),
            "seed_events": sum(map(len, held.prefix)),
            "cold_events": sum(held.cold),
            "test_start": held.test_start,
        },
    }


def format_replay(result: dict) -> str:
    lines = [f"{'replay':<16}{'NDCG@10':>9}{'± se':>8}{'HR@10':>8}{'Δ vs off':>10}{'± se':>8}{'lagging':>9}  sources"]
    for name, r in result["replays"].items():
        lines.append(
            f"{name:<16}{r['ndcg@10']:>9.4f}{r['ndcg@10_se']:>8.4f}{r['hr@10']:>8.4f}"
            f"{r['ndcg@10_delta']:>+10.4f}{r['ndcg@10_delta_se']:>8.4f}{100 * r['lagging_share']:>8.0f}%  "
            + ", ".join(f"{k} {v}" for k, v in r["state_source"].items())
        )
    s = result["setup"]
    lines.append(
        f"{s['events']:,} held-out events of {s['users']:,} users "
        f"({s['cold_events']} new users' first events not scored), {s['seed_events']:,} seed events"
    )
    return "\n".join(lines)
