#!/usr/bin/env python
"""Benchmark one training step of a config on one device: tokens/s, achieved TFLOP/s, MFU, peak memory.

python jobs/bench_train.py --config jobs/configs/argus-300m.yaml --num-items 1000000     # on a GPU
python jobs/bench_train.py --config jobs/configs/argus-3m.yaml --set model.max_seq_len=8192 --set optim.batch_size=2
python jobs/bench_train.py --config jobs/configs/ml1m.yaml --device cpu --set optim.precision=bf16   # vs =fp32
python jobs/bench_train.py --config jobs/configs/ml1m.yaml --device cpu --num-items 3706 --timed-precision
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace

import torch

from argus_platform.bench_train import measure
from argus_platform.cli import parse_config_and_args
from argus_platform.config import TrainJobConfig
from argus_platform.plan_argus import planning_schema
from argus_platform.precision import resolve_precision, timed_precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-items", type=int, default=0, help="catalogue size (default: data.synthetic.num_items)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    parser.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    parser.add_argument(
        "--timed-precision",
        action="store_true",
        help="only time the step in fp32 and bf16 as optim.precision=auto does on a CPU with AVX512-BF16 and no "
        "AMX, and print the choice",
    )


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(TrainJobConfig, __doc__.splitlines()[0], add_arguments, argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg.scaling.apply_to_process()  # as a training worker does
    if args.timed_precision:
        chosen, why = timed_precision(cfg, planning_schema(cfg, args.num_items or cfg.data.synthetic.num_items), device)
        print(f"precision: {chosen} ({why})")
        return 0
    precision, why = resolve_precision(cfg.optim.precision, device)
    cfg = replace(cfg, optim=replace(cfg.optim, precision=precision))
    print(f"precision: {precision} ({why})")
    schema = planning_schema(cfg, args.num_items or cfg.data.synthetic.num_items)
    r = measure(cfg, schema, device, steps=args.steps)
    m = cfg.model
    print(
        f"{r.device}: width {m.embedding_dim} x {m.num_layers} layers, {m.tokenization}, history {m.max_seq_len}, "
        f"batch {cfg.optim.batch_size}, {cfg.optim.precision}, checkpointing {m.activation_checkpointing}, "
        f"compiled blocks {m.compile_blocks}"
    )
    mfu = f"{r.mfu:.1%} (HFU {r.hfu:.1%})" if r.mfu is not None else "n/a (no known peak for this device)"
    mem = f", peak memory {r.peak_memory_gib:.2f} GiB" if r.peak_memory_gib is not None else ""
    print(
        f"{r.tokens_per_second:,.0f} tokens/s ({r.step_seconds * 1000:.1f} ms/step, {r.tokens_per_step:,} tokens), "
        f"{r.achieved_tflops:.2f} TFLOP/s, MFU {mfu}{mem}",
        flush=True,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(asdict(r), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
