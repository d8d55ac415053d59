"""Deploy the Serve config (serve/argus.yaml) from Python, the way `serve run <config>` and a
RayService do: through the controller's config path, so `user_config` changes reconfigure
running replicas in place instead of restarting them. Used by the benchmark and the tests."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[1] / "argus.yaml"


def serve_config(path: str | Path = CONFIG, args: dict | None = None, user_configs: dict[str, dict] | None = None,
                 host: str = "127.0.0.1", port: int = 8000) -> dict:
    """The YAML as a dict, with builder args and per-deployment user_config keys overridden."""
    cfg = yaml.safe_load(Path(path).read_text())
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": host, "port": port}
    app = cfg["applications"][0]
    app["args"] = {**app.get("args", {}), **(args or {})}
    for dep in app.get("deployments", []):
        extra = (user_configs or {}).get(dep["name"])
        if extra is not None:
            dep["user_config"] = {**dep.get("user_config", {}), **extra}
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
    raise TimeoutError(f"applications {sorted(names)} not RUNNING after {timeout_s:.0f}s: {serve.status().applications}")
