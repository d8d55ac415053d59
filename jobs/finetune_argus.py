#!/usr/bin/env python
"""Fine-tune a pre-trained ARGUS run on impressions: two-tower pairwise (BPR) or a candidate-isolation ranker.

python jobs/finetune_argus.py                                  # newest run under runs/, pairwise
python jobs/finetune_argus.py --set pretrained=runs/argus-... --set mode=ranker
ray job submit --working-dir . -- python jobs/finetune_argus.py --set pretrained=/mnt/argus/runs/argus-train
"""

import sys

from argus_platform.cli import finetune_main as main

if __name__ == "__main__":
    sys.exit(main())
