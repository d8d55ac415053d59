"""k8s/ without a cluster: every kustomization renders; RayCluster / RayJob / RayService validate
against the KubeRay CRD schemas in ../shared/k8s-crds (closed objects, so a misspelt field fails),
core kinds and every Ray pod template against Kubernetes' own schemas (kubernetes-validate); checkov
passes; the security defaults hold on every container; what the manifests name exists (scripts,
configs, config keys, the Serve builder and its deployments); rayVersion matches the image."""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, SHARED

pytestmark = pytest.mark.integration  # several processes or subprocesses (make test-fast skips)

K8S = ROOT / "k8s"
CRDS = SHARED / "k8s-crds"
TOOLS = ROOT / ".venv-tools" / "bin"
KUSTOMIZATIONS = ["base", "overlays/cpu-dev", "overlays/gpu", "interactive"]
APPLIED = KUSTOMIZATIONS[1:]  # what users apply (base leaves the image to the overlays)
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
IMAGE_HOME = "/home/ray/argus"  # the Dockerfile's WORKDIR: the repository inside the image
KUBERNETES_VERSION = "1.32.0"
# libyaml's parser: the CRDs are ~1 MB of YAML each, ~15 s in the pure-Python one on 2 cores
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _missing(reason: str) -> None:
    """A validator that is not installed: a skip on a workstation, a failure under CI=true (where
    `make test` must have installed it, so a skip would hide a manifest check that never ran)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        _missing(f"{path} missing: `make test` installs k8s/requirements-tools.txt into .venv-tools")
    return str(path)


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(K8S / kustomization)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(K8S / kustomization)]
    else:
        _missing("needs kubectl or kustomize on PATH to render k8s/")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return tuple(d for d in yaml.load_all(out, Loader=LOADER) if d)


def all_docs() -> list[tuple[str, dict]]:
    return [(k, d) for k in KUSTOMIZATIONS for d in render(k)]


def _closed(schema):
    """CRD schemas prune unknown fields instead of rejecting them; the operator would silently drop a
    misspelt key. Close every object that lists its properties (unless it keeps unknown fields)."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def schema_validator(file: str, version: str) -> jsonschema.Draft7Validator:
    """The closed schema of one CRD version from ../shared/k8s-crds/<file>."""
    path = CRDS / file
    if not path.exists():
        pytest.skip(f"needs the CRD schemas in ../shared/k8s-crds (not found: {path})")
    crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=LOADER)
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return jsonschema.Draft7Validator(_closed(found["schema"]["openAPIV3Schema"]))


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def crd_errors(doc: dict) -> list[str]:
    return schema_errors(schema_validator(f"ray.io_{RAY_KINDS[doc['kind']]}.yaml.gz", "v1"), doc)


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template in a Ray resource, the job submitter's included."""
    spec = doc["spec"]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}[
        doc["kind"]
    ]
    found = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    found += [(f"worker {g['groupName']}", g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        found.append(("submitter", spec["submitterPodTemplate"]["spec"]))
    return [(f"{doc['kind']}/{doc['metadata']['name']} {where}", pod) for where, pod in found]


def ray_docs() -> list[tuple[str, dict]]:
    return [(k, d) for k, d in all_docs() if d["kind"] in RAY_KINDS]


# -- rendering --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["overlays/cpu-dev", "overlays/gpu"])
def test_overlays_render_storage_training_tuning_and_serving(overlay):
    docs = render(overlay)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "Namespace/" + docs[0]["metadata"]["name"],
        "NetworkPolicy/argus-redis",
        "NetworkPolicy/argus-serve",
        "PersistentVolumeClaim/argus-data",
        "RayJob/argus-train",
        "RayJob/argus-tune-weights",
        "RayService/argus-serve",
        "Service/argus-redis",
        "StatefulSet/argus-redis",
    ], kinds
    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for d in docs if d["kind"] in RAY_KINDS for _, pod in pod_specs(d) for c in pod["containers"]}
    variant = "gpu" if overlay.endswith("gpu") else "cpu"
    assert images == {f"ghcr.io/argus-platform/argus-platform:0.1.0-{variant}"}, images


