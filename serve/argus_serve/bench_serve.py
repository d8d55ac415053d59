"""Latency benchmark of the deployed application: fixed-rate load against /v1/recommend, per
stage and end to end, next to the bare model forward of the same work in one process."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import requests
import torch

from argus_models.inference import action_probabilities, build_index, combine, encode_next
from argus_serve import cpu
from argus_serve.artifacts import (
    load_serving_model,
    load_vocabulary,
    read_actions,
    resolve_checkpoint,
    run_dir_of,
    serving_dir,
)
from argus_serve.launch import SERVE_ENV, deploy, refresher_status, serve_config, wait_for_states
from argus_serve.loadgen import percentiles, run_load, schedule, summarize
from argus_serve.redis_local import local_store
from argus_serve.scoring import diversify, item_groups
from argus_serve.store import UserStore

log = logging.getLogger(__name__)


@dataclass
class ServeBenchConfig:
    rps: float = 50.0  # offered load
    seconds: float = 30.0  # measured window
    warmup_seconds: float = 5.0  # same load first, not measured
    k: int = 10
    candidates: int = 200  # retrieve_k: candidates ranked per request
    port: int = 8000
    max_in_flight: int = 64
    arrivals: str = "uniform"  # the load's schedule: uniform (request i at i/rps) or poisson (exponential gaps)
    forward_reps: int = 300
    torch_threads: int = 1  # per model replica, and for the bare forward
    ann_min_items: int = 200_000  # the Retriever's FAISS threshold (serve/argus.yaml's default)
    scan: str = "sq8"  # the Retriever's full scan below it: sq8 (8-bit codes, shortlist re-scored) or float32
    retriever_replicas: int = 1  # num_replicas of each deployment (serve/argus.yaml ships 1 and 1)
    ranker_replicas: int = 1
    recall_queries: int = 200  # queries for the ANN index's recall against exact search
    sweep: tuple[float, ...] = ()  # offered rates for the capacity sweep after the main window (empty = none)
    sweep_seconds: float = 15.0  # measured window per swept rate
    p99_bar_ms: float = 60.0  # capacity: the highest swept rate up to which every rate kept p99 under this
    profile_dir: str = (
        ""  # py-spy flame graphs of every replica and the load generator over the main window ('' = none)
    )
    deploy_timeout_s: float = 600.0
    # the event store: '' = the histories frozen in the run; `local` = a redis-server started for the
    # bench; or a Redis URL. With it, every user of the load gets one event ingested first, the main
    # window runs on the stored states (Retriever state_mode latest) while events stream in at
    # event_rps, and the same load runs again with state_mode off (the encoder on every request).
    events_store: str = ""
    event_rps: float = 10.0
    refresh_timeout_s: float = 300.0


def _rss() -> int:
    return psutil.Process().memory_info().rss


def prepare_serving_files(checkpoint: Path, cfg: ServeBenchConfig) -> dict:
    """Build (or read back) what the replicas derive from the run once, here in one process, and
    measure it: the memory-mapped user store, the retrieval index (time, bytes, resident memory,
    recall against exact search). The replicas then read the same files."""
    out = {}
    run_dir = run_dir_of(checkpoint)
    rss0, t0 = _rss(), time.perf_counter()
    store = UserStore.load(run_dir, load_vocabulary(checkpoint), read_actions(checkpoint))
    out["user_store"] = store.stats() | {
        "load_seconds": round(time.perf_counter() - t0, 2),
        "rss_delta_bytes": _rss() - rss0,
    }
    sm = load_serving_model(checkpoint)
    rss0, t0 = _rss(), time.perf_counter()
    index = build_index(sm.item_vectors, cfg.ann_min_items, cache_dir=serving_dir(run_dir), scan=cfg.scan)
    out["index"] = index.describe() | {"seconds": round(time.perf_counter() - t0, 2), "rss_delta_bytes": _rss() - rss0}
    if index.kind != "exact":
        exact = build_index(sm.item_vectors, 0, scan="float32")
        users = load_vocabulary(checkpoint).users
        picks = np.random.default_rng(1).choice(len(users), size=min(cfg.recall_queries, len(users)), replace=False)
        events = [e for u in picks if (e := store.get(str(users[u]))) is not None]
        _, query = encode_next(sm.model, events, [{c: int(v[-1]) for c, v in e.contexts.items()} for e in events])
        exclude = [np.unique(e.items) for e in events]
        a, _ = index.search(query, cfg.candidates, exclude)
        b, _ = exact.search(query, cfg.candidates, exclude)
        out["index"]["recall_at_candidates"] = round(
            float(np.mean([len(np.intersect1d(x[x > 0], y[y > 0])) / max(1, (y > 0).sum()) for x, y in zip(a, b)])), 4
        )
    return out


def bare_forward_ms(checkpoint: Path, users: list[str], cfg: ServeBenchConfig) -> dict:
    """One request's model work in-process (batch of 1): encode, retrieve top-N, feedback heads
    over N candidates, combine, diversify. No Serve, no HTTP."""
    torch.set_num_threads(cfg.torch_threads)
    sm = load_serving_model(checkpoint)
    store = UserStore.load(run_dir_of(sm.checkpoint), load_vocabulary(sm.checkpoint), read_actions(sm.checkpoint))
    index = build_index(
        sm.item_vectors, cfg.ann_min_items, cache_dir=serving_dir(run_dir_of(sm.checkpoint)), scan=cfg.scan
    )
    groups = item_groups(sm.item_vectors, 32)
    weights = {a.name: 1.0 for a in sm.model.schema.actions}
    times = []
    for i in range(cfg.forward_reps):
        ev = store.get(users[i % len(users)])
        ctx = {c: int(v[-1]) for c, v in ev.contexts.items()}
        t0 = time.perf_counter()
        head_in, query = encode_next(sm.model, [ev], [ctx])
        ids, scores = index.search(query, cfg.candidates, [np.unique(ev.items)])
        probs = action_probabilities(sm.model, head_in, torch.from_numpy(ids), [ev], [ctx])
        s = combine(probs, weights).numpy()[0]
        diversify(s, groups[ids[0]], 0.85, cfg.k)
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times[10:])


def benchmark(run_dir: str | Path, cfg: ServeBenchConfig) -> dict:
    schedule(cfg.rps, 0, cfg.arrivals)  # an unknown schedule fails here, not after the deploy
    checkpoint = resolve_checkpoint(str(run_dir))
    vocab = load_vocabulary(checkpoint)
    users = vocab.users.tolist()
    rng = np.random.default_rng(0)
    picks = rng.choice(len(users), size=int(cfg.rps * (cfg.seconds + cfg.warmup_seconds)) + 1)
    print(f"[bench] user store and retrieval index for {vocab.num_items:,} items, {len(users):,} users ...", flush=True)
    files = prepare_serving_files(checkpoint, cfg)
    print(
        f"[bench] user store {files['user_store']['file_bytes'] / 2**20:.0f} MiB on disk; index {files['index']}",
        flush=True,
    )
    redis_server, events_store = local_store(cfg.events_store, "bench-redis-")
    if redis_server is not None:
        print(f"[bench] started redis-server for the event store at {events_store}", flush=True)
    print(f"[bench] deploying serve/argus.yaml on 127.0.0.1:{cfg.port} for {checkpoint}", flush=True)
    t0 = time.time()

    def config(state_mode: str = "latest") -> dict:
        args = {"checkpoint": str(checkpoint), "retrieve_k": cfg.candidates, "torch_threads": cfg.torch_threads}
        return serve_config(
            args=args | {"events_store": events_store},
            user_configs={
                "Retriever": {"ann_min_items": cfg.ann_min_items, "scan": cfg.scan, "state_mode": state_mode}
            },
            port=cfg.port,
            deployment_options={
                "Retriever": {"num_replicas": cfg.retriever_replicas},
                "Ranker": {"num_replicas": cfg.ranker_replicas},
            },
        )

    deploy(config(), timeout_s=cfg.deploy_timeout_s)
    deploy_seconds = time.time() - t0
    print(f"[bench] application RUNNING after {time.time() - t0:.0f}s", flush=True)
    url = f"http://127.0.0.1:{cfg.port}/v1/recommend"

    def body(i: int) -> dict:
        return {"user_id": users[picks[i % len(picks)]], "k": cfg.k, "debug": True}

    states = None
    if events_store:
        states = {"refresh_burst": ingest_and_wait(cfg, sorted({users[p] for p in picks}), vocab.items.tolist())}
    print(f"[bench] warm-up {cfg.warmup_seconds:.0f}s, then {cfg.seconds:.0f}s at {cfg.rps:.0f} requests/s", flush=True)
    run_load(url, body, cfg.rps, cfg.warmup_seconds, cfg.max_in_flight, cfg.arrivals)
    profilers = start_profilers(Path(cfg.profile_dir), cfg.seconds) if cfg.profile_dir else []
    before = cpu.snapshot()
    stream = EventStream(cfg, [users[p] for p in picks], vocab.items.tolist()) if events_store else None
    load = run_load(
        url,
        lambda i: body(i + int(cfg.rps * cfg.warmup_seconds)),
        cfg.rps,
        cfg.seconds,
        cfg.max_in_flight,
        cfg.arrivals,
        seed=1,
    )
    result = summarize(load)
    if stream is not None:
        states["stream"] = stream.stop()
        states["stored_share"] = state_share(url, [users[p] for p in picks[:50]])
    if profilers:
        result["profiles"] = finish_profilers(profilers)
    result["cpu_by_process"] = cpu.cpu_by_role(before, cpu.snapshot(), load.seconds, len(load.latencies_ms))
    if states is not None:
        print("[bench] the same load with state_mode off (the encoder on every request) ...", flush=True)
        deploy(config("off"), timeout_s=cfg.deploy_timeout_s)
        run_load(url, body, cfg.rps, cfg.warmup_seconds, cfg.max_in_flight, cfg.arrivals)
        before_off = cpu.snapshot()
        off = run_load(url, body, cfg.rps, cfg.seconds, cfg.max_in_flight, cfg.arrivals, seed=1)
        states["encoder"] = summarize(off) | {
            "cpu_by_process": cpu.cpu_by_role(before_off, cpu.snapshot(), off.seconds, len(off.latencies_ms))
        }
        states["stored"] = {k: result[k] for k in ("end_to_end", "stages")}
        result["states"] = states
        deploy(config(), timeout_s=cfg.deploy_timeout_s)
    if cfg.sweep:
        result["capacity"] = capacity_sweep(url, body, cfg)
    print("[bench] bare model forward (one process, batch 1) ...", flush=True)
    result["model_forward_ms"] = bare_forward_ms(checkpoint, [users[p] for p in picks[:200]], cfg)
    health = requests.get(f"http://127.0.0.1:{cfg.port}/healthz", timeout=30).json()  # memory after the load
    result["memory"] = {
        "retriever_rss_bytes": health["retriever"]["rss_bytes"],
        "ranker_rss_bytes": health["ranker"]["rss_bytes"],
        "machine_used_bytes": psutil.virtual_memory().used,
    }
    result["serving_files"] = files
    result["setup"] = asdict(cfg) | {
        "checkpoint": str(checkpoint),
        "items": vocab.num_items,
        "users": len(users),
        "index": health["retriever"]["index"],
        "deploy_seconds": round(deploy_seconds, 1),
        "machine": cpu.machine(),
        "torch": torch.__version__,
        "serve_env": {k: os.environ.get(k, "0") for k in SERVE_ENV},
        "events_store": events_store,
    }
    if redis_server is not None:
        redis_server.stop()
    return result


def ingest_and_wait(cfg: ServeBenchConfig, users: list[str], items: list[str]) -> dict:
    """One event for each user (batches of 200 per POST), then wait until the refresher has
    encoded them all: the burst's ingest rate and how long the states took."""
    url = f"http://127.0.0.1:{cfg.port}/v1/events"
    rng = np.random.default_rng(7)
    done0 = refresher_status().get("counts", {}).get("users_encoded", 0)
    t0 = time.time()
    with requests.Session() as s:
        for i in range(0, len(users), 200):
            batch = [
                {"user_id": u, "item_id": items[int(rng.integers(len(items)))], "event_id": f"bench-{u}"}
                for u in users[i : i + 200]
            ]
            r = s.post(url, json={"events": batch}, timeout=60)
            r.raise_for_status()
    ingest_s = time.time() - t0
    print(f"[bench] ingested {len(users):,} events in {ingest_s:.1f}s; waiting for their states ...", flush=True)
    status = wait_for_states(len(users), done0, t0, cfg.refresh_timeout_s, poll_s=0.5)
    seconds = time.time() - t0
    print(f"[bench] {len(users):,} states written {seconds:.1f}s after the first event", flush=True)
    return {
        "users": len(users),
        "ingest_seconds": round(ingest_s, 2),
        "ingest_events_per_s": round(len(users) / ingest_s, 1),
        "all_states_after_s": round(seconds, 2),
        "refresh_lag_s": status["refresh_lag_s"],
    }


