#!/usr/bin/env python
"""Search training hyper-parameters with Ray Tune: every trial a Ray Train run, ASHA early stopping.

python jobs/tune_train.py                                      # embedded default data, 8 trials
python jobs/tune_train.py --set num_samples=16 --set 'train_overrides=["optim.epochs=12"]'
python jobs/train_argus.py --config runs/tune-train-<time>/best_config.yaml   # train the winner
"""

import sys

from argus_platform.cli import tune_train_main as main

if __name__ == "__main__":
    sys.exit(main())
