#!/usr/bin/env python
"""Train an ARGUS-style recommender on Ray Train with TorchRec-sharded embedding tables.

    python jobs/train_argus.py                                   # embedded synthetic default
    python jobs/train_argus.py --config jobs/configs/ml1m.yaml --set data.path=...
    ray job submit --working-dir . -- python jobs/train_argus.py --config ...
    torchrun --nproc-per-node 2 jobs/train_argus.py ...         # same loop without Ray Train (debugging)
"""

from __future__ import annotations

import logging
import sys

from _cli import parse_config

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError
from argus_platform.data.quarantine import TooManyBadRows
from argus_platform.data.sources import DataSourceError
from argus_platform.torchrun import run_torchrun, under_torchrun
from argus_platform.trainer import format_summary, train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainJobConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "torchrec", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        final = run_torchrun(cfg) if under_torchrun() else train(cfg)
    except (DataSourceError, TooManyBadRows) as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if final.get("baselines") and final.get("run_dir"):  # under torchrun: rank 0 only
        print(format_summary(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
