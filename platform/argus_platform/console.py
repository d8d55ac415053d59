"""A quiet terminal: our progress lines on it, everything else in log files.

Ray forwards every worker's and actor's output to the driver (Ray Data's execution plans, FBGEMM's
table dumps, Ray Train's controller, library warnings). A training job started by us runs Ray with
`log_to_driver=False`, so that output stays in Ray's log files (linked as `<run dir>/logs/ray`), and
rank 0 copies each of its `[argus]` lines into `<run dir>/logs/progress.log`, which the driver
follows and prints. `run.verbose=true` sends Ray's forwarding back to the terminal instead.
Errors are never hidden: a failed worker's exception reaches the driver through Ray Train.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

PROGRESS_LOG = Path("logs") / "progress.log"
PREFIX = ("[argus]", "[finetune]")  # the job's own lines


class ProgressTee:
    """sys.stdout for rank 0: writes through, and appends each complete line starting with `[argus]`
    (or `[finetune]`) to `path`, with the indented lines that continue it (a printed plan), flushed per line so a
    follower sees it at once."""

    def __init__(self, inner, path: Path) -> None:
        self.inner, self.path, self.pending, self.ours = inner, Path(path), "", False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        self.inner.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            starts = line.lstrip().startswith(PREFIX)
            self.ours = starts or (self.ours and line.startswith((" ", "\t")))
            if self.ours:
                self.file.write((line.lstrip() if starts else line) + "\n")
                self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def tee_progress(run_dir: Path) -> None:
    """Rank 0 of a Ray Train worker group: copy our lines to the run's progress log."""
    if not isinstance(sys.stdout, ProgressTee):
        sys.stdout = ProgressTee(sys.stdout, Path(run_dir) / PROGRESS_LOG)


class Follow:
    """Prints the lines appended to `path` while the block runs (from its size at the start), and
    the rest once it ends."""

    def __init__(self, path: Path, every: float = 0.5) -> None:
        self.path, self.every = Path(path), every
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="argus-progress")

    def __enter__(self) -> Follow:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._drain(final=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self._drain()

    def _drain(self, final: bool = False) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        if not final:
            data = data[: data.rfind(b"\n") + 1]  # complete lines only
        if data:
            self.offset += len(data)
            sys.stdout.write(data.decode("utf-8", errors="replace"))
            sys.stdout.flush()


def link_ray_logs(run_dir: Path) -> Path | None:
    """`<run dir>/logs/ray` → this machine's Ray session logs (a local Ray); None when there are none here."""
    try:
        import ray

        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # joined a remote cluster: its logs live on its nodes
        return None
    link = Path(run_dir) / "logs" / "ray"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(logs, target_is_directory=True)
    return link
