"""The local backend: the jobs' own CLIs (`jobs/*.py`) in subprocesses of the training stack's Python,
on a local Ray, and a Serve server on loopback (`python -m argus_serve.local`) that outlives the step
that started it, the way a RayService outlives the pipeline run that patched it.

The pipeline's steps run in the Kubeflow Pipelines environment (kfp and the training stack need
different protobuf majors), so they reach the stack through a Python executable: $ARGUS_PYTHON, else
<checkout>/.venv/bin/python (`make setup`). The checkout is $ARGUS_REPO (`run-local` sets it)."""

from __future__ import annotations

import collections
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from argus_platform.pipeline.kube import StepFailed
from argus_platform.pipeline.objects import script

TAIL_LINES = 40


def checkout() -> str:
    repo = os.environ.get("ARGUS_REPO", "")
    if not repo or not (Path(repo) / "jobs").is_dir():
        raise StepFailed(
            f"the local backend runs the jobs of a checkout: ARGUS_REPO={repo!r} is not one (jobs/ not found); "
            "`python jobs/pipeline_argus.py run-local` sets it"
        )
    return repo


def stack_python(repo: str) -> str:
    python = os.environ.get("ARGUS_PYTHON") or str(Path(repo) / ".venv" / "bin" / "python")
    if not Path(python).is_file():
        raise StepFailed(f"no training-stack Python at {python}: run `make setup` in {repo} or set ARGUS_PYTHON")
    return python


def _env(home: str) -> dict[str, str]:
    env = {**os.environ, "ARGUS_HOME": home}
    env.pop("VIRTUAL_ENV", None)  # the kfp environment's; the stack's Python knows its own
    return env


def run_job(job: str, args: list[str], home: str, timeout_s: float) -> None:
    """`python jobs/<job>.py args` with ARGUS_HOME=home, its output streamed; StepFailed on a non-zero
    exit, with the command and the last lines."""
    repo = checkout()
    cmd = [stack_python(repo), script(job, repo), *args]
    print(f"[pipeline] $ {shlex.join(cmd)}", flush=True)
    Path(home).mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        cmd, cwd=home, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        fired = threading.Event()
        watchdog = threading.Timer(timeout_s, lambda: (fired.set(), proc.kill()))  # a silent, hung job too
        watchdog.start()
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                tail.append(line.rstrip())
            code = proc.wait()
        finally:
            watchdog.cancel()
    if fired.is_set():
        raise StepFailed(f"{job} still running after {timeout_s / 60:.0f} minutes, stopped: {shlex.join(cmd)}")
    if code != 0:
        last = "\n  ".join(tail)
        raise StepFailed(f"{job} exited with code {code}: {shlex.join(cmd)}\n  {last}")


def _state_file(home: str, name: str) -> Path:
    return Path(home) / "runs" / f".serve-{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(home: str, name: str, timeout_s: float = 60.0) -> bool:
    """Stop the local server `name` if one runs (SIGTERM to its process group, SIGKILL after
    timeout_s); True if one was running."""
    state = _state_file(home, name)
    if not state.is_file():
        return False
    pid = json.loads(state.read_text())["pid"]
    running = _alive(pid)
    if running:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout_s
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    state.unlink()
    return running


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def start_server(name: str, checkpoint: str, weights_file: str, home: str, port: int, timeout_s: float) -> dict:
    """Replace the local server `name` by one serving `checkpoint` with `weights_file` on
    127.0.0.1:port; return once Serve reports the application RUNNING (the server's ready file)."""
    repo = checkout()
    if stop_server(home, name):
        print(f"[pipeline] stopped the earlier local server {name!r}", flush=True)
    if not _port_free(port):
        raise StepFailed(f"port {port} on 127.0.0.1 is in use: stop what listens there or set serve_port")
    logs = Path(home) / "runs" / f".serve-{name}.log"
    ready = Path(home) / "runs" / f".serve-{name}.ready.json"
    ready.unlink(missing_ok=True)
    cmd = [stack_python(repo), "-m", "argus_serve.local", "--checkpoint", checkpoint, "--weights-file", weights_file]
    cmd += ["--port", str(port), "--ready-file", str(ready), "--timeout-s", str(timeout_s)]
    print(f"[pipeline] $ {shlex.join(cmd)}  (log: {logs})", flush=True)
    with open(logs, "w") as log_file:
        # Its own session: it outlives this step, and the step's output pipe is not held open by it.
        proc = subprocess.Popen(
            cmd,
            cwd=home,
            env=_env(home),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _state_file(home, name).write_text(json.dumps({"pid": proc.pid, "port": port, "log": str(logs)}))
    started = time.time()
    while not ready.is_file():
        if proc.poll() is not None:
            tail = "\n  ".join(logs.read_text().splitlines()[-TAIL_LINES:])
            raise StepFailed(f"the local Serve server exited with code {proc.returncode} before RUNNING:\n  {tail}")
        if time.time() - started > timeout_s:
            stop_server(home, name)
            raise StepFailed(f"the local Serve server was not RUNNING after {timeout_s:.0f}s; log {logs}")
        time.sleep(0.5)
    info = json.loads(ready.read_text())
    print(f"[pipeline] Serve on {info['url']}: {info['applications']} ({time.time() - started:.0f}s)", flush=True)
    return info
