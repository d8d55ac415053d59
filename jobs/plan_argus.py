#!/usr/bin/env python
"""Plan a training config for a GPU cluster, without GPUs: TorchRec's sharding plan per table and memory per device.

python jobs/plan_argus.py --config jobs/configs/argus-1b.yaml --world-size 64 --gpus-per-node 8 --gpu-memory-gb 80
python jobs/plan_argus.py --config jobs/configs/argus-300m.yaml --world-size 8 --num-items 100000000
"""

import sys

from argus_platform.cli import plan_main as main

if __name__ == "__main__":
    sys.exit(main())
