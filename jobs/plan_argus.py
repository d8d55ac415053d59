#!/usr/bin/env python
"""Plan a training config for a GPU cluster, without GPUs: TorchRec's sharding plan per table and memory per device.

    python jobs/plan_argus.py --config jobs/configs/argus-1b.yaml --world-size 64 --gpus-per-node 8 --gpu-memory-gb 80
    python jobs/plan_argus.py --config jobs/configs/argus-300m.yaml --world-size 8 --num-items 100000000
"""

from __future__ import annotations

import argparse
import logging
import sys

from _cli import parse_config_and_args

from argus_platform.config import TrainJobConfig
from argus_platform.planning import Cluster, format_cluster_plan, plan_cluster, planning_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world-size", type=int, default=8, help="GPUs in the job (default 8)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    parser.add_argument("--host-memory-gb", type=float, default=1024.0, help="host memory per node in GiB (default 1024)")
    parser.add_argument("--headroom", type=float, default=0.10, help="share of each GPU kept free (default 0.10)")
    parser.add_argument("--num-items", type=int, default=0,
                        help="catalogue size (default: data.synthetic.num_items of the config)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(TrainJobConfig, __doc__.splitlines()[0], add_arguments, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    num_items = args.num_items or cfg.data.synthetic.num_items
    cluster = Cluster(world_size=args.world_size, gpus_per_node=args.gpus_per_node, gpu_memory_gb=args.gpu_memory_gb,
                      host_memory_gb=args.host_memory_gb, headroom=args.headroom)
    try:
        plan = plan_cluster(cfg, planning_schema(cfg, num_items), cluster)
    except ValueError as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    print(format_cluster_plan(plan), flush=True)
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
