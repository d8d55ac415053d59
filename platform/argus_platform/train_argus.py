"""Driver of the training job (`jobs/train_argus.py`): run directory, Ray, data preparation,
the TorchTrainer, metrics.json and the summary table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import ray
import yaml

from argus_models.config import ModelConfig, ModelSchema, multi_hash_buckets, recjpq_shape, time_buckets
from argus_models.rundir import CHECKPOINT_GLOB, new_run_dir
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import to_dict
from argus_platform.data.prepare import PreparedRun, is_prepared, prepare_data
from argus_platform.item_parts import write_recjpq_codes
from argus_platform.raytrain import fit, init_ray, make_trainer, resolve_max_failures, say_where_logs_go
from argus_platform.sharding.plan import check_kernels
from argus_platform.train_loop import train_loop_per_worker


def resolve_run_dir(cfg: TrainJobConfig) -> Path:
    """`run.dir`, else runs/argus-<time>; relative paths resolve against $ARGUS_HOME (else the working
    directory), as Serve and Tune resolve them, so all three agree on where runs live."""
    return new_run_dir(cfg.run.dir)


def model_schema(prepared: PreparedRun, model: ModelConfig) -> ModelSchema:
    return ModelSchema(
        num_items=prepared.vocab.num_items,
        contexts=prepared.vocab.context_sizes(),
        actions=[a.head() for a in prepared.spec.actions],
        item_features=prepared.item_features.features if prepared.item_features else [],
        item_hash_buckets=multi_hash_buckets(model),
        **dict(zip(("recjpq_splits", "recjpq_sub_items"), recjpq_shape(model, prepared.vocab.num_items))),
        time_buckets=time_buckets(model, prepared.spec.event_time),
    )


def write_schema(prepared: PreparedRun, cfg: TrainJobConfig, run_dir: Path) -> ModelSchema:
    """<run dir>/schema.json, and the RecJPQ codes when the model asks for them (before any worker starts)."""
    schema = model_schema(prepared, cfg.model)
    schema.save(run_dir / "schema.json")
    if schema.recjpq_splits:
        line = write_recjpq_codes(prepared.paths["train"], schema, run_dir, cfg.model.embedding_dim, cfg.optim.seed)
        print(f"[argus] {line}", flush=True)
    return schema


MATERIALIZE_BELOW_BYTES = 128 << 20  # larger splits stream, so the driver never holds a large log


def split_dataset(path: str, shuffle_seed: int | None = None) -> "ray.data.Dataset":
    """A split as a Ray Dataset. Small splits are read here, one block per Parquet file, and put in
    the object store once, so each epoch streams blocks to the workers without re-reading Parquet
    (and without the seconds a distributed read costs for a few files); large ones stream from storage.

    `shuffle_seed`: the blocks (one per file) in a random order, a new one every epoch. A streamed
    split shuffles its files before the read: shuffling its blocks instead (`randomize_block_order`)
    is an all-to-all step that read the whole split before the first batch (~25 s of each epoch of a
    10M-event log on 2 cores went to that wait)."""
    files = sorted(Path(path).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"prepared split {path} holds no Parquet files; delete the run directory's "
            "data/ folder to prepare the data again"
        )
    if sum(f.stat().st_size for f in files) >= MATERIALIZE_BELOW_BYTES:
        shuffle = None if shuffle_seed is None else ray.data.FileShuffleConfig(seed=shuffle_seed)
        return ray.data.read_parquet(path, shuffle=shuffle)
    ds = ray.data.from_arrow([pq.read_table(f) for f in files])
    return ds if shuffle_seed is None else ds.randomize_block_order(seed=shuffle_seed)


def print_data(prepared: PreparedRun, cfg: TrainJobConfig, started: float) -> None:
    """What the prepared data holds: users, items, events, quarantined rows, split sizes."""
    v = prepared.summary["validation"]
    print(
        f"[argus] data: {prepared.summary['num_users']:,} users, {prepared.summary['num_items']:,} items, "
        f"{v['clean_rows']:,} events; {v['quarantined_rows']:,} rows quarantined {v['quarantine_reasons'] or ''}; "
        f"split {cfg.data.split} rows {prepared.summary['rows']} ({time.time() - started:.0f}s)",
        flush=True,
    )
    if prepared.item_features:
        st = prepared.item_features.stats
        print(
            f"[argus] item features {st['values']} (values per feature) from {st['path']}: "
            f"{st['quarantined_rows']:,} rows quarantined"
            f"{' ' + str(st['quarantine_reasons']) if st['quarantine_reasons'] else ''}, "
            f"{st['rows_outside_catalogue']:,} rows outside the catalogue, "
            f"{st['catalogue_items_without_features']:,} catalogue items without a row",
            flush=True,
        )


def prepare_only(cfg: TrainJobConfig) -> dict:
    """Validate and prepare the data into the run directory (what training would do first) and stop:
    `jobs/train_argus.py --prepare-only`. A later training run with the same run.dir and data config
    reuses it. Returns the preparation summary (also in <run dir>/data/summary.json)."""
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[argus] run directory: {run_dir} (preparing the data only)", flush=True)
    if not is_prepared(cfg.data, run_dir):  # reusing needs no Ray
        init_ray(cfg.scaling.local_num_cpus, quiet=not cfg.run.verbose)
    started = time.time()
    prepared = prepare_data(cfg.data, run_dir)
    print_data(prepared, cfg, started)
    return {**prepared.summary, "run_dir": str(run_dir)}


def train(cfg: TrainJobConfig, callbacks: list | None = None) -> dict:
    """Run the whole job; returns the final metrics (also written to <run dir>/metrics.json).
    `callbacks`: Ray Train callbacks (Tune passes one that forwards every report to its trial)."""
    check_kernels(cfg, "cuda" if cfg.scaling.use_gpu else "cpu")
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.json"
    config_text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    finished = metrics_path.is_file() and config_path.is_file() and config_path.read_text() == config_text
    if finished and not callbacks:  # a Tune trial always reports its epochs
        # A re-submitted job (a retried pipeline, a re-applied RayJob) of a run that has finished.
        print(
            f"[argus] {run_dir} holds a finished run of this very config: keeping its metrics.json "
            "(delete that file to evaluate again, or change the config, e.g. more epochs, to train on)",
            flush=True,
        )
        return json.loads(metrics_path.read_text())
    resumed = any(p.is_dir() for p in run_dir.glob(CHECKPOINT_GLOB))
    if resumed:
        print(f"[argus] run directory {run_dir} has checkpoints: resuming from the latest", flush=True)
    config_path.write_text(config_text)
    print(f"[argus] run directory: {run_dir}", flush=True)
    init_ray(cfg.scaling.local_num_cpus, quiet=not cfg.run.verbose)
    say_where_logs_go(run_dir, "run.verbose=true")
    started = time.time()
    prepared = prepare_data(cfg.data, run_dir)
    print_data(prepared, cfg, started)
    write_schema(prepared, cfg, run_dir)
    datasets = {
        split: split_dataset(path, cfg.optim.seed if split == "train" else None)
        for split, path in prepared.paths.items()
    }
    max_failures = resolve_max_failures(cfg.run.max_failures)
    print(
        f"[argus] after a worker failure Ray Train restarts the worker group from the last checkpoint up to "
        f"{max_failures} time(s) (run.max_failures={cfg.run.max_failures})",
        flush=True,
    )
    trainer = make_trainer(
        train_loop_per_worker,
        {"job": to_dict(cfg), "run_dir": str(run_dir), "report_every_epoch": bool(callbacks)},
        cfg.scaling,
        run_dir,
        datasets,
        keep=cfg.run.checkpoints_to_keep,
        max_failures=max_failures,
        callbacks=callbacks,
    )
    result = fit(trainer, run_dir)
    final = (result.metrics or {}).get("final")
    if not final:
        raise RuntimeError(f"training finished without final metrics; see the logs above and {run_dir}")
    final["run_dir"] = str(run_dir)
    final["data"] = {
        k: prepared.summary[k] for k in ("num_users", "num_items", "rows", "validation", "users_too_short")
    }
    final["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    final["seconds"] = round(time.time() - started, 1)
    metrics_path.write_text(json.dumps(final, indent=2))
    return final


def format_summary(final: dict) -> str:
    """Model vs popularity on the test split, as a small table."""
    pop = final["baselines"]["popularity"]["test"]
    test = final["test"]
    keys = [k for k in ("ndcg@10", "hr@10", "ndcg@100", "hr@100", "mrr", "coverage@10") if k in test]
    lines = [f"{'test metric':<14}{'model':>10}{'± s.e.':>9}{'popularity':>12}"]
    for k in keys:
        se = _num(test[f"{k}_se"], "± ") if f"{k}_se" in test else ""  # standard error over the test users
        lines.append(f"{k:<14}{_num(test[k]):>10}{se:>9}{_num(pop[k]):>12}")
    heads = sorted(k for k in test if "/" in k)
    lines += [f"{k:<24}{_num(test[k]):>10}" for k in heads]
    lines.append(f"best epoch {final['best_epoch']} of {final['epochs_trained']}; run {final['run_dir']}")
    lines.append(f"checkpoint {final['checkpoint']}")
    return "\n".join(lines)


def _num(value, prefix: str = "") -> str:
    """4-decimal figure, or n/a (e.g. an AUC over a single class is undefined)."""
    return "n/a" if value is None else f"{prefix}{value:.4f}"
