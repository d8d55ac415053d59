#!/usr/bin/env python
"""Ablate the next-item loss, the negatives and the tokenisation on one dataset: one training run per variant, one table.

    python jobs/ablate_argus.py --set train_config=jobs/configs/ml1m.yaml \
        --set 'train_overrides=["data.path=../shared/data/raw/ml-1m/derived_ml-1m_chrono_userid_movieid.txt.gz", "optim.epochs=10"]'
    python jobs/ablate_argus.py --set 'variants=[full_softmax, corrected_logq_mixed]' --set out_dir=runs/ablation-default
"""

from __future__ import annotations

import logging
import sys

from _cli import parse_config

from argus_platform.ablation import AblationConfig, ablate, format_table
from argus_platform.configlib import ConfigError
from argus_platform.data.quarantine import TooManyBadRows
from argus_platform.data.sources import DataSourceError


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(AblationConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "torchrec", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rows = ablate(cfg)
    except (ConfigError, DataSourceError, TooManyBadRows) as exc:
        print(f"ablation error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
