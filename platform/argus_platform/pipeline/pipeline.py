"""The Kubeflow Pipelines v2 pipeline: prepare → train → gate → tune → deploy → smoke.

Each step is a lightweight Python component calling `steps.py`. The components carry (KFP's
`embedded_artifact_path`) this package and the k8s/ manifests the cluster objects are rendered from,
so a step needs only Python with PyYAML and the kubernetes client (`kfp.component_image`); the work
itself runs as a RayJob/TrainJob/RayService on the cluster, or as the jobs' CLIs locally.

No `from __future__ import annotations` here: KFP reads the components' annotations as objects.
"""

import shutil
import tempfile
from pathlib import Path

from kfp import dsl, kubernetes

from argus_platform.pipeline.config import KfpConfig, PipelineConfig
from argus_platform.pipeline.objects import MANIFESTS, ROOT

PIPELINE_NAME = "argus-platform"
D = PipelineConfig()  # the parameters' defaults in the function below; compile writes the config's
STEP_CPU, STEP_MEMORY = "1", "1Gi"  # a step only polls the API and reads the run's files


def _place(backend, home, namespace, image, timeout_minutes, assets):
    """Shared start of every component: the carried package on sys.path, the step's Place."""
    import sys

    sys.path.insert(0, f"{assets.path}/platform")
    from argus_platform.pipeline import steps

    return steps, steps.Place(backend, home, namespace, image, timeout_minutes)


def prepare_data(
    backend: str,
    home: str,
    namespace: str,
    image: str,
    timeout_minutes: int,
    run: str,
    config: str,
    data_path: str,
    train_overrides: list,
    assets: dsl.EmbeddedInput[dsl.Dataset],
    data: dsl.Output[dsl.Metrics],
):
    """Validate and prepare the events into runs/<run>; rows, quarantine and catalogue as Metrics."""
    steps, place = _place(backend, home, namespace, image, timeout_minutes, assets)
    summary = steps.prepare(place, run, config, data_path, train_overrides)
    v = summary["validation"]
    for key, value in {
        "rows": v["rows"],
        "clean_rows": v["clean_rows"],
        "quarantined_rows": v["quarantined_rows"],
        "users": summary["num_users"],
        "items": summary["num_items"],
        "users_too_short": summary["users_too_short"],
    }.items():
        data.log_metric(key, value)


def train_model(
    backend: str,
    home: str,
    namespace: str,
    image: str,
    timeout_minutes: int,
    run: str,
    config: str,
    data_path: str,
    train_overrides: list,
    trainer: str,
    assets: dsl.EmbeddedInput[dsl.Dataset],
) -> str:
    """Train on runs/<run> (RayJob or TrainJob on the cluster); the checkpoint it chose."""
    steps, place = _place(backend, home, namespace, image, timeout_minutes, assets)
    metrics = steps.train(place, run, config, data_path, train_overrides, trainer)
    return str(metrics.get("checkpoint") or "")


