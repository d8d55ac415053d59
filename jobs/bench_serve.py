#!/usr/bin/env python
"""Benchmark the Serve application: fixed-rate load, p50/p95/p99 per stage and end to end.

    python jobs/bench_serve.py --out /tmp/bench_serve.json                 # trains a 100k-item run once
    python jobs/bench_serve.py --items 1000000 --users 250000 --events-per-user 8 --out FILE
    python jobs/bench_serve.py --run-dir runs/<run> --set rps=50 --set seconds=30 --out FILE
    python jobs/bench_serve.py --set 'sweep=[50,75,100,125,150,200]' --out FILE     # + capacity and overload
    python jobs/bench_serve.py --set profile_dir=runs/serve-profile --out FILE     # + py-spy flame graph per process
    python jobs/bench_serve.py --set events_store=local --out FILE     # + stored states vs the encoder, refresh lag

Without --run-dir it trains (once; reused on later calls) a synthetic run from a generator with
--items items and --users users under runs/bench-serve-<items>: one epoch, the default model,
validation on a 2,000-user sample. Weights quality does not change latency; the catalogue size,
the number of users and the model shape do. Before deploying, the user store and the retrieval
index are built here once (time, size, memory and the index's recall are reported) and the
replicas read them back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import ray

from argus_platform.cli import parse_config_and_args
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config
from argus_platform.train_argus import train
from argus_serve.bench_serve import ServeBenchConfig, benchmark, format_result
from argus_serve.launch import SERVE_ENV, start_ray

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "data.synthetic.zipf_exponent=0.3",
    "data.synthetic.impressions_per_event=0",
    "optim.epochs=1",
    "optim.batch_size=256",
    "eval.batch_size=128",
    "eval.max_users=2000",
    "optim.log_every_steps=200",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="write the figures here as JSON")
    p.add_argument(
        "--run-dir", default="", help="training run to serve ('' = runs/bench-serve-<items>, trained if absent)"
    )
    p.add_argument("--items", type=int, default=100_000, help="catalogue of the generated run")
    p.add_argument("--users", type=int, default=30_000, help="users of the generated run")
    p.add_argument("--events-per-user", type=int, default=40, help="mean events per user of the generated run")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(ServeBenchConfig, __doc__.splitlines()[0], add_arguments, argv)
    # Serve's fast request path (argus_serve.launch.SERVE_ENV) is read when Ray starts, so it goes
    # into the environment before the training run's Ray too
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    label = f"{args.items // 1_000_000}m" if args.items % 1_000_000 == 0 else f"{args.items // 1000}k"
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-serve-{label}").resolve()
    job = load_config(
        TrainJobConfig,
        None,
        TRAIN
        + [
            f"data.synthetic.num_items={args.items}",
            f"data.synthetic.num_users={args.users}",
            f"data.synthetic.events_per_user={args.events_per_user}",
            f"run.dir={run_dir}",
        ],
    )
    if not any(run_dir.glob("checkpoint_*/.metadata")):
        print(f"[bench] training the benchmark run in {run_dir} (once)", flush=True)
        train(job)
        ray.shutdown()
    start_ray(job.scaling.local_num_cpus)
    result = benchmark(run_dir, cfg)
    print(format_result(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"[bench] figures written to {args.out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
