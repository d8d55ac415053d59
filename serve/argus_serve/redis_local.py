"""A local `redis-server` (the Debian package) for the event store: `make serve`, the tests and the
benchmark start one with their data in a directory of their own, the append-only file on (a
restart of the server keeps every acknowledged event; fsync once a second).

    python -m argus_serve.redis_local --dir runs/redis --port 6379    # in the foreground

On Kubernetes the store is the Redis StatefulSet of k8s/ instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_store(events_store: str, prefix: str) -> tuple[RedisServer | None, str]:
    """`local`: a redis-server started on a free port, its data in a new temporary directory, and
    its URL (stop the server when done); anything else is a Redis URL, used as it is."""
    if events_store != "local":
        return None, events_store
    import tempfile

    server = RedisServer(tempfile.mkdtemp(prefix=prefix), free_port()).start()
    return server, server.url


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`, its data (AOF) under `data_dir`."""

    def __init__(self, data_dir: str | Path, port: int, binary: str = "redis-server") -> None:
        self.data_dir, self.port = Path(data_dir), port
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise FileNotFoundError(
                f"{binary} not found: install the Debian package (`apt-get install redis-server`; `make serve` "
                "and `make test` do it) or point the service's events_store at a running Redis"
            )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip

    def start(self, timeout_s: float = 15.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]} "
                    f"(log: {self.data_dir / 'redis.log'})"
                )
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local redis-server for the event store (foreground).")
    parser.add_argument("--dir", default="runs/redis", help="data directory (append-only file, log)")
    parser.add_argument("--port", type=int, default=6379)
    args = parser.parse_args(argv)
    server = RedisServer(args.dir, args.port)
    print(f"[redis] {' '.join(server.command())}", flush=True)
    return subprocess.call(server.command())


if __name__ == "__main__":
    sys.exit(main())
