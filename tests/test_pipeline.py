"""The Kubeflow pipeline (jobs/pipeline_argus.py): its cluster objects are k8s/'s manifests (validated
against the KubeRay and Trainer CRDs, entrypoints the jobs accept), its status readers and gate judge
what the CRDs define, the compiled IR has the DAG, parameters and condition it should, and the very
same pipeline runs end to end on kfp.local: a gated run is deployed and answers, an impossible
threshold fails the pipeline at the gate."""

from __future__ import annotations

import base64
import copy
import gzip
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_k8s import _missing, _repo_path, crd_errors, render, schema_errors, schema_validator

from argus_platform.cli import parse_config_and_args, train_flags
from argus_platform.config import TrainJobConfig
from argus_platform.pipeline import local, objects
from argus_platform.pipeline.config import PipelineConfig
from argus_platform.pipeline.kube import StepFailed, job_outcome, service_state
from argus_platform.pipeline.steps import GateFailed, gate
from argus_platform.tuning.config import TuneWeightsConfig

KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"
JOB = ROOT / "jobs" / "pipeline_argus.py"
NS, IMAGE = "argus-dev", "ghcr.io/argus-platform/argus-platform:0.1.0-cpu"
ARGS = objects.train_args("r1", "jobs/configs/default.yaml", "", ["optim.epochs=2"], objects.IMAGE_REPO)


def trainjob_errors(doc: dict) -> list[str]:
    return schema_errors(schema_validator("trainer.kubeflow.org_trainjobs.yaml.gz", "v1alpha1"), doc)


def images(node) -> set[str]:
    if isinstance(node, dict):
        return ({node["image"]} if isinstance(node.get("image"), str) else set()).union(*map(images, node.values()))
    return set().union(*map(images, node)) if isinstance(node, list) else set()


def cluster_objects() -> dict[str, dict]:
    prepare = objects.train_args("r1", "jobs/configs/default.yaml", "", ["optim.epochs=2"], objects.IMAGE_REPO, True)
    tune = objects.tune_args("r1", "", ["search.num_samples=8"], objects.IMAGE_REPO)
    return {
        "prepare": objects.rayjob("prepare", "r1", NS, IMAGE, prepare),
        "train": objects.rayjob("train", "r1", NS, IMAGE, ARGS),
        "tune": objects.rayjob("tune", "r1", NS, IMAGE, tune),
        "trainjob": objects.trainjob("r1", NS, IMAGE, ARGS),
        "service": objects.rayservice("argus-serve", "r1", NS, IMAGE),
    }


# -- the cluster backend's objects --------------------------------------------------------------------


def test_the_cluster_objects_validate_against_the_kuberay_and_trainer_crds():
    for step, obj in cluster_objects().items():
        found = trainjob_errors(obj) if obj["kind"] == "TrainJob" else crd_errors(obj)
        assert found == [], step
        assert obj["metadata"]["namespace"] == NS and obj["metadata"]["labels"][objects.RUN_LABEL] == "r1"
        assert images(obj) == {IMAGE}, step
    names = [o["metadata"]["name"] for o in cluster_objects().values()]
    assert names == ["r1-prepare", "r1-train", "r1-tune", "r1-train", "argus-serve"]


@pytest.mark.integration  # kubectl kustomize
def test_the_cluster_objects_are_the_shipped_manifests_with_the_runs_command():
    """One copy: what the pipeline creates is k8s/base's object, only named, labelled, placed and
    given the step's command (and, for the service, the run to serve)."""
    shipped = {d["metadata"]["name"]: d for d in render("base")}
    ph = objects.PLACEHOLDER_IMAGE
    args = objects.train_args("r1", "jobs/configs/default.yaml", "", [], objects.IMAGE_REPO)
    pairs = [
        (objects.rayjob("train", "r1", NS, ph, args), shipped["argus-train"], ("spec", "entrypoint")),
        (
            objects.rayjob("tune", "r1", NS, ph, ["--set", "run=runs/r1"]),
            shipped["argus-tune-weights"],
            ("spec", "entrypoint"),
        ),
        (objects.rayservice("argus-serve", "r1", NS, ph), shipped["argus-serve"], ("spec", "serveConfigV2")),
    ]
    for made, base, (section, key) in pairs:
        made, base = copy.deepcopy(made), copy.deepcopy(base)
        assert set(base["metadata"]["labels"].items()) <= set(made["metadata"]["labels"].items())
        for doc in (made, base):
            doc["metadata"] = {}
            doc[section].pop(key)
        assert made == base