def test_gpu_overlay_puts_one_gpu_on_each_training_worker_and_trains_with_cuda():
    train = next(d for d in render("overlays/gpu") if d["metadata"]["name"] == "argus-train")
    group = train["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and group["replicas"] == 4
    assert (
        "scaling.use_gpu=true" in train["spec"]["entrypoint"] and "scaling.num_workers=4" in train["spec"]["entrypoint"]
    )
    cpu = next(d for d in render("overlays/cpu-dev") if d["metadata"]["name"] == "argus-train")
    assert "nvidia.com/gpu" not in json.dumps(cpu) and "use_gpu=true" not in cpu["spec"]["entrypoint"]


# -- schemas ----------------------------------------------------------------------------------------


def test_ray_resources_validate_against_the_kuberay_crds():
    docs = ray_docs()
    assert {d["kind"] for _, d in docs} == set(RAY_KINDS)
    for where, doc in docs:
        assert crd_errors(doc) == [], f"{where}: {doc['kind']}/{doc['metadata']['name']}"


def test_the_crd_check_rejects_a_misspelt_field_and_a_wrong_type():
    train = next(d for d in render("base") if d["metadata"]["name"] == "argus-train")
    typo = copy.deepcopy(train)
    typo["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["rayClusterSpec"][
        "headGroupSpec"
    ].pop("rayStartParams")
    assert any("rayStartParam" in e for e in crd_errors(typo))
    wrong = copy.deepcopy(train)
    wrong["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in crd_errors(wrong))


def _kubernetes_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    files = []
    for i, doc in enumerate(docs):
        files.append(tmp_path / f"{i}-{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
    )


def test_core_kinds_and_every_ray_pod_template_validate_against_kubernetes_schemas(tmp_path):
    core = [d for _, d in all_docs() if d["kind"] not in RAY_KINDS]
    kinds = {"Namespace", "NetworkPolicy", "PersistentVolumeClaim", "Service", "StatefulSet"}
    assert {d["kind"] for d in core} == kinds
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": re.sub(r"[^a-z0-9-]+", "-", where.lower()).strip("-")},
            "spec": pod,
        }
        for _, d in ray_docs()
        for where, pod in pod_specs(d)
    ]
    result = _kubernetes_validate(core + pods, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(pods[0])  # a misspelt field fails the strict check
    broken["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalations"] = False
    (tmp_path / "bad").mkdir()
    bad = _kubernetes_validate([broken], tmp_path / "bad")
    assert bad.returncode != 0 and "allowPrivilegeEscalations" in bad.stdout + bad.stderr


def _checkov(directory: Path, *frameworks: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _tool("checkov"),
            "-d",
            str(directory),
            "--framework",
            *frameworks,
            "--config-file",
            str(K8S / "checkov.yaml"),
            "--compact",
            "--quiet",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_checkov_passes_on_k8s_and_on_every_rendered_ray_pod(tmp_path):
    files = _checkov(K8S, "kubernetes", "dockerfile")
    assert files.returncode == 0, files.stdout[-4000:] + files.stderr[-2000:]
    for i, (kustomization, doc) in enumerate((k, d) for k in APPLIED for d in render(k)):
        if doc["kind"] not in RAY_KINDS:
            (tmp_path / f"{i}.yaml").write_text(yaml.safe_dump(doc))
            continue
        for j, (where, pod) in enumerate(pod_specs(doc)):
            name = re.sub(r"[^a-z0-9-]+", "-", f"{kustomization} {where}".lower()).strip("-")
            (tmp_path / f"{i}-{j}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "spec": pod,
                        "metadata": {"name": name, "namespace": doc["metadata"].get("namespace", "argus")},
                    }
                )
            )
    pods = _checkov(tmp_path, "kubernetes")
    assert pods.returncode == 0, pods.stdout[-4000:] + pods.stderr[-2000:]
    (tmp_path / "root.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "root", "namespace": "x"},
                "spec": {"containers": [{"name": "c", "image": "x:1", "securityContext": {"privileged": True}}]},
            }
        )
    )
    assert _checkov(tmp_path, "kubernetes").returncode != 0, "checkov must fail a privileged pod"


# -- security defaults ------------------------------------------------------------------------------


def test_every_ray_container_is_non_root_unprivileged_read_only_and_bounded():
    for _, doc in ray_docs():
        cluster = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        if cluster.get("enableInTreeAutoscaling"):
            auto = cluster["autoscalerOptions"]
            assert (
                auto["securityContext"]["allowPrivilegeEscalation"] is False and auto["securityContext"]["runAsNonRoot"]
            )
            assert {"cpu", "memory"} <= set(auto["resources"]["requests"]) and {"cpu", "memory"} <= set(
                auto["resources"]["limits"]
            )
        for where, pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, where
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not [v for v in pod.get("volumes", []) if "hostPath" in v], f"{where}: hostPath volume"
            for c in pod["containers"] + pod.get("initContainers", []):
                sc, res = c["securityContext"], c["resources"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, (
                    where,
                    c["name"],
                )
                assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("privileged"), (where, c["name"])
                assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), (
                    where,
                    c["name"],
                )
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{where}: Ray needs a writable /tmp beside a read-only root"


# -- what the manifests name exists -----------------------------------------------------------------


def _repo_path(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_HOME + "/"), image_path
    return ROOT / image_path[len(IMAGE_HOME) + 1 :]