def evaluation_gate(
    backend: str,
    home: str,
    run: str,
    min_ndcg10: float,
    require_above_popularity: bool,
    assets: dsl.EmbeddedInput[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
):
    """Read runs/<run>/metrics.json; fail the pipeline when test NDCG@10 misses a bar."""
    import json

    steps, place = _place(backend, home, "", "", 1, assets)
    run_metrics = json.loads((place.run_dir(run) / "metrics.json").read_text())
    test = run_metrics["test"]
    for key in ("ndcg@10", "hr@10", "ndcg@100", "hr@100", "mrr", "coverage@10"):
        metrics.log_metric(f"test/{key}", test[key])
    metrics.log_metric("popularity/test/ndcg@10", run_metrics["baselines"]["popularity"]["test"]["ndcg@10"])
    metrics.log_metric("validation/ndcg@10", run_metrics["validation"]["ndcg@10"])
    figures = steps.gate(run_metrics, min_ndcg10, require_above_popularity)
    print(f"[pipeline] gate passed: {figures}", flush=True)


def tune_weights(
    backend: str,
    home: str,
    namespace: str,
    image: str,
    timeout_minutes: int,
    run: str,
    tune_config: str,
    tune_overrides: list,
    assets: dsl.EmbeddedInput[dsl.Dataset],
    weights: dsl.Output[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
    results: dsl.Output[dsl.Markdown],
) -> str:
    """Search the ranking weights; the chosen weights as Metrics, Tune's plot and table as HTML
    and Markdown; returns the weights file."""
    from pathlib import Path

    steps, place = _place(backend, home, namespace, image, timeout_minutes, assets)
    tuned = steps.tune(place, run, tune_config, tune_overrides)
    for action, w in tuned["weights"]["tuned"].items():
        weights.log_metric(f"w/{action}", w)
    for objective, gains in (tuned.get("test_improvement") or {}).items():
        for versus, gain in gains.items():  # vs_default, vs_uniform: tuned − baseline on test
            weights.log_metric(f"test/{objective}/{versus}", gain)
    out = Path(tuned["out_dir"])
    Path(report.path).write_text(steps.tune_html(out))
    Path(results.path).write_text((out / "results.md").read_text())
    return str(out / "weights.yaml")


def deploy_service(
    backend: str,
    home: str,
    namespace: str,
    image: str,
    timeout_minutes: int,
    run: str,
    service: str,
    serve_port: int,
    weights_file: str,
    assets: dsl.EmbeddedInput[dsl.Dataset],
) -> str:
    """Serve runs/<run> with `weights_file`: patch or create the RayService, or replace the local
    server; returns the endpoint once Serve reports the application RUNNING."""
    steps, place = _place(backend, home, namespace, image, timeout_minutes, assets)
    print(f"[pipeline] deploying runs/{run} with {weights_file}", flush=True)
    deployed = steps.deploy(place, run, service, serve_port)
    print(f"[pipeline] {deployed['url']}: application {deployed['status']}", flush=True)
    return deployed["url"]


def smoke_request(
    backend: str,
    home: str,
    run: str,
    url: str,
    assets: dsl.EmbeddedInput[dsl.Dataset],
    smoke: dsl.Output[dsl.Metrics],
):
    """One recommendation from the new endpoint, for one of the run's users."""
    steps, place = _place(backend, home, "", "", 1, assets)
    answer = steps.smoke(url, place, run)
    print(f"[pipeline] smoke: {answer}", flush=True)
    smoke.log_metric("latency_ms", answer["latency_ms"])
    smoke.log_metric("items", len(answer["items"]))


STEPS = [prepare_data, train_model, evaluation_gate, tune_weights, deploy_service, smoke_request]


def stage_assets(dest: Path) -> Path:
    """What the components carry: this package (with argus_platform/__init__.py) and the manifests,
    at their paths in the repository, so `objects.ROOT` finds the manifests in either place."""
    package = Path(__file__).resolve().parent
    shutil.copytree(
        package, dest / "platform" / "argus_platform" / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(package.parent / "__init__.py", dest / "platform" / "argus_platform" / "__init__.py")
    for relative in MANIFESTS.values():
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, dest / relative)
    return dest


def components(kfp_cfg: KfpConfig) -> dict:
    """The steps as KFP components on `kfp_cfg.component_image`, each carrying the staged assets."""
    with tempfile.TemporaryDirectory(prefix="argus-pipeline-assets-") as tmp:
        assets = stage_assets(Path(tmp))
        return {
            fn.__name__: dsl.component(
                fn,
                base_image=kfp_cfg.component_image,
                packages_to_install=list(kfp_cfg.packages),
                additional_funcs=[_place],
                embedded_artifact_path=str(assets),
            )
            for fn in STEPS
        }


def _on_cluster(task, kfp_cfg: KfpConfig, home: str):
    """The shared volume at `home` (the cluster's ARGUS_HOME), small requests, no caching: every
    step acts on the cluster or reads files that change between runs."""
    kubernetes.mount_pvc(task, pvc_name=kfp_cfg.pvc, mount_path=home)
    task.set_cpu_request("100m").set_cpu_limit(STEP_CPU).set_memory_request("256Mi").set_memory_limit(STEP_MEMORY)
    task.set_caching_options(False)
    return task


def build(kfp_cfg: KfpConfig = KfpConfig(), mount_home: str = D.home):
    """The pipeline function (what `compile` compiles and `run-local` calls)."""
    ops = components(kfp_cfg)

    def step(name: str, **kwargs):
        return _on_cluster(ops[name](**kwargs), kfp_cfg, mount_home).set_display_name(name.replace("_", "-"))

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Argus Platform: prepare → train (RayJob or TrainJob) → evaluation gate → weight search "
        "(Ray Tune) → deploy (RayService) → smoke request",
    )
    def argus_pipeline(
        backend: str = D.backend,
        run: str = D.run,
        config: str = D.config,
        data_path: str = D.data_path,
        train_overrides: list = D.train_overrides,
        trainer: str = D.trainer,
        min_ndcg10: float = D.min_ndcg10,
        require_above_popularity: bool = D.require_above_popularity,
        tune_config: str = D.tune_config,
        tune_overrides: list = D.tune_overrides,
        deploy: bool = D.deploy,
        image: str = D.image,
        namespace: str = D.namespace,
        service: str = D.service,
        home: str = D.home,
        serve_port: int = D.serve_port,
        timeout_minutes: int = D.timeout_minutes,
    ):
        where = {"backend": backend, "home": home, "namespace": namespace, "image": image}
        where["timeout_minutes"] = timeout_minutes
        data = {"run": run, "config": config, "data_path": data_path, "train_overrides": train_overrides}
        prepare = step("prepare_data", **where, **data)
        train = step("train_model", **where, **data, trainer=trainer).after(prepare)
        gate = step(
            "evaluation_gate",
            backend=backend,
            home=home,
            run=run,
            min_ndcg10=min_ndcg10,
            require_above_popularity=require_above_popularity,
        ).after(train)
        tune = step("tune_weights", **where, run=run, tune_config=tune_config, tune_overrides=tune_overrides)
        tune.after(gate)
        with dsl.If(deploy == True, name="deploy-enabled"):  # noqa: E712 (a KFP condition, not Python's)
            served = step(
                "deploy_service",
                **where,
                run=run,
                service=service,
                serve_port=serve_port,
                weights_file=tune.outputs["Output"],
            )
            step("smoke_request", backend=backend, home=home, run=run, url=served.output)

    return argus_pipeline
