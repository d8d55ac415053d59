"""Where runs live and what a run directory holds: the one place training (Ray Train and
torchrun), fine-tuning, Tune, Serve and the benches find runs and checkpoints.

    $ARGUS_HOME/runs/<run>/           relative paths resolve against $ARGUS_HOME (else the working directory)
      config.yaml schema.json spec.json vocab/   the resolved job config and the data contract
      data/                            the prepared splits (Parquet) and summary.json
      checkpoint_<...>/                one per evaluated epoch: .metadata (DCP shards), train_state.json,
                                       config.yaml, schema.json, spec.json, vocab/
      metrics.json curves.png          the result, written when the run ends
      tensorboard/ logs/               curves and the run's logs
      serving/                         what Serve derives from the run once (user store, ANN index)

Ray Train names its checkpoints `checkpoint_<time>`, torchrun `checkpoint_torchrun_<epoch>`;
both are complete once their `.metadata` and `train_state.json` are written, and both are ordered
by the epoch in train_state.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

_log = logging.getLogger(__name__)

HOME_ENV = "ARGUS_HOME"  # relative paths resolve against this (default: the working directory)
RUNS = "runs"  # where a run without run.dir goes, under $ARGUS_HOME
CHECKPOINT_GLOB = "checkpoint_*"
TRAIN_STATE = "train_state.json"
METRICS = "metrics.json"


class CheckpointError(ValueError):
    """A run or checkpoint that cannot be read; the message says which path and why."""


def absolute(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(os.environ.get(HOME_ENV, os.getcwd())) / p).resolve()


def new_run_dir(name: str = "", prefix: str = "argus") -> Path:
    """`name` (a run.dir) resolved, else $ARGUS_HOME/runs/<prefix>-<local time>."""
    return absolute(name or f"{RUNS}/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def torchrun_checkpoint_name(epoch: int) -> str:
    return f"checkpoint_torchrun_{epoch:06d}"


def checkpoint_epoch(checkpoint: Path) -> dict:
    """The checkpoint's train_state.json (epoch, best_epoch, ...), {} when absent."""
    path = checkpoint / TRAIN_STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints (.metadata and train_state.json written), oldest epoch first."""
    done = [
        p for p in Path(run_dir).glob(CHECKPOINT_GLOB) if (p / ".metadata").is_file() and (p / TRAIN_STATE).is_file()
    ]
    return sorted(done, key=lambda p: (checkpoint_epoch(p).get("epoch", 0), p.stat().st_mtime, p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_score(checkpoint: Path, metric: str = "ndcg@10") -> float:
    """The validation `metric` of the epoch a checkpoint holds, as its train_state.json records it
    (−inf when it records none): the score by which checkpoints are kept."""
    state = checkpoint_epoch(checkpoint)
    history = state.get("history") or []
    value = (
        history[-1].get("validation", {}).get(metric)
        if history and history[-1].get("epoch") == state.get("epoch")
        else None
    )
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("-inf")


def checkpoints_beyond(run_dir: Path, keep: int) -> list[Path]:
    """The run's checkpoints outside the `keep` best by validation NDCG@10 and the latest — what Ray
    Train drops with `checkpoint_score_attribute` (the torchrun path prunes these)."""
    ckpts = checkpoints(run_dir)
    kept = set(sorted(ckpts, key=checkpoint_score, reverse=True)[: max(keep, 1)]) | set(ckpts[-1:])
    return [c for c in ckpts if c not in kept]


def checkpoint_of_epoch(run_dir: Path, epoch: int | None) -> Path | None:
    """The newest complete checkpoint of `epoch`, None when none was kept."""
    for ckpt in reversed(checkpoints(run_dir)):
        if checkpoint_epoch(ckpt).get("epoch") == epoch:
            return ckpt
    return None


def best_checkpoint(run_dir: Path) -> Path:
    """The kept checkpoint of the run's best validation epoch, else the latest one."""
    ckpts = checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(
            f"{run_dir} holds no complete {CHECKPOINT_GLOB} directory (.metadata and {TRAIN_STATE}); "
            "is it a training run?"
        )
    best_epoch = checkpoint_epoch(ckpts[-1]).get("best_epoch")
    found = checkpoint_of_epoch(run_dir, best_epoch)
    if found is not None:
        return found
    _log.warning(
        "%s: the best epoch's (%s) checkpoint was not kept; serving the latest, %s", run_dir, best_epoch, ckpts[-1].name
    )
    return ckpts[-1]


def resolve_checkpoint(path: str = "", runs_root: str = RUNS) -> Path:
    """A checkpoint dir as is; a run dir → its best checkpoint; "" → newest run under runs_root."""
    if path:
        p = absolute(path)
        if not p.exists():
            raise CheckpointError(f"checkpoint={path!r}: {p} does not exist")
        return p if (p / ".metadata").is_file() else best_checkpoint(p)
    root = absolute(runs_root)
    runs = [d for d in root.glob("*") if d.is_dir() and checkpoints(d)] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no training run with checkpoints under {root}; train one (`make run`) or pass checkpoint=<run dir>"
        )
    newest = max(runs, key=lambda d: checkpoints(d)[-1].stat().st_mtime)
    return best_checkpoint(newest)


def wait_for_run(path: str, timeout_s: float, poll_s: float = 10.0) -> None:
    """Block until the training run at `path` has finished (its metrics.json exists), so a tuning
    job or a service started beside the training job (e.g. one `kubectl apply`) uses its best
    checkpoint. `timeout_s` 0 returns at once; past it, CheckpointError names the path."""
    if timeout_s <= 0:
        return
    run_dir = absolute(path)
    done = run_dir / METRICS
    deadline = time.monotonic() + timeout_s
    last_said = 0.0
    while not done.is_file():
        now = time.monotonic()
        if now >= deadline:
            raise CheckpointError(f"{run_dir}: training did not finish within {timeout_s:g}s (no {METRICS})")
        if now - last_said >= 60:
            kept = len(checkpoints(run_dir)) if run_dir.is_dir() else 0
            _log.warning(
                "waiting for the training run %s to finish (%d checkpoint(s) so far; %.0fs left)",
                run_dir,
                kept,
                deadline - now,
            )
            last_said = now
        time.sleep(min(poll_s, max(deadline - now, 0.1)))