def _job_configs():
    from argus_platform.cli import parse_config
    from argus_platform.config import TrainJobConfig
    from argus_platform.tuning.config import TuneWeightsConfig
    from argus_platform.tuning.tune_train import TuneTrainConfig

    return parse_config, {
        "train_argus.py": TrainJobConfig,
        "tune_weights.py": TuneWeightsConfig,
        "tune_train.py": TuneTrainConfig,
    }


def test_entrypoints_name_scripts_configs_and_keys_that_exist():
    parse_config, configs = _job_configs()
    seen = set()
    for where, doc in ray_docs():
        if doc["kind"] != "RayJob":
            continue
        python, script, *args = shlex.split(doc["spec"]["entrypoint"])
        assert python == "python" and _repo_path(script).is_file(), (where, script)
        args = [str(_repo_path(a)) if a.startswith(IMAGE_HOME) else a for a in args]
        for a in args:
            if a.startswith("/"):
                assert Path(a).is_file(), (where, a)
        cfg = parse_config(configs[Path(script).name], "manifest entrypoint", args)  # exits 2 on an unknown key
        seen.add((doc["metadata"]["name"], type(cfg).__name__))
        if doc["metadata"]["name"] == "argus-tune-weights":
            assert cfg.run == "runs/argus-train" and cfg.wait_s > 0
        if doc["metadata"]["name"] == "argus-train":
            assert cfg.run.dir == "runs/argus-train"
    assert ("argus-train", "TrainJobConfig") in seen and ("argus-tune-weights", "TuneWeightsConfig") in seen


def test_dockerfile_copies_what_exists_and_installs_the_pinned_stack():
    text = (K8S / "image" / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_HOME}" in text
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, flags=re.M):
        *sources, _ = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    # the pins are pyproject.toml's, through the script the Makefile and the Dockerfile both run
    spec = importlib.util.spec_from_file_location("pins", K8S / "image" / "pins.py")
    pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pins)
    pyproject = str(ROOT / "pyproject.toml")
    assert pins.pins(pyproject, "torch") == ["torch==2.13.0"] and pins.pins(pyproject, "no-deps") == ["torchrec==1.8.0"]
    for variant, stack in (
        ("cpu", ("fbgemm-gpu-cpu==1.8.0", "ray[train,tune,serve]==2.60.0")),
        ("gpu", ("fbgemm-gpu==1.8.0", "torchrec==1.8.0", "ray[train,tune,serve]==2.60.0")),
    ):
        assert set(stack) <= set(pins.pins(pyproject, variant)), variant
    assert "fbgemm-gpu==1.8.0" not in pins.pins(pyproject, "cpu")
    for where in (text, (ROOT / "Makefile").read_text()):
        assert "pins.py" in where and "no-deps" in where
    assert "--index-url" in text


def test_ray_version_is_the_images_everywhere():
    import ray

    base = re.search(r"^FROM rayproject/ray:(\S+?)-py311-cpu$", (K8S / "image" / "Dockerfile").read_text(), flags=re.M)
    assert base and base.group(1) == ray.__version__ == "2.60.0"
    for where, doc in ray_docs():
        cluster = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        assert cluster["rayVersion"] == ray.__version__, where
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in head["ports"]}
        assert (ports["gcs-server"], ports["dashboard"], ports["client"]) == (6379, 8265, 10001), where


