#!/usr/bin/env python
"""Greedy vs neural-linear exploration against simulated users of the synthetic ground truth, through the live service.

    python jobs/train_argus.py --set run.dir=runs/bandit-default      # the embedded synthetic default
    python jobs/simulate_bandit.py --run-dir runs/bandit-default --out /tmp/bandit.json --plot serve/bandit-default.png
    python jobs/simulate_bandit.py --run-dir RUN --set sessions=500 --set 'shares=[0.2]' --out FILE

Each policy (greedy; neural_linear at each exploration share) plays the same seeded sessions: a
user asks /v1/recommend, picks from the slate and reacts as the generator's true laws say, and the
event goes to /v1/events, where the feedback learner folds it into the posterior
(argus_platform.simulate_bandit). A redis-server is started for it (events_store=local) unless a Redis URL
is given. Prints regret and true engagement per policy, writes them as JSON and plots the curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ray

from argus_platform.cli import parse_config_and_args
from argus_platform.simulate_bandit import BanditSimConfig, format_simulation, plot_simulation, simulate
from argus_serve.launch import start_ray


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="a training run of the synthetic source")
    p.add_argument("--out", required=True, help="write the figures here as JSON")
    p.add_argument("--plot", default="", help="also plot cumulative regret and engagement here (PNG)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(BanditSimConfig, __doc__.splitlines()[0], add_arguments, argv)
    start_ray()
    result = simulate(Path(args.run_dir).resolve(), cfg)
    print(format_simulation(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"[bandit] figures written to {args.out}")
    if args.plot:
        plot_simulation(result, args.plot)
        print(f"[bandit] curves plotted to {args.plot}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
