"""The same training loop under `torchrun`, without Ray Train (for debugging with pdb, py-spy, ...).

    torchrun --nproc-per-node 2 jobs/train_argus.py --set run.dir=runs/debug

Rank 0 prepares the data (Ray Data on a local Ray, as in the Ray path) while the others wait; each
rank then reads its own rows of the prepared splits. Checkpoints go to
`<run dir>/checkpoint_torchrun_<epoch>/` and a rerun resumes from the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from argus_models.rundir import RUNS, absolute, checkpoints_beyond, latest_checkpoint, torchrun_checkpoint_name
from argus_platform.config import TrainJobConfig
from argus_platform.train_loop import run_worker
from argus_platform.worker import json_safe


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def _rank_iterator(paths: dict[str, str], rank: int, world: int, seed: int):
    tables = {split: pq.ParquetDataset(path).read() for split, path in paths.items()}
    epochs = {"train": 0}

    def iterate(split: str, batch_size: int) -> Iterator[pa.Table]:
        table = tables[split]
        rows = np.arange(rank, table.num_rows, world)
        if split == "train":
            # every rank takes the same number of full batches, or the collectives would hang
            per_rank = table.num_rows // world
            rows = np.random.default_rng([seed, epochs["train"], rank]).permutation(rows[:per_rank])
            rows = rows[: len(rows) // batch_size * batch_size]
            epochs["train"] += 1
        for start in range(0, len(rows), batch_size):
            yield table.take(pa.array(rows[start : start + batch_size]))

    return iterate


def torchrun_run_dir(cfg: TrainJobConfig) -> Path:
    """Every rank must agree on the directory: an empty run.dir becomes runs/argus-torchrun-<run id>
    (under $ARGUS_HOME, as every other job's runs)."""
    return absolute(cfg.run.dir or f"{RUNS}/argus-torchrun-{os.environ['TORCHELASTIC_RUN_ID']}")


def run_torchrun(cfg: TrainJobConfig) -> dict:
    """Called on every torchrun rank; returns the final metrics (rank 0 writes metrics.json)."""
    run_dir = torchrun_run_dir(cfg)
    backend = "nccl" if cfg.scaling.use_gpu else "gloo"
    dist.init_process_group(backend, timeout=timedelta(hours=2))  # rank 0 may spend a while preparing data
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        import ray

        from argus_platform.data.prepare import prepare_data
        from argus_platform.raytrain import init_ray
        from argus_platform.train_argus import write_schema

        init_ray(cfg.scaling.local_num_cpus)
        prepared = prepare_data(cfg.data, run_dir)
        write_schema(prepared, cfg, run_dir)
        ray.shutdown()
    dist.barrier()
    paths = json.loads((run_dir / "data" / "summary.json").read_text())["splits"]
    iterate = _rank_iterator(paths, rank, world, cfg.optim.seed)

    def report(metrics: dict, ckpt: Path | None) -> None:
        if ckpt is None:
            return
        target = run_dir / torchrun_checkpoint_name(metrics["epoch"])
        target.mkdir(exist_ok=True)
        for f in ckpt.iterdir():  # each rank contributes its own shard files
            (shutil.copytree if f.is_dir() else shutil.copy)(
                f, target / f.name, **({"dirs_exist_ok": True} if f.is_dir() else {})
            )
        dist.barrier()
        if rank == 0:  # the best run.checkpoints_to_keep and the latest, as Ray Train keeps them
            for old in checkpoints_beyond(run_dir, cfg.run.checkpoints_to_keep):
                shutil.rmtree(old)

    final = run_worker(cfg, run_dir, iterate, latest_checkpoint(run_dir), report, device)
    dist.barrier()
    if rank == 0:
        final["run_dir"] = str(run_dir)
        final["checkpoint"] = str(latest_checkpoint(run_dir))
        (run_dir / "metrics.json").write_text(json.dumps(json_safe(final), indent=2))
    dist.destroy_process_group()
    return final
