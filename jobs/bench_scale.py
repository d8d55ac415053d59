#!/usr/bin/env python
"""Benchmark the whole training job (generate, prepare, one epoch, full-catalogue evaluation) as data grows.

python jobs/bench_scale.py            # events 1M/3M/10M x 1M items, items 10k/100k/1M x 3M events
python jobs/bench_scale.py --set 'events=[1000000]' --set 'items=[]' --set out_dir=runs/bench-scale-1m
python jobs/bench_scale.py --set 'train_overrides=[eval.max_users=25000]'   # validation on a user sample
"""

from __future__ import annotations

import logging
import sys

from argus_platform.bench_scale import ScaleBenchConfig, bench, format_tables
from argus_platform.cli import parse_config
from argus_platform.configlib import ConfigError


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ScaleBenchConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = bench(cfg)
    except ConfigError as exc:
        print(f"bench_scale error: {exc}", file=sys.stderr)
        return 2
    print(format_tables(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
