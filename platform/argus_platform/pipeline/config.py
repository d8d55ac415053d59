"""The pipeline job's config: its top-level keys are the pipeline's parameters (their values are the
defaults `compile` writes into the IR and what `run-local` runs with); `kfp` holds what is fixed
when the pipeline is compiled."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Literal

from argus_platform.configlib import ConfigError
from argus_platform.configlib import documented as _help

# A run name becomes runs/<run> and the names of the Kubernetes objects (<run>-train, ...):
# a DNS-1123 label short enough for KubeRay's derived names (RayCluster, pods, services).
RUN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


@dataclass
class KfpConfig:
    """Fixed at compile time."""

    component_image: str = _help(
        "image of the pipeline's own steps (Python with the kubernetes client; they only call the Kubernetes "
        "API and read the run's files)",
        "python:3.11-slim",
    )
    packages: list[str] = _help(
        "pip packages the steps install at start in component_image (none if the image has them)",
        factory=lambda: ["kubernetes==30.1.0", "PyYAML==6.0.2"],
    )
    pvc: str = _help("the shared volume's claim (k8s/base/storage.yaml), mounted at `home` in every step", "argus-data")


@dataclass
class PipelineConfig:
    backend: Literal["cluster", "local"] = _help(
        "cluster: RayJob/TrainJob/RayService through the Kubernetes API; local: the jobs in subprocesses, "
        "Serve on loopback",
        "cluster",
    )
    run: str = _help("run name: runs/<run> under home, and the prefix of the Kubernetes objects", "argus-pipeline")
    config: str = _help(
        "training config, relative to the repository (the image's /home/ray/argus)", "jobs/configs/default.yaml"
    )
    data_path: str = _help("data.path of the training config ('' = the config's own, e.g. the synthetic default)", "")
    train_overrides: list[str] = _help("extra --set KEY=VALUE for preparation and training", factory=list)
    trainer: Literal["rayjob", "trainjob"] = _help(
        "cluster: train as a KubeRay RayJob (Ray Train) or a Kubeflow Trainer TrainJob (torchrun)", "rayjob"
    )
    min_ndcg10: float = _help("gate: the run's test NDCG@10 must reach this", 0.0)
    require_above_popularity: bool = _help("gate: the run's test NDCG@10 must also beat the popularity baseline", True)
    tune_config: str = _help("weight-search config ('' = the job's defaults)", "")
    tune_overrides: list[str] = _help("extra --set KEY=VALUE for the weight search", factory=list)
    deploy: bool = _help("deploy the gated run and send the smoke request (false: stop after the weight search)", True)
    image: str = _help(
        "cluster: the training/serving image (k8s/image)", "ghcr.io/argus-platform/argus-platform:0.1.0-cpu"
    )
    namespace: str = _help("cluster: namespace of the jobs and the RayService", "argus-dev")
    service: str = _help("the RayService to create or patch (cluster); the local server's name (local)", "argus-serve")
    home: str = _help(
        "ARGUS_HOME: where runs/ lives (on the cluster: where the steps mount the volume, fixed at compile time)",
        "/mnt/argus",
    )
    serve_port: int = _help("local: the loopback port Serve listens on", 8000)
    timeout_minutes: int = _help("each job and the deployment must finish within this", 1440)
    kfp: KfpConfig = _help("fixed at compile time", factory=KfpConfig)

    def validate(self) -> None:
        if not RUN_NAME.match(self.run):
            raise ConfigError(
                f"run={self.run!r}: use lower-case letters, digits and '-', at most 40 characters, starting and "
                "ending with a letter or digit (it names runs/<run> and the Kubernetes objects)"
            )
        if not 0.0 <= self.min_ndcg10 <= 1.0:
            raise ConfigError(f"min_ndcg10={self.min_ndcg10}: NDCG@10 lies in [0, 1]")
        if self.timeout_minutes <= 0:
            raise ConfigError(f"timeout_minutes={self.timeout_minutes}: must be positive")

    def parameters(self) -> dict:
        """The pipeline's parameters (everything but `kfp`), as KFP takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kfp"}
