#!/usr/bin/env python
"""Benchmark TorchRec's overhead: one model and its batches with nn.Embedding tables, then DMP + FBGEMM, one worker.

python jobs/bench_torchrec.py --out bench_torchrec.json
python jobs/bench_torchrec.py --set data.synthetic.num_items=1000000 --set data.synthetic.num_users=20000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from argus_platform.bench_torchrec import measure, prepared_batches
from argus_platform.cli import parse_config_and_args
from argus_platform.config import TrainJobConfig
from argus_platform.data.prepare import prepare_data
from argus_platform.train_argus import model_schema
from argus_platform.train_loop import make_collators


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=30, help="steps per side (the first 3 are not timed)")
    parser.add_argument("--out", default="", help="also write the figures as JSON here")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config_and_args(TrainJobConfig, __doc__.splitlines()[0], add_arguments, argv)
    cfg.scaling.apply_to_process(threads_if_unset=1)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_data(cfg.data, Path(tmp))  # a log grouped by user needs no Ray
        schema = model_schema(prepared, cfg.model)
        collate, _ = make_collators(cfg, schema, prepared.spec, rank=0)
        batches = prepared_batches(Path(tmp), collate, cfg.optim.batch_size, args.steps)
        r = measure(cfg, schema, torch.from_numpy(prepared.item_counts), batches)
    result = {
        **asdict(r),
        "ratio_plain_over_torchrec": r.ratio,
        "items": schema.num_items,
        "batch_size": cfg.optim.batch_size,
        "threads": torch.get_num_threads(),
    }
    print(
        f"plain nn.Embedding + Adagrad: {r.plain_ms:.1f} ms/step; TorchRec DMP + FBGEMM fused Adagrad: "
        f"{r.torchrec_ms:.1f} ms/step; plain / TorchRec = {r.ratio:.2f} ({r.steps} timed steps, "
        f"{schema.num_items:,} items; first loss {r.first_loss_plain:.4f} vs {r.first_loss_torchrec:.4f}, "
        f"last {r.loss_plain:.4f} vs {r.loss_torchrec:.4f})",
        flush=True,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
