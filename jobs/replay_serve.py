#!/usr/bin/env python
"""Replay a run's held-out events through the deployed service: quality with stored user states vs the encoder.

    python jobs/train_argus.py --config jobs/configs/ml100k.yaml --set data.path=$R/ml-100k/u.data \
        --set data.split=temporal --set run.dir=runs/replay-ml100k
    python jobs/replay_serve.py --run-dir runs/replay-ml100k --out /tmp/replay.json
    python jobs/replay_serve.py --run-dir RUN --set max_events=500 --set 'think_s=[0.0]' --out FILE

The run must be split in time (data.split temporal or temporal_windows): its events from the test
start on were never trained on. Each replay (Retriever state_mode off, latest, mean2; the stored
modes at each think_s) asks /v1/recommend for a held-out event's user, scores where the event's
item lands, then POSTs the event to /v1/events (argus_serve.replay_serve). A redis-server is started
for it (events_store=local) unless a Redis URL is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ray

from argus_platform.cli import parse_config_and_args
from argus_serve.launch import start_ray
from argus_serve.replay_serve import ReplayConfig, format_replay, replay


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="a training run with a temporal split")
    p.add_argument("--out", required=True, help="write the figures here as JSON")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(ReplayConfig, __doc__.splitlines()[0], add_arguments, argv)
    start_ray()
    result = replay(Path(args.run_dir).resolve(), cfg)
    print(format_replay(result))
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"[replay] figures written to {args.out}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