def test_the_jobs_command_lines_accept_every_step_s_arguments():
    """Entrypoints and TrainJob args parse with the jobs' own CLI (an unknown key exits 2)."""
    found = cluster_objects()
    for step in ("prepare", "train", "tune"):
        python, script, *args = shlex.split(found[step]["spec"]["entrypoint"])
        assert python == "python" and _repo_path(script).is_file(), step
        args = [str(_repo_path(a)) if a.startswith(objects.IMAGE_REPO) else a for a in args]
        if step == "tune":
            cfg, _ = parse_config_and_args(TuneWeightsConfig, "tune", None, args)
            assert cfg.run == "runs/r1" and cfg.search.num_samples == 8
        else:
            cfg, flags = parse_config_and_args(TrainJobConfig, "train", train_flags, args)
            assert cfg.run.dir == "runs/r1" and cfg.optim.epochs == 2 and flags.prepare_only == (step == "prepare")
    trainer = found["trainjob"]["spec"]["trainer"]
    assert trainer["command"][0] == "torchrun" and _repo_path(trainer["command"][1]).is_file()
    args = [str(_repo_path(a)) if a.startswith(objects.IMAGE_REPO) else a for a in trainer["args"]]
    cfg, flags = parse_config_and_args(TrainJobConfig, "train", train_flags, args)
    assert cfg.run.dir == "runs/r1" and not flags.prepare_only
    with_data = objects.train_args("r1", "/data/cfg.yaml", "/mnt/argus/data/log.parquet", [], objects.IMAGE_REPO)
    assert with_data[:2] == ["--config", "/data/cfg.yaml"] and "data.path=/mnt/argus/data/log.parquet" in with_data


def test_the_service_serves_the_run_with_its_tuned_weights_and_keeps_the_clusters_settings():
    current = objects.rayservice("argus-serve", "old-run", NS, IMAGE)["spec"]["serveConfigV2"]
    tuned = yaml.safe_load(current)
    tuned["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 3  # set on the cluster
    new = yaml.safe_load(objects.serve_config_for(yaml.safe_dump(tuned), "r2"))
    (app,) = new["applications"]
    assert app["args"]["checkpoint"] == "runs/r2" and app["args"]["wait_s"] == 0
    ranker = next(d for d in app["deployments"] if d["name"] == "Ranker")
    assert ranker["user_config"]["weights_file"] == "runs/r2/tune/weights.yaml"
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    with pytest.raises(ValueError, match="no application 'argus'"):
        objects.serve_config_for("applications: [{name: other}]", "r2")


# -- reading the objects' status ----------------------------------------------------------------------


def _with_status(obj: dict, status: dict) -> dict:
    """`obj` with a status that the CRD's (closed) schema accepts, so the shapes below are real ones."""
    out = copy.deepcopy(obj) | {"status": status}
    errors = trainjob_errors(out) if out["kind"] == "TrainJob" else crd_errors(out)
    assert errors == [], errors
    return out


def test_job_outcomes_from_rayjob_and_trainjob_status():
    job = cluster_objects()["train"]
    assert job_outcome(_with_status(job, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})) is None
    assert job_outcome(_with_status(job, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})).ok
    failed = job_outcome(
        _with_status(job, {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "exit code 2"})
    )
    assert not failed.ok and "FAILED" in failed.reason and "exit code 2" in failed.reason
    deadline = job_outcome(
        _with_status(job, {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "after 86400s"})
    )
    assert not deadline.ok and "DeadlineExceeded" in deadline.reason
    tj = cluster_objects()["trainjob"]
    now = "2026-12-04T00:00:00Z"

    def cond(kind: str, reason: str, message: str) -> dict:
        return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now}

    assert job_outcome(_with_status(tj, {"conditions": []})) is None
    assert job_outcome(_with_status(tj, {"conditions": [cond("Complete", "JobsCompleted", "done")]})).ok
    oom = job_outcome(_with_status(tj, {"conditions": [cond("Failed", "JobsFailed", "node-0 OOMKilled")]}))
    assert not oom.ok and "OOMKilled" in oom.reason


