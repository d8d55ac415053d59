"""The Kubeflow Pipelines v2 pipeline (`jobs/pipeline_argus.py`): prepare → train → gate → tune →
deploy → smoke request, each step on a local backend (the jobs' own CLIs in subprocesses, Serve on
loopback) or a cluster backend (RayJob / TrainJob / RayService objects rendered from k8s/).

Only `pipeline.py` and `cli.py` import kfp; the steps need PyYAML and, for the cluster backend, the
`kubernetes` client, so they run in a plain Python image as KFP lightweight components.
"""
