#!/usr/bin/env python
"""Search the ranking weights w of score = Σ_a w_a·P(a) with Ray Tune, for a training run.

python jobs/tune_weights.py                                    # newest run under runs/ → <run>/tune/
python jobs/tune_weights.py --config jobs/configs/tune_utility.yaml --set run=runs/<run>
ray job submit --working-dir . -- python jobs/tune_weights.py --set run=/shared/runs/<run>
"""

import sys

from argus_platform.cli import tune_weights_main as main

if __name__ == "__main__":
    sys.exit(main())
