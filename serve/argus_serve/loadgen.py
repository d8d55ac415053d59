"""Fixed-rate (open-loop) HTTP load for the recommend endpoint, with latency percentiles.

Requests are sent on a schedule whether or not earlier ones have answered, so a slow server shows
up as latency instead of silently lowering the rate: `uniform` sends request i at t0 + i/rps;
`poisson` draws exponential gaps of mean 1/rps (independent users: requests bunch up now and then,
a harder test of the tail than an even spacing). Latency counts from a request's scheduled
send time, not from when the client got round to sending it: a client that falls behind (its own
pause, a full connection pool) adds that delay to the latency instead of hiding it (no coordinated
omission); `send_lag_ms` says how late the sends were. In-flight requests are capped; a request
that would exceed the cap is counted as `dropped` (never sent). A 503 is the service refusing work
above its queue bound: counted as `refused`, with whether it carried Retry-After and how fast it
came back. A request unanswered after `timeout_s` counts as an error (`Timeout`): nothing hangs.
Each request leaves (scheduled second, status, latency ms) in `timeline` (status 0: no answer).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # client-side, successful requests
    stages_ms: dict[str, list[float]] = field(default_factory=dict)  # from the responses' timings_ms
    errors: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # answered 503 (the service's overload refusal)
    refused_with_retry_after: int = 0
    refused_latencies_ms: list[float] = field(default_factory=list)
    dropped: int = 0
    sent: int = 0
    seconds: float = 0.0
    gc_pauses_ms: list[float] = field(default_factory=list)  # the client's own collections (generations 1 and 2)
    send_lag_ms: list[float] = field(default_factory=list)  # actual send time − scheduled send time
    timeline: list[tuple[float, int, float]] = field(default_factory=list)  # (scheduled s, status, latency ms)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan")}
    v = np.asarray(values)
    return {
        "p50_ms": float(np.percentile(v, 50)),
        "p95_ms": float(np.percentile(v, 95)),
        "p99_ms": float(np.percentile(v, 99)),
        "mean_ms": float(v.mean()),
    }


def schedule(rps: float, seconds: float, arrivals: str = "uniform", seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start) of the round(rps·seconds) requests of a window."""
    n = int(rps * seconds)
    if arrivals == "uniform":
        return np.arange(n) / rps
    if arrivals == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rps, size=n)
        return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else gaps
    raise ValueError(f"arrivals={arrivals!r}: use 'uniform' or 'poisson'")


async def _run(
    url: str,
    body: Callable[[int], dict],
    times: np.ndarray,
    max_in_flight: int,
    result: LoadResult,
    headers: dict | None = None,
    timeout_s: float = 30.0,
) -> None:
    n = len(times)
    limit = asyncio.Semaphore(max_in_flight)
    headers = {"content-type": "application/json"} | (headers or {})
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, scheduled: float) -> None:
            status = 0
            try:
                async with session.post(url, data=json.dumps(body(i)), headers=headers) as r:
                    text = await r.text()
                    status = r.status
                    if r.status == 503:
                        result.refused += 1
                        result.refused_with_retry_after += "Retry-After" in r.headers
                        result.refused_latencies_ms.append((time.perf_counter() - scheduled) * 1000)
                        return
                    if r.status != 200:
                        result.errors[str(r.status)] = result.errors.get(str(r.status), 0) + 1
                        return
                result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
                for k, v in (json.loads(text).get("timings_ms") or {}).items():
                    result.stages_ms.setdefault(k, []).append(v)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                name = "Timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
            finally:
                result.timeline.append((scheduled - start, status, (time.perf_counter() - scheduled) * 1000))
                limit.release()

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            scheduled = start + times[i]
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if limit.locked():
                result.dropped += 1
                continue
            await limit.acquire()
            result.sent += 1
            result.send_lag_ms.append((time.perf_counter() - scheduled) * 1000)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - start
        result.timeline.sort()


def run_load(
    url: str,
    body: Callable[[int], dict],
    rps: float,
    seconds: float,
    max_in_flight: int = 64,
    arrivals: str = "uniform",
    seed: int = 0,
) -> LoadResult:
    """Send round(rps·seconds) requests at `rps` on average (`schedule`); `body(i)` makes the i-th
    JSON body."""
    return run_schedule(url, body, schedule(rps, seconds, arrivals, seed), max_in_flight)


def run_schedule(
    url: str,
    body: Callable[[int], dict],
    times: np.ndarray,
    max_in_flight: int = 64,
    headers: dict | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """POST `body(i)` at second `times[i]` from now, for every i, whatever the answers.

    The client's heap is frozen first: in a process that has imported torch and Ray, a full
    collection would walk ~450k objects (~250 ms on a 2-core host), and a client that paused would
    then fire the overdue requests at once — a burst the service did not cause. The collections
    left (generations 1 and 2) are timed and reported, so a client stall shows as one."""
    result = LoadResult()
    started: list[float] = []

    def timed(phase: str, info: dict) -> None:
        if info["generation"] < 1:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            result.gc_pauses_ms.append((time.perf_counter() - started.pop()) * 1000)

    gc.collect()
    gc.freeze()
    gc.callbacks.append(timed)
    try:
        asyncio.run(_run(url, body, times, max_in_flight, result, headers, timeout_s))
    finally:
        gc.callbacks.remove(timed)
    return result


def summarize(result: LoadResult) -> dict:
    ok = len(result.latencies_ms)
    stages = {k.removesuffix("_ms"): percentiles(v) for k, v in result.stages_ms.items() if k.endswith("_ms")}
    batches = {k: float(np.mean(v)) for k, v in result.stages_ms.items() if k.endswith("_batch")}
    per_s = (lambda n: n / result.seconds) if result.seconds else (lambda n: 0.0)
    return {
        "end_to_end": percentiles(result.latencies_ms)
        | {
            "rps": per_s(ok),
            "offered_rps": per_s(result.sent + result.dropped),
            "requests": ok,
            "sent": result.sent,
            "refused": result.refused,
            "refused_with_retry_after": result.refused_with_retry_after,
            "refused_p99_ms": percentiles(result.refused_latencies_ms)["p99_ms"],
            "dropped": result.dropped,
            "errors": result.errors,
            "seconds": result.seconds,
            "client_gc_pauses": len(result.gc_pauses_ms),
            "client_gc_max_ms": max(result.gc_pauses_ms, default=0.0),
            "send_lag_p99_ms": percentiles(result.send_lag_ms)["p99_ms"],
        },
        "stages": stages,
        "mean_batch_size": batches,
    }