def test_the_serve_app_reads_and_appends_histories_in_the_redis_statefulset():
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in render("overlays/cpu-dev")}
    redis, svc = docs["StatefulSet/argus-redis"], docs["Service/argus-redis"]
    app = yaml.safe_load(docs["RayService/argus-serve"]["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["events_store"] == f"redis://{svc['metadata']['name']}:6379/0"
    assert svc["spec"]["clusterIP"] == "None" and redis["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    pod = redis["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"]
    args = dict(zip(c["args"][::2], c["args"][1::2]))  # persistence: the append-only file on the claim
    assert args["--appendonly"] == "yes" and args["--dir"] == c["volumeMounts"][0]["mountPath"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == c["volumeMounts"][0]["name"]


def test_rayservice_runs_the_local_serve_app_with_autoscaled_retriever_and_ranker():
    from ray.serve.schema import ServeDeploySchema

    from argus_serve.app import AppArgs
    from argus_serve.launch import SERVE_ENV

    local = yaml.safe_load((ROOT / "serve" / "argus.yaml").read_text())["applications"][0]
    service = next(d for d in render("overlays/cpu-dev") if d["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = config["applications"][0]
    assert app["import_path"] == local["import_path"] and app["route_prefix"] == local["route_prefix"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    args = AppArgs(**app["args"])  # extra keys are refused
    assert args.checkpoint == "runs/argus-train" and args.wait_s > 0
    ServeDeploySchema.model_validate(config)
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {d["name"] for d in local["deployments"]}
    overload = (
        "max_ongoing_requests",
        "max_queued_requests",
        "backpressure_config",
    )  # 503 + Retry-After above the bound
    local_ingress = next(d for d in local["deployments"] if d["name"] == "Retriever")  # it answers HTTP
    assert {k: deployments["Retriever"][k] for k in overload} == {k: local_ingress[k] for k in overload}
    assert (
        deployments["Retriever"]["autoscaling_config"]["target_ongoing_requests"]
        <= local_ingress["max_ongoing_requests"]
    )
    for name in ("Retriever", "Ranker"):
        auto = deployments[name]["autoscaling_config"]
        assert "num_replicas" not in deployments[name] and 1 <= auto["min_replicas"] < auto["max_replicas"]
        local_keys = set(next(d for d in local["deployments"] if d["name"] == name)["user_config"])
        assert set(deployments[name]["user_config"]) <= local_keys | {"weights", "weights_file"}, name
    for where, pod in pod_specs(service):  # Serve's fast request path, without which p99 misses (serve/README.md)
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, (where, c["name"])


# -- who may call -----------------------------------------------------------------------------------


def _matches(selector: dict | None, labels: dict) -> bool:
    """A label selector as Kubernetes reads it (matchLabels and matchExpressions; {} matches all)."""
    selector = selector or {}
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {
            "In": present and value in e.get("values", []),
            "NotIn": not present or value not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[e["operator"]]
        if not ok:
            return False
    return True


def _admits(policies, pod: dict, client: dict, port: int) -> bool:
    """Whether the NetworkPolicies admit TCP from `client` to `port` of `pod` ({namespace, labels,
    namespace_labels} each): a pod no Ingress policy selects admits everything; a selected pod
    admits what any rule of any policy selecting it allows (peers OR'ed; a namespaceSelector and a
    podSelector in one peer AND'ed; a peer without namespaceSelector means the policy's namespace)."""
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod["namespace"]
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and _matches(p["spec"]["podSelector"], pod["labels"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port for p in ports):
                continue
            for peer in rule.get("from") or [{}]:
                if "namespaceSelector" in peer:
                    in_namespace = _matches(peer["namespaceSelector"], client["namespace_labels"])
                else:
                    in_namespace = client["namespace"] == policy["metadata"]["namespace"]
                if in_namespace and ("podSelector" not in peer or _matches(peer["podSelector"], client["labels"])):
                    return True
    return False


@pytest.mark.parametrize("overlay", ["overlays/cpu-dev", "overlays/gpu"])
def test_network_policies_admit_only_the_ingress_path_to_the_serve_port(overlay):
    docs = render(overlay)
    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    service = next(d for d in docs if d["kind"] == "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    redis = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "argus-redis")

    def pod(labels, ns=namespace):
        return {"namespace": ns, "labels": labels, "namespace_labels": {"kubernetes.io/metadata.name": ns}}

    serve_pods = [pod(t["metadata"]["labels"]) for t in templates]  # head and every worker group
    store = pod(redis["spec"]["template"]["metadata"]["labels"])
    ingress = pod({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
    operator = pod({"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system")
    trainer = pod({"ray.io/node-type": "worker", "ray.io/cluster": "argus-train-x"})  # another Ray pod here
    outsider = pod({"app.kubernetes.io/name": "ingress-nginx"}, "tenant-b")  # the right label, wrong namespace
    for target in serve_pods:
        assert _admits(policies, target, ingress, 8000)  # the one path in for requests
        assert not _admits(policies, target, ingress, 8265) and not _admits(policies, target, ingress, 6379)
        for client in (trainer, outsider, store):
            assert not _admits(policies, target, client, 8000), client
        assert _admits(policies, target, operator, 8265) and not _admits(policies, target, operator, 8000)
        for peer in serve_pods:  # Ray's own traffic between the Serve pods, any port
            assert all(_admits(policies, target, peer, port) for port in (6379, 8000, 8265, 10001, 41000))
    assert all(_admits(policies, store, p, 6379) for p in serve_pods)
    assert not any(_admits(policies, store, c, 6379) for c in (trainer, ingress, operator))


def test_every_request_but_healthz_needs_the_api_token_and_every_ray_cluster_rays_token():
    from argus_serve.ingress import OPEN_PATHS

    assert OPEN_PATHS == {"/healthz"}
    service = next(d for d in render("overlays/cpu-dev") if d["kind"] == "RayService")
    token_file = Path(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["auth_token_file"])
    for where, spec in pod_specs(service):  # build_app and the Retriever read it, on any Serve pod
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"]]
        (mount,) = [m for m in mounts if m["mountPath"] == str(token_file.parent)]
        assert mount.get("readOnly") and volumes[mount["name"]]["secret"]["secretName"] == "argus-api-token", where
    for where, doc in ray_docs():  # the dashboard and the job API: Ray's token auth, the Secret KubeRay makes
        cluster = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        assert cluster["authOptions"] == {"mode": "token"}, where
