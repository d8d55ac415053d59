"""The pipeline's Kubernetes objects, rendered from the manifests k8s/ ships (one copy: the pipeline
embeds these files when it is compiled) and the jobs' command lines, shared by both backends.

    rayjob("train", ...)      k8s/base/rayjob-train.yaml, entrypoint = the training command
    rayjob("prepare", ...)    the same cluster, entrypoint = the training command with --prepare-only
    rayjob("tune", ...)       k8s/base/rayjob-tune-weights.yaml, entrypoint = the weight search
    trainjob(...)             k8s/kubeflow/trainer/trainjob.yaml, args = the training command's
    rayservice(...)           k8s/base/rayservice.yaml, serving runs/<run> with its tuned weights
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]  # the repository (or the copy a compiled step carries)
MANIFESTS = {
    "rayjob-train": "k8s/base/rayjob-train.yaml",
    "rayjob-tune": "k8s/base/rayjob-tune-weights.yaml",
    "rayservice": "k8s/base/rayservice.yaml",
    "trainjob": "k8s/kubeflow/trainer/trainjob.yaml",
}
IMAGE_REPO = "/home/ray/argus"  # where the image holds the repository (k8s/image/Dockerfile: WORKDIR)
PLACEHOLDER_IMAGE = "argus-platform"  # the manifests' image name, set by kustomize or here
LABELS = {"app.kubernetes.io/name": "argus-platform", "app.kubernetes.io/part-of": "argus-platform"}
RUN_LABEL = "argus-platform/run"
APP = "argus"  # the Serve application's name in the serve configs


def manifest(key: str) -> dict:
    return yaml.safe_load((ROOT / MANIFESTS[key]).read_text())


def run_dir(run: str) -> str:
    """The run directory, relative to ARGUS_HOME (every job resolves it there)."""
    return f"runs/{run}"


def weights_file(run: str) -> str:
    return f"{run_dir(run)}/tune/weights.yaml"


def _repo_path(path: str, repo: str) -> str:
    return path if path.startswith("/") else f"{repo}/{path}"


def _sets(overrides: list[str]) -> list[str]:
    return [arg for kv in overrides for arg in ("--set", kv)]


def train_args(
    run: str, config: str, data_path: str, overrides: list[str], repo: str, prepare_only: bool = False
) -> list[str]:
    """jobs/train_argus.py's arguments (after the script): the same for preparation and training, so
    training reuses the prepared data (it refuses data prepared under another data config)."""
    args = ["--config", _repo_path(config, repo), "--set", f"run.dir={run_dir(run)}"]
    if data_path:
        args += ["--set", f"data.path={data_path}"]
    args += _sets(overrides)
    return args + (["--prepare-only"] if prepare_only else [])


def tune_args(run: str, tune_config: str, overrides: list[str], repo: str) -> list[str]:
    args = ["--config", _repo_path(tune_config, repo)] if tune_config else []
    return args + ["--set", f"run={run_dir(run)}"] + _sets(overrides)


def script(job: str, repo: str) -> str:
    return f"{repo}/jobs/{job}.py"


def _metadata(obj: dict, name: str, namespace: str, run: str) -> None:
    meta = obj["metadata"]
    meta["name"] = name
    meta["namespace"] = namespace
    meta["labels"] = {**meta.get("labels", {}), **LABELS, RUN_LABEL: run}


def _set_images(node, image: str) -> None:
    """Every container's `image: argus-platform` → `image` (what the overlays' `images:` do)."""
    if isinstance(node, dict):
        if node.get("image") == PLACEHOLDER_IMAGE:
            node["image"] = image
        for value in node.values():
            _set_images(value, image)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, image)


def rayjob(step: str, run: str, namespace: str, image: str, args: list[str]) -> dict:
    """A RayJob of the shipped manifests running `args`: step "prepare" and "train" on the training
    job's cluster (jobs/train_argus.py), "tune" on the weight search's (jobs/tune_weights.py)."""
    obj = copy.deepcopy(manifest("rayjob-tune" if step == "tune" else "rayjob-train"))
    job = "tune_weights" if step == "tune" else "train_argus"
    obj["spec"]["entrypoint"] = shlex.join(["python", script(job, IMAGE_REPO), *args])
    _metadata(obj, f"{run}-{step}", namespace, run)
    _set_images(obj, image)
    return obj


def trainjob(run: str, namespace: str, image: str, args: list[str]) -> dict:
    """The shipped TrainJob (torchrun on the TrainingRuntime argus-torch) running `args`."""
    obj = copy.deepcopy(manifest("trainjob"))
    obj["spec"]["trainer"]["args"] = list(args)
    obj["spec"]["trainer"]["image"] = image
    _metadata(obj, f"{run}-train", namespace, run)
    return obj


def serve_config_for(serve_config: str, run: str) -> str:
    """A serveConfigV2 (YAML text) with the application serving runs/<run> and its tuned weights;
    everything else (autoscaling, limits, options) is kept as it was."""
    cfg = yaml.safe_load(serve_config)
    apps = {a["name"]: a for a in cfg.get("applications", [])}
    if APP not in apps:
        raise ValueError(f"the serve config has no application {APP!r} (it has {sorted(apps)})")
    app = apps[APP]
    app["args"] = {**app.get("args", {}), "checkpoint": run_dir(run), "wait_s": 0}
    ranker = next((d for d in app.get("deployments", []) if d["name"] == "Ranker"), None)
    if ranker is None:
        raise ValueError(f"the serve config's application {APP!r} has no Ranker deployment")
    ranker["user_config"] = {**ranker.get("user_config", {}), "weights_file": weights_file(run), "weights": {}}
    return yaml.safe_dump(cfg, sort_keys=False)


def rayservice(name: str, run: str, namespace: str, image: str) -> dict:
    """The shipped RayService, named `name`, serving runs/<run>."""
    obj = copy.deepcopy(manifest("rayservice"))
    obj["spec"]["serveConfigV2"] = serve_config_for(obj["spec"]["serveConfigV2"], run)
    _metadata(obj, name, namespace, run)
    _set_images(obj, image)
    return obj


def service_url(name: str, namespace: str, port: int = 8000) -> str:
    """The Serve endpoint KubeRay puts in front of a RayService (<name>-serve-svc)."""
    return f"http://{name}-serve-svc.{namespace}.svc.cluster.local:{port}"
