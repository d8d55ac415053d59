"""Faults injected into the live service, measured (jobs/fault_serve.py).

overload      the saturation rate measured with a closed loop (`saturation_concurrency` clients,
              each sending its next request when the last is answered), then an open-loop load at
              `overload_factor` × that rate for `overload_seconds`, followed at once by probes at
              the baseline rate: offered vs admitted rate, refusals (503 with Retry-After) and how
              fast they came back, the admitted requests' p99 from their scheduled send times, and
              the seconds after the load until latency is back to the baseline's.
kill_replica  an open-loop load at `kill_rps` while `ray.kill` ends one replica of each deployment
              in `kill_targets` in turn (`kill_every_s` apart): per kill, the failed requests, the
              seconds from the kill to the last failure (after which the error rate is zero
              again), and what GET /healthz said meanwhile (polled every `health_every_s`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import ray
import requests

from argus_serve import cpu
from argus_serve.artifacts import load_vocabulary, resolve_checkpoint
from argus_serve.launch import deploy, serve_config
from argus_serve.loadgen import percentiles, run_schedule, schedule, summarize
from argus_serve.redis_local import local_store

SCENARIOS = ("overload", "kill_replica")
# what kill_targets may name: a deployment's replica, or `proxy`, the node's HTTP proxy actor (with
# RAY_SERVE_ENABLE_HA_PROXY, the manager of the HAProxy process in front of the ingress replicas)
KILLABLE = ("Retriever", "Ranker", "StateRefresher", "proxy")


@dataclass
class FaultConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    port: int = 8000
    k: int = 10
    events_store: str = "local"  # a redis-server for the histories, as `make serve` runs it ('' = frozen)
    retriever_replicas: int = 1  # num_replicas of each deployment (serve/argus.yaml ships 1 and 1)
    ranker_replicas: int = 1
    baseline_rps: float = 10.0  # the light load before and after the overload (normal latency)
    baseline_seconds: float = 15.0
    saturation_concurrency: int = 8  # closed-loop clients (the Retriever's max_ongoing_requests)
    saturation_seconds: float = 15.0
    overload_factor: float = 3.0
    overload_seconds: float = 30.0
    recovery_seconds: float = 30.0  # probes at baseline_rps after the overload
    recovery_window_s: float = 2.0  # recovered: the first window of this length whose probes all pass
    recovery_p99_factor: float = 1.5  # a probe passes: 200 within max(factor × baseline p99, +10 ms)
    kill_rps: float = 50.0
    kill_targets: tuple[str, ...] = ("Ranker", "Retriever")
    kill_first_s: float = 15.0
    kill_every_s: float = 30.0
    health_every_s: float = 0.25
    max_in_flight: int = 1024
    timeout_s: float = 30.0  # a request unanswered this long is an error
    deploy_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"scenarios {sorted(unknown)}: choose from {list(SCENARIOS)}")
        for name in self.kill_targets:
            if name not in KILLABLE:
                raise ValueError(f"kill_targets {name!r}: one of {list(KILLABLE)}")


def run_faults(run_dir, cfg: FaultConfig) -> dict:
    checkpoint = resolve_checkpoint(str(run_dir))
    users = load_vocabulary(checkpoint).users.tolist()
    rng = np.random.default_rng(0)
    redis_server, events_store = local_store(cfg.events_store, "fault-redis-")
    options = {"Retriever": {"num_replicas": cfg.retriever_replicas}, "Ranker": {"num_replicas": cfg.ranker_replicas}}
    config = serve_config(
        args={"checkpoint": str(checkpoint), "events_store": events_store}, port=cfg.port, deployment_options=options
    )
    print(f"[faults] deploying serve/argus.yaml on 127.0.0.1:{cfg.port} for {checkpoint}", flush=True)
    deploy(config, timeout_s=cfg.deploy_timeout_s)
    base = f"http://127.0.0.1:{cfg.port}"
    url = f"{base}/v1/recommend"
    picks = rng.integers(len(users), size=1_000_000)

    def body(i: int) -> dict:
        return {"user_id": users[picks[i % len(picks)]], "k": cfg.k}

    result = {
        "setup": asdict(cfg)
        | {"checkpoint": str(checkpoint), "users": len(users), "machine": cpu.machine(), "events_store": events_store}
    }
    try:
        run_schedule(url, body, schedule(cfg.baseline_rps, 5.0), cfg.max_in_flight)  # warm-up
        if "overload" in cfg.scenarios:
            result["overload"] = overload(url, body, cfg)
        if "kill_replica" in cfg.scenarios:
            result["kill_replica"] = kill_replicas(base, url, body, cfg)
    finally:
        if redis_server is not None:
            redis_server.stop()
    return result


def closed_loop(url: str, body, clients: int, seconds: float, timeout_s: float) -> dict:
    """`clients` threads, each sending its next request when the last is answered: the rate the
    service sustains (its saturation) without a queue building up."""
    done, refused, failed = [], [0], [0]
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(c: int) -> None:
        session, i = requests.Session(), c
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status = session.post(url, json=body(i), timeout=timeout_s).status_code
            except requests.RequestException:
                status = 0
            with lock:
                if status == 200:
                    done.append((time.perf_counter() - t0) * 1000)
                elif status == 503:
                    refused[0] += 1
                else:
                    failed[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"clients": clients, "rps": len(done) / elapsed, "refused": refused[0], "failed": failed[0]} | percentiles(
        done
    )


def recovery_seconds(timeline, after_s: float, bar_ms: float, window_s: float) -> float | None:
    """Seconds from `after_s` to the start of the first `window_s` window whose requests (scheduled
    at or after `after_s`) all answered 200 within `bar_ms`; None if no window passed."""
    probes = [(t, status, ms) for t, status, ms in timeline if t >= after_s]
    for i, (start, _, _) in enumerate(probes):
        window = [p for p in probes[i:] if p[0] < start + window_s]
        if probes[-1][0] < start + window_s * 0.9:
            return None  # too little left to fill a window
        if all(status == 200 and ms <= bar_ms for _, status, ms in window):
            return start - after_s
    return None


def overload(url: str, body, cfg: FaultConfig) -> dict:
    print(f"[faults] baseline: {cfg.baseline_rps:.0f} req/s for {cfg.baseline_seconds:.0f}s", flush=True)
    baseline = summarize(run_schedule(url, body, schedule(cfg.baseline_rps, cfg.baseline_seconds), cfg.max_in_flight))
    p99 = baseline["end_to_end"]["p99_ms"]
    print(f"[faults] saturation: {cfg.saturation_concurrency} closed-loop clients, {cfg.saturation_seconds:.0f}s")
    saturation = closed_loop(url, body, cfg.saturation_concurrency, cfg.saturation_seconds, cfg.timeout_s)
    rate = cfg.overload_factor * saturation["rps"]
    print(
        f"[faults] saturation {saturation['rps']:.1f} req/s (p99 {saturation['p99_ms']:.0f} ms); overload "
        f"{rate:.0f} req/s for {cfg.overload_seconds:.0f}s, then {cfg.baseline_rps:.0f} req/s probes",
        flush=True,
    )
    heavy = schedule(rate, cfg.overload_seconds)
    probes = cfg.overload_seconds + schedule(cfg.baseline_rps, cfg.recovery_seconds)
    before = cpu.snapshot()
    load = run_schedule(url, body, np.concatenate([heavy, probes]), cfg.max_in_flight, timeout_s=cfg.timeout_s)
    used = cpu.cpu_by_role(before, cpu.snapshot(), load.seconds, len(load.latencies_ms))["total"]
    during = [e for e in load.timeline if e[0] < cfg.overload_seconds]
    admitted = [ms for _, status, ms in during if status == 200]
    refused = [ms for _, status, ms in during if status == 503]
    bar = max(cfg.recovery_p99_factor * p99, p99 + 10.0)
    recovered = recovery_seconds(load.timeline, cfg.overload_seconds, bar, cfg.recovery_window_s)
    after = [(status, ms) for t, status, ms in load.timeline if t >= cfg.overload_seconds]
    out = {
        "baseline": baseline["end_to_end"],
        "saturation": saturation,
        "offered_rps": len(heavy) / cfg.overload_seconds,
        "admitted_rps": len(admitted) / cfg.overload_seconds,
        "requests": len(during),
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_total": load.refused,  # the probes after the load included
        "refused_with_retry_after": load.refused_with_retry_after,  # of refused_total
        "errors": load.errors,
        "dropped_by_client": load.dropped,
        "unanswered": sum(1 for _, status, _ in load.timeline if status == 0),
        "admitted_latency": percentiles(admitted),
        "refused_latency": percentiles(refused),
        "send_lag_p99_ms": percentiles(load.send_lag_ms)["p99_ms"],
        "cores_busy": used["cores"],
        "recovery_bar_ms": bar,
        "recovery_s": recovered,
        "after_load": {
            "probes": len(after),
            "failed": sum(1 for status, _ in after if status != 200),
            "latency": percentiles([ms for status, ms in after if status == 200]),
        },
    }
    print(
        f"[faults] overload: offered {out['offered_rps']:.0f}/s, admitted {out['admitted_rps']:.1f}/s "
        f"(p99 {out['admitted_latency']['p99_ms']:.0f} ms), refused {out['refused']} "
        f"(Retry-After on {out['refused_with_retry_after']} of {out['refused_total']}, p99 "
        f"{out['refused_latency']['p99_ms']:.1f} ms), "
        f"errors {out['errors']}, unanswered {out['unanswered']}; back to normal (≤ {bar:.0f} ms) after "
        f"{recovered if recovered is None else round(recovered, 2)} s",
        flush=True,
    )
    return out


def replica_actors(target: str, app: str = "argus") -> list[str]:
    """Names of the live actors of one kill target (namespace `serve`), from the GCS (no dashboard
    needed): a deployment's replicas, or the HTTP proxies (not the fallback proxy Serve keeps)."""
    prefix = "SERVE_PROXY_ACTOR-" if target == "proxy" else f"SERVE_REPLICA::{app}#{target}#"
    names = (a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    return sorted(n for n in names if n.startswith(prefix) and "fallback" not in n)


class HealthPoller(threading.Thread):
    """GET /healthz every `every_s`: (second since `t0`, HTTP status, the body's status)."""

    def __init__(self, url: str, every_s: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s, self.t0 = url, every_s, t0
        self.samples: list[tuple[float, int, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self.stopped.is_set():
            t = time.perf_counter() - self.t0
            try:
                r = session.get(self.url, timeout=5)
                is_json = r.headers.get("content-type", "").startswith("application/json")
                state = r.json().get("status", "") if is_json else ""
                self.samples.append((t, r.status_code, state))
            except (requests.RequestException, ValueError) as exc:
                self.samples.append((t, 0, type(exc).__name__))
            self.stopped.wait(self.every_s)


def kill_replicas(base: str, url: str, body, cfg: FaultConfig) -> dict:
    seconds = cfg.kill_first_s + cfg.kill_every_s * len(cfg.kill_targets)
    kills: list[dict] = []
    start = time.perf_counter()
    poller = HealthPoller(f"{base}/healthz", cfg.health_every_s, start)

    def killer() -> None:
        for n, target in enumerate(cfg.kill_targets):
            at = start + cfg.kill_first_s + n * cfg.kill_every_s
            time.sleep(max(0.0, at - time.perf_counter()))
            names = replica_actors(target)
            if not names:
                kills.append({"target": target, "error": "no live replica found"})
                continue
            t = time.perf_counter() - start
            ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
            kills.append({"target": target, "replica": names[0], "replicas_before": len(names), "at_s": t})
            print(f"[faults] t={t:.1f}s killed {names[0]} ({len(names)} {target} replica(s) alive before)", flush=True)

    print(
        f"[faults] {cfg.kill_rps:.0f} req/s for {seconds:.0f}s; killing one replica of "
        f"{', '.join(cfg.kill_targets)} every {cfg.kill_every_s:.0f}s from t={cfg.kill_first_s:.0f}s",
        flush=True,
    )
    poller.start()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    # the killer's clock and the load's start within a millisecond: both start now
    load = run_schedule(url, body, schedule(cfg.kill_rps, seconds), cfg.max_in_flight, timeout_s=cfg.timeout_s)
    thread.join()
    poller.stopped.set()
    poller.join()
    for n, kill in enumerate(kills):
        if "at_s" not in kill:
            continue
        until = kill["at_s"] + cfg.kill_every_s if n + 1 < len(kills) else seconds
        window = [e for e in load.timeline if kill["at_s"] <= e[0] < until]
        failed = [e for e in window if e[1] != 200]
        health = [h for h in poller.samples if kill["at_s"] <= h[0] < until]
        unhealthy = [h for h in health if h[1] != 200 or h[2] != "ok"]
        kill |= {
            "requests": len(window),
            "failed": len(failed),
            "failed_by_status": {str(s): sum(1 for e in failed if e[1] == s) for s in sorted({e[1] for e in failed})},
            "errors_until_s": (failed[-1][0] - kill["at_s"]) if failed else 0.0,
            "latency_after": percentiles([e[2] for e in window if e[1] == 200]),
            "healthz_not_ok_s": (unhealthy[-1][0] - kill["at_s"]) if unhealthy else 0.0,
            "healthz_samples_not_ok": len(unhealthy),
            "healthz_seen": sorted({f"{h[1]} {h[2]}" for h in unhealthy}),
        }
        print(
            f"[faults] {kill['target']}: {kill['failed']} of {kill['requests']} requests failed "
            f"{kill['failed_by_status']}, errors until +{kill['errors_until_s']:.2f}s; /healthz not ok for "
            f"{kill['healthz_samples_not_ok']} samples until +{kill['healthz_not_ok_s']:.2f}s {kill['healthz_seen']}",
            flush=True,
        )
    before = [e for e in load.timeline if e[0] < cfg.kill_first_s]
    return {
        "rps": cfg.kill_rps,
        "seconds": seconds,
        "requests": len(load.timeline),
        "failed": sum(1 for e in load.timeline if e[1] != 200),
        "latency_before": percentiles([e[2] for e in before if e[1] == 200]),
        "kills": kills,
        "replicas_after": {t: len(replica_actors(t)) for t in cfg.kill_targets},
        "healthz_after": _health(f"{base}/healthz"),
    }


def _health(url: str) -> str:
    """GET /healthz once: the body's status, or the HTTP status / error when there is no body."""
    try:
        r = requests.get(url, timeout=10)
        return r.json().get("status", str(r.status_code))
    except (requests.RequestException, ValueError) as exc:
        return type(exc).__name__


def format_faults(result: dict) -> str:
    lines = []
    if "overload" in result:
        o = result["overload"]
        lines.append(
            f"overload: saturation {o['saturation']['rps']:.1f} req/s; offered {o['offered_rps']:.0f}/s for "
            f"{result['setup']['overload_seconds']:.0f}s, admitted {o['admitted_rps']:.1f}/s, p99 admitted "
            f"{o['admitted_latency']['p99_ms']:.0f} ms (baseline {o['baseline']['p99_ms']:.0f} ms), refused "
            f"{o['refused']} in p99 {o['refused_latency']['p99_ms']:.1f} ms (Retry-After on "
            f"{o['refused_with_retry_after']} of {o['refused_total']}), other errors {o['errors']}, "
            f"unanswered {o['unanswered']}, "
            f"recovered after {o['recovery_s']} s"
        )
    if "kill_replica" in result:
        k = result["kill_replica"]
        for kill in k["kills"]:
            lines.append(
                f"killed {kill.get('replica', kill['target'])}: {kill.get('failed')} of {kill.get('requests')} "
                f"failed, errors until +{kill.get('errors_until_s', float('nan')):.2f}s, /healthz not ok until "
                f"+{kill.get('healthz_not_ok_s', float('nan')):.2f}s"
            )
        lines.append(f"replicas after: {k['replicas_after']}; /healthz {k['healthz_after']}")
    return "\n".join(lines)
