"""Where the CPU goes: CPU seconds per process of this machine over a window, grouped by role
(the Serve proxy, each deployment's replicas, Ray's own daemons, the load generator)."""

from __future__ import annotations

import os
import re

import psutil

_ROLES = [
    (re.compile(r"ServeReplica:[^:]+:(\w+)"), None),  # ray::ServeReplica:<app>:<Deployment> -> the deployment's name
    (re.compile(r"ProxyActor"), "proxy"),
    (re.compile(r"ServeController"), "serve controller"),
    (re.compile(r"raylet"), "raylet"),
    (re.compile(r"gcs_server"), "gcs"),
    (re.compile(r"ray::|default_worker|ray/_private|dashboard|log_monitor|monitor\.py"), "ray (other)"),
]


def _role(proc: psutil.Process, me: int) -> str:
    if proc.pid == me:
        return "load generator + driver"
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except (psutil.Error, OSError):
        return "other"
    for pattern, role in _ROLES:
        m = pattern.search(text)
        if m:
            return role or m.group(1).lower()
    return "other"


def _machine_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of the machine so far, from /proc/stat (0, 0 where there is none)."""
    try:
        fields = [int(x) for x in open("/proc/stat", encoding="utf-8").readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def processes_by_role(roles: set[str]) -> dict[str, list[int]]:
    """{role: [pid, ...]} of the running processes in `roles` (e.g. {"retriever", "ranker", "proxy"})."""
    me, out = os.getpid(), {}
    for proc in psutil.process_iter():
        role = _role(proc, me)
        if role in roles:
            out.setdefault(role, []).append(proc.pid)
    return out


def snapshot() -> dict[int, tuple[str, float]]:
    """{pid: (role, user+system CPU seconds so far)} for every process that can be read; key -1
    holds the machine's (all, stolen) ticks."""
    me, out = os.getpid(), {-1: _machine_ticks()}
    for proc in psutil.process_iter():
        try:
            t = proc.cpu_times()
            out[proc.pid] = (_role(proc, me), t.user + t.system)
        except (psutil.Error, OSError):
            continue
    return out


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float, requests: int
) -> dict[str, dict[str, float]]:
    """CPU used between two snapshots, by role: cores busy on average and ms of CPU per request;
    the total also has the fraction of the machine's CPU time stolen by the hypervisor."""
    used: dict[str, float] = {}
    (all0, st0), (all1, st1) = before[-1], after[-1]
    for pid, (role, t1) in after.items():
        if pid == -1:
            continue
        t0 = before.get(pid, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + max(0.0, t1 - t0)
    total = sum(used.values())
    rows = {
        role: {"cores": sec / seconds, "ms_per_request": 1000 * sec / max(1, requests)}
        for role, sec in sorted(used.items(), key=lambda kv: -kv[1])
        if sec > 0
    }
    rows["total"] = {
        "cores": total / seconds,
        "ms_per_request": 1000 * total / max(1, requests),
        # time the hypervisor gave this VM's CPUs to others: high values make any latency figure suspect
        "stolen_fraction": (st1 - st0) / max(1, all1 - all0),
    }
    return {k: {m: round(v, 3) for m, v in r.items()} for k, r in rows.items()}


_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """The CPU a figure was measured on: model, the SIMD/matrix flags that change model speed, cores."""
    model, flags = "", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "cpu": model or "unknown",
        "flags": [f for f in _FLAGS if f in flags],
        "cores": cores,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def describe(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, {'/'.join(m['flags']) or 'no avx2'}, {m['memory_gib']:.0f} GiB"
