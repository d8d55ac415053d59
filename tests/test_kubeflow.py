"""k8s/kubeflow without a cluster: the Kubeflow Trainer v2 TrainingRuntime and TrainJob render,
validate against the Trainer v2.3.0 CRD schemas in ../shared/k8s-crds (closed objects, so a misspelt
field fails), their pod passes Kubernetes' strict schema and checkov, keeps the security defaults,
and runs a script, config and `--set` keys that the training job's own command line accepts; the
pipelines' ServiceAccount gets exactly the rights its steps use."""

from __future__ import annotations

import copy
import re
import shlex

import pytest
import yaml
from test_k8s import _checkov, _job_configs, _kubernetes_validate, _repo_path, render, schema_errors, schema_validator

pytestmark = pytest.mark.integration  # subprocesses (kubectl, kubernetes-validate, checkov)

TRAINER = {
    "TrainJob": "trainjobs",
    "TrainingRuntime": "trainingruntimes",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
}
VARIANTS = ["kubeflow/trainer", "kubeflow/trainer-gpu"]


def errors(doc: dict) -> list[str]:
    return schema_errors(schema_validator(f"trainer.kubeflow.org_{TRAINER[doc['kind']]}.yaml.gz", "v1alpha1"), doc)


def docs(variant: str) -> dict[str, dict]:
    return {d["kind"]: d for d in render(variant)}


def runtime_pod(variant: str) -> dict:
    (job,) = docs(variant)["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]
    return job["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_runtime_and_a_trainjob_that_uses_it_in_the_overlays_namespace(variant):
    found = render(variant)
    assert sorted(f"{d['kind']}/{d['metadata']['name']}" for d in found) == [
        "TrainJob/argus-train-torch",
        "TrainingRuntime/argus-torch",
    ]
    assert {d["metadata"]["namespace"] for d in found} == {"argus-dev"}  # k8s/overlays/cpu-dev's, with its volume
    kinds = docs(variant)
    ref = kinds["TrainJob"]["spec"]["runtimeRef"]
    assert (ref["kind"], ref["name"]) == ("TrainingRuntime", kinds["TrainingRuntime"]["metadata"]["name"])
    assert kinds["TrainingRuntime"]["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert "torch" in kinds["TrainingRuntime"]["spec"]["mlPolicy"]
    (container,) = runtime_pod(variant)["containers"]
    assert container["name"] == "node", "Trainer's torch plugin injects torchrun's PET_* variables into `node`"
    variant_tag = "gpu" if variant.endswith("gpu") else "cpu"
    assert container["image"] == f"ghcr.io/argus-platform/argus-platform:0.1.0-{variant_tag}"


def test_the_gpu_variant_asks_a_gpu_per_process_and_trains_with_cuda():
    trainer = docs("kubeflow/trainer-gpu")["TrainJob"]["spec"]["trainer"]
    for side in ("requests", "limits"):
        assert trainer["resourcesPerNode"][side]["nvidia.com/gpu"] == str(trainer["numProcPerNode"])
    assert "scaling.use_gpu=true" in trainer["args"]
    cpu = docs("kubeflow/trainer")["TrainJob"]["spec"]["trainer"]
    assert "nvidia.com/gpu" not in str(cpu) and "scaling.use_gpu=true" not in cpu["args"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_trainer_resources_validate_against_the_trainer_v2_crds(variant):
    for kind, doc in docs(variant).items():
        assert errors(doc) == [], f"{variant}: {kind}"


def test_the_trainer_crd_check_rejects_a_misspelt_field_and_a_wrong_type():
    job = docs("kubeflow/trainer")["TrainJob"]
    typo = copy.deepcopy(job)
    typo["spec"]["trainer"]["numProcsPerNode"] = typo["spec"]["trainer"].pop("numProcPerNode")
    assert any("numProcsPerNode" in e for e in errors(typo))
    wrong = copy.deepcopy(job)
    wrong["spec"]["trainer"]["numNodes"] = "two"
    assert any("numNodes" in e for e in errors(wrong))
    runtime = copy.deepcopy(docs("kubeflow/trainer")["TrainingRuntime"])
    runtime["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = 2  # moved to the TrainJob's trainer in v2.3
    assert any("numProcPerNode" in e for e in errors(runtime))


def test_the_runtime_pod_passes_kubernetes_strict_schema_checkov_and_the_security_defaults(tmp_path):
    pods = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": re.sub(r"\W+", "-", v), "namespace": "argus-dev"}}
        | {"spec": runtime_pod(v)}
        for v in VARIANTS
    ]
    result = _kubernetes_validate(pods, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "checkov").mkdir()
    for i, pod in enumerate(pods):
        (tmp_path / "checkov" / f"{i}.yaml").write_text(yaml.safe_dump(pod))
    scanned = _checkov(tmp_path / "checkov", "kubernetes")
    assert scanned.returncode == 0, scanned.stdout[-4000:] + scanned.stderr[-2000:]
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        (c,) = spec["containers"]
        sc, res = c["securityContext"], c["resources"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged")
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts and mounts["/mnt/argus"] == "argus-data"  # $ARGUS_HOME in the image
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        assert claims["argus-data"] == "argus-data"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trainjob_runs_a_script_config_and_keys_the_training_job_accepts(variant):
    parse_config, configs = _job_configs()
    trainer = docs(variant)["TrainJob"]["spec"]["trainer"]
    runner, script = trainer["command"]
    assert runner == "torchrun" and _repo_path(script).is_file(), trainer["command"]
    args = [str(_repo_path(a)) if a.startswith("/home/ray/argus/") else a for a in trainer["args"]]
    cfg = parse_config(configs["train_argus.py"], "TrainJob", args)  # exits 2 on an unknown key
    assert cfg.run.dir == "runs/argus-trainjob" and cfg.scaling.use_gpu == variant.endswith("gpu")
    assert trainer["numNodes"] >= 2 and trainer["numProcPerNode"] >= 1, "the torchrun path on N nodes × M processes"
    assert shlex.join(trainer["command"]).startswith("torchrun ")


def test_the_pipelines_service_account_may_run_training_and_patch_serving_and_nothing_else(tmp_path):
    found = {d["kind"]: d for d in render("kubeflow/pipelines")}
    assert set(found) == {"ServiceAccount", "Role", "RoleBinding"}
    assert {d["metadata"]["namespace"] for d in found.values()} == {"argus-dev"}
    grants = {
        (group, resource): set(rule["verbs"])
        for rule in found["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    watch = {"get", "list", "watch"}
    assert grants == {
        ("ray.io", "rayjobs"): {"create", "delete"} | watch,
        ("trainer.kubeflow.org", "trainjobs"): {"create", "delete"} | watch,
        ("ray.io", "rayservices"): {"create", "patch"} | watch,
    }
    binding = found["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argus-pipeline"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "argus-pipeline", "namespace": "argus-dev"}]
    result = _kubernetes_validate(list(found.values()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "checkov").mkdir()
    (tmp_path / "checkov" / "rbac.yaml").write_text(yaml.safe_dump_all(found.values()))
    scanned = _checkov(tmp_path / "checkov", "kubernetes")
    assert scanned.returncode == 0, scanned.stdout[-4000:] + scanned.stderr[-2000:]
