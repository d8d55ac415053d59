#!/usr/bin/env python
"""Benchmark the synthetic generator: events/s and peak memory while streaming to Parquet.

python jobs/bench_synthetic.py --set events=10000000 --set out=/tmp/bench_synthetic.json
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.parquet as pq

from argus_platform.cli import parse_config
from argus_platform.configlib import documented
from argus_platform.data.config import SyntheticConfig
from argus_platform.data.synthetic import generate


@dataclass
class SyntheticBenchConfig:
    events: int = documented("target number of events", 10_000_000)
    items: int = documented("catalogue size", 100_000)
    events_per_user: int = documented("mean events per user", 50)
    impressions_per_event: int = documented(
        "also log this many shown items per event (impressions.parquet; 0: events only)", 0
    )
    out: str = documented("also write the figures here as JSON ('' = print only)", "")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(SyntheticBenchConfig, __doc__.splitlines()[0], argv)
    cfg = replace(
        SyntheticConfig(),
        num_users=args.events // args.events_per_user,
        num_items=args.items,
        events_per_user=args.events_per_user,
        impressions_per_event=args.impressions_per_event,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        path = generate(cfg, tmp)
        seconds = time.time() - start
        meta = pq.ParquetFile(path).metadata
        result = {
            "events": meta.num_rows,
            "users": cfg.num_users,
            "items": cfg.num_items,
            "seconds": round(seconds, 1),
            "events_per_second": round(meta.num_rows / seconds),
            "parquet_mb": round(path.stat().st_size / 2**20, 1),
            "row_groups": meta.num_row_groups,
            "impressions": pq.ParquetFile(Path(tmp) / "impressions.parquet").metadata.num_rows
            if cfg.impressions_per_event
            else 0,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