def test_the_service_is_ready_once_its_new_generation_runs():
    svc = cluster_objects()["service"]

    def status(observed: int, app: str, message: str = "") -> dict:
        apps = {objects.APP: {"status": app, "message": message}}
        return _with_status(svc, {"observedGeneration": observed, "activeServiceStatus": {"applicationStatuses": apps}})

    assert not service_state(status(1, "RUNNING"), 2)[0], "the old generation's RUNNING is not the new one's"
    assert not service_state(status(2, "DEPLOYING"), 2)[0]
    assert service_state(status(2, "RUNNING"), 2)[0]
    with pytest.raises(StepFailed, match="could not deploy 'argus': no checkpoint"):
        service_state(status(2, "DEPLOY_FAILED", "no checkpoint"), 2)


def test_the_gate_passes_a_good_run_and_names_each_missed_bar():
    metrics = {
        "run_dir": "/mnt/argus/runs/r1",
        "test": {"ndcg@10": 0.21, "hr@10": 0.35},
        "validation": {"ndcg@10": 0.22},
        "baselines": {"popularity": {"test": {"ndcg@10": 0.10}}},
        "best_epoch": 9,
        "epochs_trained": 12,
        "train_seconds": 60.0,
    }
    assert gate(metrics, 0.2, True)["test_ndcg10"] == 0.21
    with pytest.raises(GateFailed, match=r"0\.2100 is below min_ndcg10=0\.3000"):
        gate(metrics, 0.3, True)
    weak = copy.deepcopy(metrics)
    weak["baselines"]["popularity"]["test"]["ndcg@10"] = 0.21
    with pytest.raises(GateFailed, match="not above the popularity baseline's 0.2100"):
        gate(weak, 0.0, True)
    assert gate(weak, 0.0, False)["popularity_test_ndcg10"] == 0.21


# -- the local backend's jobs ---------------------------------------------------------------------------


@pytest.fixture
def local_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("ARGUS_REPO", str(ROOT))
    monkeypatch.setenv("ARGUS_PYTHON", sys.executable)
    return tmp_path


@pytest.mark.integration  # subprocesses
def test_a_failing_local_job_stops_the_step_with_its_command_and_its_error(local_stack):
    with pytest.raises(StepFailed) as failed:
        local.run_job("train_argus", ["--set", "optim.epochs=many"], str(local_stack), 60.0)
    message = str(failed.value)
    assert "train_argus exited with code 2" in message and "jobs/train_argus.py --set optim.epochs=many" in message
    assert "config error: optim.epochs: expected an integer, got 'many'" in message


@pytest.mark.integration
def test_a_hung_local_job_is_stopped_at_the_timeout(local_stack):
    """The weight search waiting (wait_s) for a run that never comes prints nothing for minutes."""
    with pytest.raises(StepFailed, match="tune_weights still running after 0 minutes, stopped"):
        local.run_job("tune_weights", ["--set", "run=runs/never", "--set", "wait_s=600"], str(local_stack), 8.0)


# -- the compiled pipeline ----------------------------------------------------------------------------