class EventStream:
    """Events POSTed one by one at `event_rps` in a thread during the measured window: the refresh
    lag under a stream (from the refresher's own samples of the window)."""

    def __init__(self, cfg: ServeBenchConfig, users: list[str], items: list[str]) -> None:
        import threading

        self.cfg, self.users, self.items = cfg, users, items
        self.t0, self.sent, self.failed = time.time(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.cfg.port}/v1/events"
        rng = np.random.default_rng(11)
        gap = 1.0 / max(self.cfg.event_rps, 1e-9)
        with requests.Session() as s:
            while not self._stop.wait(gap):
                event = {
                    "user_id": self.users[int(rng.integers(len(self.users)))],
                    "item_id": self.items[int(rng.integers(len(self.items)))],
                }
                try:
                    s.post(url, json=event, timeout=10).raise_for_status()
                    self.sent += 1
                except requests.RequestException:
                    self.failed += 1

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        time.sleep(2.0)  # the last events' states
        status = refresher_status(self.t0)
        return {
            "event_rps": self.cfg.event_rps,
            "sent": self.sent,
            "failed": self.failed,
            "refresh_lag_s": status["refresh_lag_s"],
        }


def state_share(url: str, users: list[str]) -> dict:
    """What a sample of the load's users were answered from after the window."""
    sources = collections.Counter(
        requests.post(url, json={"user_id": u, "k": 10}, timeout=30).json()["state_source"] for u in users
    )
    return dict(sources)


