#!/usr/bin/env python
"""Search the ranking weights w of score = Σ_a w_a·P(a) with Ray Tune, for a training run.

    python jobs/tune_weights.py                                    # newest run under runs/ → <run>/tune/
    python jobs/tune_weights.py --config jobs/configs/tune_utility.yaml --set run=runs/<run>
    ray job submit --working-dir . -- python jobs/tune_weights.py --set run=/shared/runs/<run>
"""

from __future__ import annotations

import logging
import sys

from _cli import parse_config

from argus_models.checkpoint import CheckpointError
from argus_platform.tuning.config import TuneWeightsConfig
from argus_platform.tuning.weights_job import format_report, tune_weights


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TuneWeightsConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = tune_weights(cfg)
    except (CheckpointError, ValueError) as exc:
        print(f"tune error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
