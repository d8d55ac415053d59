"""What each pipeline step does, on either backend; the KFP components (`pipeline.py`) are thin
calls of these. Every step reads and writes the run directory runs/<run> under `home`
(ARGUS_HOME: the checkout locally, the shared volume on the cluster)."""

from __future__ import annotations

import base64
import html
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from argus_platform.pipeline import local, objects
from argus_platform.pipeline.kube import Cluster, StepFailed


class GateFailed(StepFailed):
    """The run is not good enough to deploy."""


@dataclass
class Place:
    """Where a step's work runs."""

    backend: str  # "local" | "cluster"
    home: str
    namespace: str = ""
    image: str = ""
    timeout_minutes: float = 1440.0

    def __post_init__(self) -> None:
        if self.backend not in ("local", "cluster"):
            raise ValueError(f"backend={self.backend!r}: use 'local' or 'cluster'")

    @property
    def timeout_s(self) -> float:
        return self.timeout_minutes * 60.0

    @property
    def repo(self) -> str:
        """Where the jobs are: the checkout locally, the image's copy on the cluster."""
        return local.checkout() if self.backend == "local" else objects.IMAGE_REPO

    def run_dir(self, run: str) -> Path:
        return Path(self.home) / objects.run_dir(run)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise StepFailed(f"{what} not found: {path}")
    return json.loads(path.read_text())


def prepare(place: Place, run: str, config: str, data_path: str, overrides: list[str]) -> dict:
    """Validate and prepare the data into runs/<run> (training reuses it); the data summary."""
    args = objects.train_args(run, config, data_path, overrides, place.repo, prepare_only=True)
    if place.backend == "local":
        local.run_job("train_argus", args, place.home, place.timeout_s)
    else:
        Cluster().run_job(objects.rayjob("prepare", run, place.namespace, place.image, args), place.timeout_s)
    return _read_json(place.run_dir(run) / "data" / "summary.json", "the prepared data's summary")


def train(place: Place, run: str, config: str, data_path: str, overrides: list[str], trainer: str) -> dict:
    """Train (resuming from the run's checkpoints if it has some); the run's metrics.json."""
    args = objects.train_args(run, config, data_path, overrides, place.repo)
    if place.backend == "local":
        local.run_job("train_argus", args, place.home, place.timeout_s)
    elif trainer == "trainjob":
        Cluster().run_job(objects.trainjob(run, place.namespace, place.image, args), place.timeout_s)
    elif trainer == "rayjob":
        Cluster().run_job(objects.rayjob("train", run, place.namespace, place.image, args), place.timeout_s)
    else:
        raise ValueError(f"trainer={trainer!r}: use 'rayjob' or 'trainjob'")
    return _read_json(place.run_dir(run) / "metrics.json", "the run's metrics")


def gate(metrics: dict, min_ndcg10: float, require_above_popularity: bool) -> dict:
    """The evaluation gate: the figures it judged on; GateFailed saying which bar was missed."""
    test = metrics["test"]["ndcg@10"]
    popularity = metrics["baselines"]["popularity"]["test"]["ndcg@10"]
    figures = {
        "test_ndcg10": test,
        "test_hr10": metrics["test"]["hr@10"],
        "validation_ndcg10": metrics["validation"]["ndcg@10"],
        "popularity_test_ndcg10": popularity,
        "best_epoch": metrics["best_epoch"],
        "epochs_trained": metrics["epochs_trained"],
        "train_seconds": metrics["train_seconds"],
    }
    missed = []
    if test < min_ndcg10:
        missed.append(f"test NDCG@10 {test:.4f} is below min_ndcg10={min_ndcg10:.4f}")
    if require_above_popularity and test <= popularity:
        missed.append(f"test NDCG@10 {test:.4f} is not above the popularity baseline's {popularity:.4f}")
    if missed:
        raise GateFailed(f"gate: run {metrics.get('run_dir', '')} not deployed: " + "; ".join(missed))
    return figures


def tune(place: Place, run: str, tune_config: str, overrides: list[str]) -> dict:
    """Search the ranking weights on the run; Tune's report (report.json) with its files' paths."""
    args = objects.tune_args(run, tune_config, overrides, place.repo)
    if place.backend == "local":
        local.run_job("tune_weights", args, place.home, place.timeout_s)
    else:
        Cluster().run_job(objects.rayjob("tune", run, place.namespace, place.image, args), place.timeout_s)
    out = place.run_dir(run) / "tune"
    report = _read_json(out / "report.json", "the weight search's report")
    if not (out / "weights.yaml").is_file():
        raise StepFailed(f"the weight search wrote no weights file in {out}")
    return report | {"out_dir": str(out)}


def tune_html(out_dir: Path) -> str:
    """The weight search's plots and results table as one self-contained HTML page (the KFP UI's
    HTML artifact viewer shows it)."""
    out_dir = Path(out_dir)
    plots = "".join(
        f'<img alt="{p.name}" style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/>'
        for p in sorted(out_dir.glob("*.png"))
    )
    table = html.escape((out_dir / "results.md").read_text())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Weight search: {html.escape(out_dir.parent.name)}"
        f"</title></head><body>{plots}<pre>{table}</pre></body></html>"
    )


def deploy(place: Place, run: str, service: str, port: int) -> dict:
    """Serve runs/<run> with its tuned weights: patch (or create) the RayService on the cluster,
    replace the local server on loopback; return once Serve reports the application RUNNING."""
    checkpoint, weights = objects.run_dir(run), objects.weights_file(run)
    if place.backend == "local":
        info = local.start_server(service, checkpoint, weights, place.home, port, place.timeout_s)
        return {"url": info["url"], "status": info["applications"].get(objects.APP, "")}
    new = objects.rayservice(service, run, place.namespace, place.image)
    obj = Cluster().apply_service(new, lambda text: objects.serve_config_for(text, run), place.timeout_s)
    status = obj["status"]["activeServiceStatus"]["applicationStatuses"][objects.APP]["status"]
    return {"url": objects.service_url(service, place.namespace), "status": status}


def _call(url: str, body: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict, float]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read()), (time.perf_counter() - started) * 1e3
    except urllib.error.HTTPError as exc:
        return exc.code, {"detail": exc.read().decode(errors="replace")}, (time.perf_counter() - started) * 1e3


def smoke(url: str, place: Place, run: str, k: int = 10) -> dict:
    """The deployed endpoint serves runs/<run> (/healthz) and answers a recommendation for one of the
    run's users with items; StepFailed with the status and body otherwise."""
    users = _read_json(place.run_dir(run) / "data" / "summary.json", "the prepared data's summary").get("example_users")
    if not users:
        raise StepFailed(f"runs/{run}/data/summary.json names no example users to ask for")
    code, health, _ = _call(f"{url}/healthz")
    if code != 200:
        raise StepFailed(f"smoke: GET {url}/healthz answered {code}: {health}")
    served = health["retriever"]["checkpoint"]
    if f"/{objects.run_dir(run)}/" not in served + "/":
        raise StepFailed(f"smoke: {url} serves {served}, not runs/{run}: the deployment did not take")
    code, body, ms = _call(f"{url}/v1/recommend", {"user_id": users[0], "k": k})
    if code != 200 or not body.get("items"):
        raise StepFailed(f"smoke: POST {url}/v1/recommend for user {users[0]!r} answered {code}: {body}")
    return {
        "user_id": users[0],
        "items": [i["item_id"] for i in body["items"]],
        "latency_ms": round(ms, 1),
        "checkpoint": served,
        "weights_source": health["ranker"]["weights_source"],
    }
