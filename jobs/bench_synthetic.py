#!/usr/bin/env python
"""Benchmark the synthetic generator: events/s and peak memory while streaming to Parquet.

    python jobs/bench_synthetic.py --events 10000000 --out /tmp/bench_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("platform", "models")]

import pyarrow.parquet as pq  # noqa: E402

from argus_platform.config import SyntheticConfig  # noqa: E402
from argus_platform.data.synthetic import generate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="target number of events")
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--events-per-user", type=int, default=50)
    parser.add_argument("--impressions-per-event", type=int, default=0,
                        help="also log this many shown items per event (impressions.parquet; default 0: events only)")
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    cfg = replace(SyntheticConfig(), num_users=args.events // args.events_per_user, num_items=args.items,
                  events_per_user=args.events_per_user, impressions_per_event=args.impressions_per_event)
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
            "impressions": pq.ParquetFile(Path(tmp) / "impressions.parquet").metadata.num_rows if cfg.impressions_per_event else 0,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
