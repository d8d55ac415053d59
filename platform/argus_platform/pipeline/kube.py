"""The cluster backend: create a RayJob or TrainJob and wait for it to end, create or patch the
RayService and wait until Serve reports the application RUNNING — through the Kubernetes API with
the pipeline's service account (k8s/kubeflow/pipelines/rbac.yaml grants exactly these verbs).

The status readers (`job_outcome`, `service_state`) are plain functions of the objects' status, as
the KubeRay v1 and Kubeflow Trainer v1alpha1 CRDs define it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from argus_platform.pipeline.objects import APP

RESOURCES = {  # kind → (group, version, plural)
    "RayJob": ("ray.io", "v1", "rayjobs"),
    "RayService": ("ray.io", "v1", "rayservices"),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
}
POLL_S = 10.0


class StepFailed(RuntimeError):
    """A job or a deployment that ended badly; the message names the object and the reason."""


@dataclass
class Outcome:
    ok: bool
    reason: str


def job_outcome(obj: dict) -> Outcome | None:
    """None while the job runs; else whether it succeeded, and why not.

    RayJob: jobDeploymentStatus Complete (the Ray job ended: jobStatus SUCCEEDED or not), Failed
    (submission, deadline, cluster) or ValidationFailed. TrainJob: condition Complete or Failed."""
    status = obj.get("status") or {}
    if obj["kind"] == "RayJob":
        deployment = status.get("jobDeploymentStatus", "")
        detail = "; ".join(x for x in (status.get("reason", ""), status.get("message", "")) if x)
        if deployment == "Complete":
            job = status.get("jobStatus", "")
            return Outcome(True, "") if job == "SUCCEEDED" else Outcome(False, f"Ray job {job}: {detail}".rstrip(": "))
        if deployment in ("Failed", "ValidationFailed"):
            return Outcome(False, f"{deployment}: {detail or 'no reason given'}")
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        return Outcome(True, "")
    if "Failed" in conditions:
        c = conditions["Failed"]
        return Outcome(False, f"{c.get('reason', 'Failed')}: {c.get('message', 'no message')}")
    return None


def job_progress(obj: dict) -> str:
    status = obj.get("status") or {}
    if obj["kind"] == "RayJob":
        return f"{status.get('jobDeploymentStatus') or 'New'} / {status.get('jobStatus') or '-'}"
    true = [c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"]
    return ", ".join(true) or "Created"


def service_state(obj: dict, generation: int) -> tuple[bool, str]:
    """(ready, what is seen): ready once KubeRay has acted on `generation` of the spec and Serve
    reports the application RUNNING; a DEPLOY_FAILED application is a failure."""
    status = obj.get("status") or {}
    apps = (status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}
    app = apps.get(APP) or {}
    seen = f"generation {status.get('observedGeneration', 0)}/{generation}, application {app.get('status', 'absent')}"
    if app.get("status") == "DEPLOY_FAILED":
        raise StepFailed(f"RayService {_where(obj)}: Serve could not deploy {APP!r}: {app.get('message', '')}")
    ready = status.get("observedGeneration", 0) >= generation and app.get("status") == "RUNNING"
    return ready, seen


def _where(obj: dict) -> str:
    return f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


class Cluster:
    """The Kubernetes API as the pipeline's steps use it (in-cluster config, else ~/.kube/config)."""

    def __init__(self) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.api = client.CustomObjectsApi()
        self.ApiException = client.exceptions.ApiException

    def _args(self, kind: str, namespace: str) -> tuple:
        group, version, plural = RESOURCES[kind]
        return group, version, namespace, plural

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(*self._args(kind, namespace), name)
        except self.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def run_job(self, obj: dict, timeout_s: float) -> dict:
        """Create the job (after deleting a finished one of the same name: a re-run resumes from the
        run's checkpoints) and wait for its end; raise StepFailed naming it and its failure reason."""
        kind, namespace, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        if self.get(kind, namespace, name) is not None:
            print(f"[pipeline] deleting the earlier {kind} {namespace}/{name}", flush=True)
            self.api.delete_namespaced_custom_object(
                *self._args(kind, namespace), name, propagation_policy="Foreground"
            )
            self._wait_gone(kind, namespace, name, timeout_s)
        self.api.create_namespaced_custom_object(*self._args(kind, namespace), obj)
        print(f"[pipeline] created {kind} {namespace}/{name}", flush=True)
        started, last = time.time(), ""
        while time.time() - started < timeout_s:
            current = self.get(kind, namespace, name)
            if current is None:
                raise StepFailed(f"{kind} {namespace}/{name} disappeared while it ran (deleted by someone?)")
            outcome = job_outcome(current)
            progress = job_progress(current)
            if progress != last:
                print(f"[pipeline] {kind} {namespace}/{name}: {progress} ({time.time() - started:.0f}s)", flush=True)
                last = progress
            if outcome is not None:
                if not outcome.ok:
                    raise StepFailed(f"{kind} {namespace}/{name} failed: {outcome.reason}")
                return current
            time.sleep(POLL_S)
        raise StepFailed(f"{kind} {namespace}/{name} still running after {timeout_s / 60:.0f} minutes ({last})")

    def _wait_gone(self, kind: str, namespace: str, name: str, timeout_s: float) -> None:
        started = time.time()
        while self.get(kind, namespace, name) is not None:
            if time.time() - started > timeout_s:
                raise StepFailed(f"{kind} {namespace}/{name} was not deleted within {timeout_s / 60:.0f} minutes")
            time.sleep(2.0)

    def apply_service(self, new: dict, serve_config: Callable[[str], str], timeout_s: float) -> dict:
        """Create the RayService `new` if absent, else patch only its serveConfigV2 (through
        `serve_config(current text)`, keeping the cluster's own settings); wait until RUNNING."""
        namespace, name = new["metadata"]["namespace"], new["metadata"]["name"]
        current = self.get("RayService", namespace, name)
        if current is None:
            obj = self.api.create_namespaced_custom_object(*self._args("RayService", namespace), new)
            print(f"[pipeline] created RayService {namespace}/{name}", flush=True)
        else:
            patch = {"spec": {"serveConfigV2": serve_config(current["spec"]["serveConfigV2"])}}
            obj = self.api.patch_namespaced_custom_object(*self._args("RayService", namespace), name, patch)
            print(f"[pipeline] patched RayService {namespace}/{name} (serveConfigV2)", flush=True)
        generation = obj["metadata"].get("generation", 1)
        started, last = time.time(), ""
        while time.time() - started < timeout_s:
            current = self.get("RayService", namespace, name) or obj
            ready, seen = service_state(current, generation)
            if seen != last:
                print(f"[pipeline] RayService {namespace}/{name}: {seen} ({time.time() - started:.0f}s)", flush=True)
                last = seen
            if ready:
                return current
            time.sleep(POLL_S)
        raise StepFailed(f"RayService {namespace}/{name} not RUNNING after {timeout_s / 60:.0f} minutes ({last})")
