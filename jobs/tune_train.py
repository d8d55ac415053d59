#!/usr/bin/env python
"""Search training hyper-parameters with Ray Tune: every trial a Ray Train run, ASHA early stopping.

    python jobs/tune_train.py                                      # embedded default data, 8 trials
    python jobs/tune_train.py --set num_samples=16 --set 'train_overrides=["optim.epochs=12"]'
    python jobs/train_argus.py --config runs/tune-train-<time>/best_config.yaml   # train the winner
"""

from __future__ import annotations

import json
import logging
import sys

from _cli import parse_config

from argus_platform.configlib import ConfigError
from argus_platform.tuning.train_search import TuneTrainConfig, tune_train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TuneTrainConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = tune_train(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    print(f"[tune-train] best config: {report['out_dir']}/best_config.yaml")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
