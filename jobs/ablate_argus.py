#!/usr/bin/env python
"""Ablate the next-item loss, the negatives and the tokenisation on one dataset: a run per variant, one table.

    python jobs/ablate_argus.py --set train_config=jobs/configs/ml1m.yaml \
        --set 'train_overrides=["data.path=../shared/data/raw/ml-1m/derived_ml-1m_chrono_userid_movieid.txt.gz",
                                "optim.epochs=10"]'
    python jobs/ablate_argus.py --set 'variants=[full_softmax, corrected_logq_mixed]' \
        --set out_dir=runs/ablation-default
"""

import sys

from argus_platform.cli import ablate_main as main

if __name__ == "__main__":
    sys.exit(main())
