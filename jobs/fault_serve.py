#!/usr/bin/env python
"""Inject faults into the deployed service and measure them: overload at 3x saturation, killed replicas.

    python jobs/train_argus.py --set run.dir=runs/faults                  # any run; the default is fine
    python jobs/fault_serve.py --run-dir runs/faults --out /tmp/faults.json
    python jobs/fault_serve.py --run-dir RUN --set 'scenarios=[kill_replica]' --set retriever_replicas=2 \
        --set ranker_replicas=2 --out FILE

overload: the saturation rate from a closed loop, then an open-loop load at overload_factor x that
rate for overload_seconds and probes at baseline_rps afterwards: offered vs admitted rate, 503s with
Retry-After and their latency, p99 of the admitted requests from their scheduled send times, seconds
until latency is back to the baseline's. kill_replica: `ray.kill` on one replica of each of
kill_targets in turn under kill_rps: failed requests per kill, seconds until the errors stop, and
what /healthz said meanwhile (argus_serve.fault_serve).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ray

from argus_platform.cli import parse_config_and_args
from argus_serve.fault_serve import FaultConfig, format_faults, run_faults
from argus_serve.launch import start_ray


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="a training run to serve")
    p.add_argument("--out", required=True, help="write the figures here as JSON")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(FaultConfig, __doc__.splitlines()[0], add_arguments, argv)
    # logical CPUs for every replica (half a CPU each, as the deployments ask) and some to spare
    start_ray(max(os.cpu_count() or 1, cfg.retriever_replicas + cfg.ranker_replicas + 2))
    result = run_faults(Path(args.run_dir).resolve(), cfg)
    print(format_faults(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"[faults] figures written to {args.out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