def kfp_python() -> str:
    if not KFP_PYTHON.is_file():
        _missing(f"{KFP_PYTHON} missing: `make test` (or `make pipeline-env`) installs jobs/requirements-pipeline.txt")
    return str(KFP_PYTHON)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ir") / "argus-pipeline.yaml"
    sets = ["--set", "min_ndcg10=0.05", "--set", "run=ir-test", "--set", "train_overrides=[optim.epochs=3]"]
    done = subprocess.run(
        [kfp_python(), str(JOB), "compile", "--out", str(out), *sets], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pipeline, platform = yaml.safe_load_all(out.read_text())
    return {"pipeline": pipeline, "platform": platform}


def _tasks(dag: dict) -> dict[str, list[str]]:
    return {name: sorted(t.get("dependentTasks", [])) for name, t in dag["tasks"].items()}


@pytest.mark.integration
def test_the_ir_has_the_steps_in_order_and_deploys_only_when_asked(compiled):
    ir = compiled["pipeline"]
    assert ir["pipelineInfo"]["name"] == "argus-platform"
    root = ir["root"]["dag"]
    assert _tasks(root) == {
        "prepare-data": [],
        "train-model": ["prepare-data"],
        "evaluation-gate": ["train-model"],
        "tune-weights": ["evaluation-gate"],
        "condition-1": ["tune-weights"],
    }
    condition = root["tasks"]["condition-1"]
    assert condition["taskInfo"]["name"] == "deploy-enabled"
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    inner = ir["components"]["comp-condition-1"]["dag"]
    assert _tasks(inner) == {"deploy-service": [], "smoke-request": ["deploy-service"]}
    weights = inner["tasks"]["deploy-service"]["inputs"]["parameters"]["weights_file"]
    assert weights == {"componentInputParameter": "pipelinechannel--tune-weights-Output"}
    url = inner["tasks"]["smoke-request"]["inputs"]["parameters"]["url"]
    assert url["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "deploy-service"}


@pytest.mark.integration
def test_the_ir_parameters_are_the_configs_with_its_values_as_defaults(compiled):
    params = compiled["pipeline"]["root"]["inputDefinitions"]["parameters"]
    expected = PipelineConfig().parameters() | {
        "min_ndcg10": 0.05,
        "run": "ir-test",
        "train_overrides": ["optim.epochs=3"],
    }
    assert set(params) == set(expected)
    for name, value in expected.items():
        assert params[name]["defaultValue"] == value, name
    gate_inputs = compiled["pipeline"]["root"]["dag"]["tasks"]["evaluation-gate"]["inputs"]["parameters"]
    assert gate_inputs["min_ndcg10"] == {"componentInputParameter": "min_ndcg10"}
    assert gate_inputs["require_above_popularity"] == {"componentInputParameter": "require_above_popularity"}
    metrics = compiled["pipeline"]["components"]["comp-evaluation-gate"]["outputDefinitions"]["artifacts"]
    assert metrics["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    tune = compiled["pipeline"]["components"]["comp-tune-weights"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in tune.items()} == {
        "weights": "system.Metrics",
        "report": "system.HTML",
        "results": "system.Markdown",
    }


@pytest.mark.integration
def test_every_step_mounts_the_shared_volume_and_carries_k8s_manifests_unchanged(compiled):
    executors = compiled["pipeline"]["deploymentSpec"]["executors"]
    mounts = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(mounts) == set(executors) and len(executors) == 6
    for name, executor in executors.items():
        (mount,) = mounts[name]["pvcMount"]
        assert (mount["constant"], mount["mountPath"]) == ("argus-data", "/mnt/argus"), name
        container = executor["container"]
        assert container["image"] == "python:3.11-slim"
        assert container["resources"]["resourceMemoryLimit"] == "1Gi"
        source = container["command"][-1]
        encoded = source.split("__KFP_EMBEDDED_ARCHIVE_B64 = '", 1)[1].split("'", 1)[0]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded)))) as tar:
            carried = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        for relative in objects.MANIFESTS.values():
            assert carried[relative] == (ROOT / relative).read_bytes(), (name, relative)
        assert (
            carried["platform/argus_platform/pipeline/steps.py"]
            == (ROOT / "platform/argus_platform/pipeline/steps.py").read_bytes()
        )


