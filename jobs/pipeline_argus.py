#!/usr/bin/env python
"""The Kubeflow Pipelines v2 pipeline: prepare → train → evaluation gate → tune weights → deploy → smoke.

python jobs/pipeline_argus.py compile --out argus-pipeline.yaml      # the IR to upload to KFP
python jobs/pipeline_argus.py run-local                              # the same pipeline on kfp.local
python jobs/pipeline_argus.py run-local --set min_ndcg10=0.1 --set run=my-run

kfp needs protobuf 6 and the training stack protobuf 7, so the pipeline SDK has its own environment
(`make pipeline-env` → .venv-kfp); run from another Python, this script re-runs itself there.
"""

import os
import sys
from pathlib import Path

KFP_PYTHON = Path(__file__).resolve().parents[1] / ".venv-kfp" / "bin" / "python"

if __name__ == "__main__":
    try:
        import kfp  # noqa: F401
    except ImportError:
        if not KFP_PYTHON.is_file():
            sys.exit(f"kfp is not installed in {sys.executable}: run `make pipeline-env` (creates {KFP_PYTHON})")
        os.execv(str(KFP_PYTHON), [str(KFP_PYTHON), *sys.argv])
    from argus_platform.pipeline.pipeline_argus import main

    sys.exit(main())
