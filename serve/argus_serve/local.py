"""Serve one run on loopback until stopped: a local Ray, the Serve config of serve/argus.yaml
deployed through the controller's config path (as `serve run` and a RayService do), a ready file
once Serve reports the application RUNNING, and a clean shutdown on SIGTERM or SIGINT.

    python -m argus_serve.local --checkpoint runs/<run> --weights-file runs/<run>/tune/weights.yaml \\
        --port 8000 --ready-file /tmp/argus-ready.json

The local backend of the Kubeflow pipeline's deploy step starts it as a background process (the
cluster backend patches the RayService instead); `make serve` runs it with `--events-store local`
(a redis-server of its own for POST /v1/events).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from argus_serve.launch import SERVE_ENV, deploy, serve_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a run on loopback until SIGTERM/SIGINT.")
    parser.add_argument("--checkpoint", default="", help="run dir or checkpoint dir ('' = the newest run under runs/)")
    parser.add_argument("--weights-file", default="", help="ranking weights (Tune's weights.yaml); '' = as configured")
    parser.add_argument("--config", default="", help="Serve config (default serve/argus.yaml)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray")
    parser.add_argument("--ready-file", default="", help="written (JSON: url, applications) once RUNNING")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up when not RUNNING by then")
    parser.add_argument(
        "--events-store",
        default="",
        help="the event store: a Redis URL, `local` (a redis-server started here, data in --redis-dir, "
        "stopped with the service) or '' (the histories frozen in the run; no POST /v1/events)",
    )
    parser.add_argument("--redis-dir", default="runs/redis", help="data directory of the local redis-server")
    parser.add_argument("--redis-port", type=int, default=6379, help="port of the local redis-server")
    parser.add_argument(
        "--auth-token-file", default="", help="require `Authorization: Bearer <the file's token>` ('' = as configured)"
    )
    return parser.parse_args(argv)


def ranker_weights(weights_file: str) -> dict:
    """The Ranker's user_config for a weights file: the file replaces inline weights."""
    return {"weights_file": weights_file, "weights": {}} if weights_file else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    redis_server = None
    events_store = args.events_store
    if events_store == "local":
        from argus_serve.redis_local import RedisServer

        redis_server = RedisServer(args.redis_dir, args.redis_port).start()
        events_store = redis_server.url
        print(f"[serve] started redis-server for the event store: {events_store}, data in {args.redis_dir}", flush=True)
    config = serve_config(
        args.config or Path(__file__).resolve().parents[1] / "argus.yaml",
        args={"checkpoint": args.checkpoint, "events_store": events_store}
        | ({"auth_token_file": args.auth_token_file} if args.auth_token_file else {}),
        user_configs={"Ranker": ranker_weights(args.weights_file)},
        port=args.port,
    )
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        started = time.time()
        deploy(config, timeout_s=args.timeout_s)
        apps = {name: str(s.status.value) for name, s in serve.status().applications.items()}
        ready = {
            "url": f"http://127.0.0.1:{args.port}",
            "applications": apps,
            "checkpoint": args.checkpoint,
            "weights_file": args.weights_file,
            "events_store": events_store,
            "pid": os.getpid(),
            "seconds_to_running": round(time.time() - started, 1),
        }
        print(f"[serve] {json.dumps(ready)}", flush=True)
        if args.ready_file:
            tmp = Path(args.ready_file).with_suffix(".tmp")
            tmp.write_text(json.dumps(ready, indent=2))
            tmp.replace(args.ready_file)
        while not stop.wait(1.0):
            pass
        print("[serve] stopping", flush=True)
        serve.shutdown()
    finally:
        ray.shutdown()
        if redis_server is not None:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