# -- end to end on kfp.local ----------------------------------------------------------------------------

TINY = [
    "data.synthetic.num_users=600",
    "data.synthetic.num_items=300",
    "data.synthetic.events_per_user=30",
    "data.synthetic.min_events=6",
    "model.embedding_dim=32",
    "model.num_layers=1",
    "model.max_seq_len=20",
    "optim.batch_size=32",
    "optim.epochs=8",
    "optim.eval_every_epochs=8",
    "optim.log_every_steps=0",
    "loss.in_batch_negatives=32",
    "loss.uniform_negatives=32",
    "scaling.num_workers=1",
]  # beats popularity (test NDCG@10 0.26 vs 0.20 after 6 epochs) in epochs of a few tenths of a second
TINY_TUNE = ["candidates.retrieve_n=10", "search.num_samples=6", "local_num_cpus=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(home: Path, port: int, *sets: str) -> subprocess.CompletedProcess:
    flags = ["--set", f"home={home}", "--set", "run=e2e", "--set", f"serve_port={port}"]
    flags += ["--set", f"train_overrides=[{', '.join(TINY)}]", "--set", f"tune_overrides=[{', '.join(TINY_TUNE)}]"]
    env = {**os.environ, "ARGUS_PYTHON": sys.executable, "ARGUS_REPO": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [kfp_python(), str(JOB), "run-local", *flags, *[a for s in sets for a in ("--set", s)]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> dict:
    """The pipeline on kfp.local twice on one run: as configured, then with an impossible threshold
    (preparation and training find the first's work done and keep it)."""
    home, port = tmp_path_factory.mktemp("pipeline-home"), _free_port()
    passed = run_local(home, port)
    failed = run_local(home, port, "min_ndcg10=0.99")
    return {"home": home, "port": port, "passed": passed, "failed": failed}


@pytest.mark.integration
def test_the_local_pipeline_trains_gates_tunes_deploys_and_answers(local_runs):
    done, home = local_runs["passed"], local_runs["home"]
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    run = home / "runs" / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["ndcg@10"] > metrics["baselines"]["popularity"]["test"]["ndcg@10"]
    assert (run / "tune" / "weights.yaml").is_file()
    (smoke,) = [ln for ln in done.stdout.splitlines() if "[pipeline] smoke: " in ln]
    assert "'items': ['" in smoke and "runs/e2e/checkpoint_" in smoke
    assert "Serve on http://127.0.0.1:" in done.stdout and "application RUNNING" in done.stdout
    outputs = next((run / "pipeline").glob("argus-platform-*/evaluation-gate/executor_output.json"))
    gate_metrics = json.loads(outputs.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert gate_metrics["test/ndcg@10"] == metrics["test"]["ndcg@10"]
    html = next((run / "pipeline").glob("argus-platform-*/tune-weights/report")).read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html and "Chosen weights" in html
    assert "stopped the local Serve server" in done.stdout
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", local_runs["port"])) != 0, "the local server outlived run-local"


@pytest.mark.integration
def test_an_impossible_threshold_fails_the_pipeline_at_the_gate(local_runs):
    done = local_runs["failed"]
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Inner task failed: " in done.stderr and "evaluation-gate" in done.stderr
    assert "test NDCG@10 " in done.stderr and "is below min_ndcg10=0.9900" in done.stderr
    assert "holds a finished run of this very config" in done.stdout, "the second run keeps the first's training"
    runs = sorted((local_runs["home"] / "runs" / "e2e" / "pipeline").glob("argus-platform-*"))
    assert len(runs) == 2 and not (runs[-1] / "tune-weights").exists(), "nothing after the gate ran"
