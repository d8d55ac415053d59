#!/usr/bin/env python
"""Fine-tune a pre-trained ARGUS run on impressions: two-tower pairwise (BPR) or a candidate-isolation ranker.

    python jobs/finetune_argus.py                                  # newest run under runs/, pairwise
    python jobs/finetune_argus.py --set pretrained=runs/argus-... --set mode=ranker
    ray job submit --working-dir . -- python jobs/finetune_argus.py --set pretrained=/mnt/argus/runs/argus-train
"""

from __future__ import annotations

import logging
import sys

from _cli import parse_config

from argus_models.checkpoint import CheckpointError
from argus_platform.finetune.config import FinetuneConfig
from argus_platform.finetune.job import finetune, format_finetune


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(FinetuneConfig, __doc__.splitlines()[0], argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        final = finetune(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"finetune error: {exc}", file=sys.stderr)
        return 2
    print(format_finetune(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