PROFILED = {"retriever", "ranker", "proxy", "load generator + driver"}


def start_profilers(out_dir: Path, seconds: float) -> list[tuple[str, Path, subprocess.Popen]]:
    """py-spy (sampling, 50 Hz, without pausing the process) on each replica, the HTTP proxy and the
    load generator for the measured window, each writing an SVG flame graph. Sampling costs CPU the
    service shares, so a profiled run's latency is not a benchmark figure."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise FileNotFoundError("profile_dir needs py-spy: pip install py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for role, pids in sorted(cpu.processes_by_role(PROFILED).items()):
        for n, pid in enumerate(pids):
            path = out_dir / f"{role.split()[0]}{'' if n == 0 else f'-{n}'}.svg"
            cmd = [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds) - 1)),
                "--rate",
                "50",
                "--nonblocking",
                "--format",
                "flamegraph",
                "--output",
                str(path),
            ]
            running.append((role, path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    print(f"[bench] profiling {len(running)} processes into {out_dir}", flush=True)
    return running


def finish_profilers(running: list[tuple[str, Path, subprocess.Popen]]) -> dict[str, str]:
    out = {}
    for role, path, proc in running:
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0 and path.exists():
            out[path.stem] = str(path)
        else:  # e.g. no ptrace permission in a container without SYS_PTRACE
            log.warning("py-spy on %s failed: %s", role, err.decode(errors="replace").strip()[-300:])
    return out


def capacity_sweep(url: str, body, cfg: ServeBenchConfig) -> dict:
    """Offered rate → end-to-end percentiles, admitted rate and refusals, one short window per rate
    (a few seconds of the same rate first); the capacity is the highest rate that keeps p99 under
    the bar with every request admitted, at that rate and at every lower one swept (a short window's
    p99 is noisy: one lucky window above a failed one is not capacity)."""
    rows = []
    for rate in cfg.sweep:
        run_load(url, body, rate, 3.0, cfg.max_in_flight, cfg.arrivals)
        before = cpu.snapshot()
        load = run_load(url, body, rate, cfg.sweep_seconds, cfg.max_in_flight, cfg.arrivals, seed=int(rate))
        used = cpu.cpu_by_role(before, cpu.snapshot(), load.seconds, len(load.latencies_ms))["total"]
        summary = summarize(load)
        e, batches = summary["end_to_end"], summary["mean_batch_size"]
        rows.append(
            {"offered_rps": rate}
            | {
                k: e[k]
                for k in (
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "rps",
                    "refused",
                    "refused_with_retry_after",
                    "refused_p99_ms",
                    "dropped",
                    "errors",
                    "client_gc_pauses",
                    "client_gc_max_ms",
                )
            }
            | {"cores_busy": used["cores"], "stolen_fraction": used["stolen_fraction"], "mean_batch_size": batches}
        )
        print(
            f"[bench] {rate:.0f} req/s offered: admitted {e['rps']:.1f}/s, p50 {e['p50_ms']:.1f} ms, "
            f"p99 {e['p99_ms']:.1f} ms, "
            f"refused {e['refused']} (Retry-After on {e['refused_with_retry_after']}), dropped {e['dropped']}; "
            f"{used['cores']:.2f} cores busy, {100 * used['stolen_fraction']:.1f}% stolen; mean batch "
            + ", ".join(f"{k.removesuffix('_batch')} {v:.2f}" for k, v in batches.items()),
            flush=True,
        )
    return {"p99_bar_ms": cfg.p99_bar_ms, "capacity_rps": capacity(rows, cfg.p99_bar_ms), "rates": rows}


def capacity(rows: list[dict], p99_bar_ms: float) -> float:
    """The highest offered rate that kept p99 ≤ the bar with nothing refused, dropped or failed, at
    that rate and at every lower one swept (0 when the lowest already failed)."""
    best = 0.0
    for r in sorted(rows, key=lambda r: r["offered_rps"]):
        if r["p99_ms"] > p99_bar_ms or r["refused"] or r["dropped"] or r["errors"]:
            break
        best = r["offered_rps"]
    return best


def format_result(result: dict) -> str:
    e = result["end_to_end"]
    lines = [
        f"{'stage':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}",
        f"{'end to end (client)':<22}{e['p50_ms']:>9.1f}{e['p95_ms']:>9.1f}{e['p99_ms']:>9.1f}",
    ]
    for name, s in result["stages"].items():
        lines.append(f"{name:<22}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}{s['p99_ms']:>9.1f}")
    m = result["model_forward_ms"]
    lines.append(f"{'bare model forward':<22}{m['p50_ms']:>9.1f}{m['p95_ms']:>9.1f}{m['p99_ms']:>9.1f}")
    mem = result.get("memory", {})
    if mem:
        lines.append(
            "resident memory: "
            + ", ".join(
                f"{k.removesuffix('_rss_bytes')} {v / 2**30:.2f} GiB"
                for k, v in mem.items()
                if k.endswith("_rss_bytes")
            )
            + f"; machine {mem['machine_used_bytes'] / 2**30:.2f} GiB in use"
        )
    lines.append(
        "CPU per request: "
        + ", ".join(f"{k} {v['ms_per_request']:.1f} ms" for k, v in result["cpu_by_process"].items())
        + f" ({result['cpu_by_process']['total']['cores']:.2f} cores busy, "
        f"{100 * result['cpu_by_process']['total']['stolen_fraction']:.1f}% stolen by the hypervisor)"
    )
    if "states" in result:
        st = result["states"]
        a, b = st["stored"]["end_to_end"], st["encoder"]["end_to_end"]
        burst, stream = st["refresh_burst"], st["stream"]
        lines.append(
            f"stored states (state_mode latest): p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, "
            f"{a['rps']:.1f} req/s; encoder on every request (off): p50 {b['p50_ms']:.1f} ms, "
            f"p99 {b['p99_ms']:.1f} ms, {b['rps']:.1f} req/s; answered from {st['stored_share']}"
        )
        lag = stream["refresh_lag_s"]
        lines.append(
            f"refresh: {burst['users']:,} events ingested at {burst['ingest_events_per_s']:.0f}/s, all states "
            f"after {burst['all_states_after_s']:.1f}s; under a stream of {stream['event_rps']:.0f} events/s "
            f"({stream['sent']} sent): lag p50 {lag['p50']} s, p99 {lag['p99']} s"
        )
    if "capacity" in result:
        c = result["capacity"]
        lines.append(
            f"capacity (p99 ≤ {c['p99_bar_ms']:.0f} ms, nothing refused, up to that rate): "
            f"{c['capacity_rps']:.0f} requests/s of "
            + ", ".join(f"{r['offered_rps']:.0f}" for r in c["rates"])
            + " offered"
        )
    if result.get("profiles"):
        lines.append("flame graphs (latency above is with py-spy sampling): " + ", ".join(result["profiles"].values()))
    lines.append(f"machine: {cpu.describe(result['setup']['machine'])}")
    lines.append(
        f"achieved {e['rps']:.1f} of {e['offered_rps']:.1f} requests/s offered "
        f"({e['requests']} ok, {e['refused']} refused, "
        f"{e['dropped']} dropped, errors {e['errors'] or 0}); "
        f"mean batch {result['mean_batch_size']}"
    )
    return "\n".join(lines)
