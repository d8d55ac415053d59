#!/usr/bin/env python
"""Train an ARGUS-style recommender on Ray Train with TorchRec-sharded embedding tables.

python jobs/train_argus.py                                   # embedded synthetic default
python jobs/train_argus.py --config jobs/configs/ml1m.yaml --set data.path=...
ray job submit --working-dir . -- python jobs/train_argus.py --config ...
torchrun --nproc-per-node 2 jobs/train_argus.py ...         # same loop without Ray Train (debugging)
"""

import sys

from argus_platform.cli import train_main as main

if __name__ == "__main__":
    sys.exit(main())
