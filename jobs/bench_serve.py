#!/usr/bin/env python
"""Benchmark the Serve application: fixed-rate load, p50/p95/p99 per stage and end to end.

    python jobs/bench_serve.py --out /tmp/bench_serve.json                 # trains a 100k-item run once
    python jobs/bench_serve.py --items 1000000 --users 250000 --events-per-user 8 --out FILE
    python jobs/bench_serve.py --run-dir runs/<run> --rps 50 --seconds 30 --out FILE
    python jobs/bench_serve.py --sweep 50,75,100,125,150,200 --out FILE      # + capacity and overload
    python jobs/bench_serve.py --profile-dir runs/serve-profile --out FILE     # + py-spy flame graph per process

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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / d) for d in ("platform", "models", "serve")]

import ray  # noqa: E402

from argus_platform.config import TrainJobConfig  # noqa: E402
from argus_platform.configlib import load_config  # noqa: E402
from argus_platform.trainer import train  # noqa: E402
from argus_serve.bench import ServeBenchConfig, benchmark, format_result  # noqa: E402
from argus_serve.launch import SERVE_ENV  # noqa: E402

TRAIN = ["data.synthetic.zipf_exponent=0.3", "data.synthetic.impressions_per_event=0", "optim.epochs=1",
         "optim.batch_size=256", "eval.batch_size=128", "eval.max_users=2000", "optim.log_every_steps=200"]


def main() -> int:
    defaults = ServeBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="write the figures here as JSON")
    p.add_argument("--run-dir", default="", help="training run to serve ('' = runs/bench-serve-<items>, trained if absent)")
    p.add_argument("--items", type=int, default=100_000, help="catalogue of the generated run")
    p.add_argument("--users", type=int, default=30_000, help="users of the generated run")
    p.add_argument("--events-per-user", type=int, default=40, help="mean events per user of the generated run")
    names = ("rps", "seconds", "warmup_seconds", "k", "candidates", "port", "torch_threads", "ann_min_items", "scan")
    for name in names:
        p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)), default=getattr(defaults, name))
    p.add_argument("--sweep", default="", help="capacity sweep after the main window: offered rates, e.g. 50,75,100,125,150")
    p.add_argument("--sweep-seconds", type=float, default=defaults.sweep_seconds)
    p.add_argument("--profile-dir", default="", help="py-spy flame graphs (SVG) of each replica, the proxy and the load "
                                                     "generator over the main window, written here (needs py-spy)")
    args = p.parse_args()
    cfg = ServeBenchConfig(**{k: getattr(args, k) for k in names}, sweep_seconds=args.sweep_seconds, profile_dir=args.profile_dir,
                           sweep=tuple(float(r) for r in args.sweep.split(",") if r.strip()))
    # Serve's fast request path (argus_serve.launch.SERVE_ENV), read when Ray starts, so it goes into
    # the environment first; set a variable to 0 in the shell to compare without it.
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    label = f"{args.items // 1_000_000}m" if args.items % 1_000_000 == 0 else f"{args.items // 1000}k"
    run_dir = Path(args.run_dir or ROOT / "runs" / f"bench-serve-{label}").resolve()
    job = load_config(TrainJobConfig, None, TRAIN + [f"data.synthetic.num_items={args.items}", f"data.synthetic.num_users={args.users}",
                                                     f"data.synthetic.events_per_user={args.events_per_user}", f"run.dir={run_dir}"])
    if not any(run_dir.glob("checkpoint_*/.metadata")):
        print(f"[bench] training the benchmark run in {run_dir} (once)", flush=True)
        train(job)
        ray.shutdown()
    # the replicas' logs stay in their files: shipping them to this process costs CPU the load needs
    ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", num_cpus=job.scaling.local_num_cpus,
             include_dashboard=False, log_to_driver=False)
    result = benchmark(run_dir, cfg)
    print(format_result(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"[bench] figures written to {args.out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
