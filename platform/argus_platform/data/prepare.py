"""Data preparation for a run: source → canonical log (+ quarantine) → vocabulary → splits.

Everything lands in the run directory, so a resumed run (and Serve/Tune later) reuse it:
  data/events.parquet, data/{train,validation,test}/, data/summary.json,
  quarantine/events.parquet, vocab/, spec.json
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from argus_models.contract import USER_IDX
from argus_platform.configlib import from_dict, to_dict
from argus_platform.data.config import DataConfig
from argus_platform.data.history_stats import describe as describe_histories
from argus_platform.data.history_stats import history_stats
from argus_platform.data.item_features import ItemFeatureTable, build_item_features
from argus_platform.data.quarantine import write_canonical
from argus_platform.data.sequences import build_sequences
from argus_platform.data.sources import open_source, parquet_file
from argus_platform.data.spec import DatasetSpec
from argus_platform.data.vocab import Vocabulary, build_vocabulary

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    spec: DatasetSpec
    vocab: Vocabulary
    item_counts: np.ndarray  # [N+1] training-split counts
    paths: dict[str, str]  # split -> sequences directory
    summary: dict
    item_features: ItemFeatureTable | None = None  # item-side features of the catalogue, if configured


def _layout(run_dir: Path) -> dict[str, Path]:
    return {
        "events": run_dir / "data" / "events.parquet",
        "synthetic": run_dir / "data" / "synthetic",
        "splits": run_dir / "data",
        "summary": run_dir / "data" / "summary.json",
        "quarantine": run_dir / "quarantine" / "events.parquet",
        "item_quarantine": run_dir / "quarantine" / "item_features.parquet",
        "vocab": run_dir / "vocab",
        "counts": run_dir / "vocab" / "train_item_counts.npy",
        "spec": run_dir / "spec.json",
    }


def load_prepared(run_dir: Path) -> PreparedRun:
    p = _layout(run_dir)
    summary = json.loads(p["summary"].read_text())
    return PreparedRun(
        spec=from_dict(DatasetSpec, json.loads(p["spec"].read_text())),
        vocab=Vocabulary.load(p["vocab"]),
        item_counts=np.load(p["counts"]),
        paths=_split_paths(p["splits"], summary["splits"]),
        summary=summary,
        item_features=ItemFeatureTable.load(p["vocab"]),
    )


def _split_paths(data_dir: Path, recorded: dict[str, str]) -> dict[str, str]:
    """Each split in this run directory's data/ (so a copied or moved run directory reads its own
    copy); the recorded path where the run's data/ does not hold it."""
    here = {s: data_dir / s for s in recorded}
    return {s: str(here[s]) if here[s].is_dir() else path for s, path in recorded.items()}


def link_prepared(shared: Path, run_dir: Path) -> None:
    """Let `run_dir` read the data prepared once in `shared` (Tune trials, ablation variants):
    `prepare_data` then finds it and reuses it as long as the data config is the same."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("data", "vocab", "spec.json", "quarantine"):
        src, dst = shared / name, run_dir / name
        if src.exists() and not dst.exists():
            dst.symlink_to(src, target_is_directory=src.is_dir())


class Stages:
    """Seconds per preparation stage, in order (recorded in data/summary.json)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.time()

    def done(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self.last, 1)
        self.last = now


def example_users(test_split: str, vocab: Vocabulary, n: int = 3) -> list[str]:
    """Raw ids of a few users with a test row: what a smoke request to the service can ask for."""
    files = sorted(Path(test_split).rglob("*.parquet"))
    if not files:
        return []
    idx = pq.read_table(files[0], columns=[USER_IDX]).column(USER_IDX).to_numpy()[:n]
    return [str(vocab.users[i]) for i in idx]


def is_prepared(cfg: DataConfig, run_dir: Path) -> bool:
    """Whether run_dir holds data prepared under this data config (prepare_data would reuse it)."""
    summary = _layout(run_dir)["summary"]
    return summary.is_file() and json.loads(summary.read_text()).get("data_config") == to_dict(cfg)


def prepare_data(cfg: DataConfig, run_dir: Path) -> PreparedRun:
    """Prepare (or reuse, when the run directory already holds it for the same data config)."""
    p = _layout(run_dir)
    if p["summary"].is_file():
        prepared = load_prepared(run_dir)
        if prepared.summary.get("data_config") == to_dict(cfg):
            log.info("reusing prepared data in %s", p["splits"])
            return prepared
        raise ValueError(
            f"{run_dir} already holds data prepared with a different data config; "
            "use a new run.dir (or delete its data/ folder)"
        )
    started = time.time()
    stages = Stages()
    spec, chunks, source = open_source(cfg, p["synthetic"])
    stages.done("generate" if cfg.source == "synthetic" else "open")
    total = parquet_file(source).metadata.num_rows if str(source).endswith(".parquet") else None
    validation = write_canonical(spec, chunks, source, p["events"], p["quarantine"], cfg.max_bad_fraction, total)
    stages.done("validate")
    print(
        f"[argus] prepare: {validation['rows']:,} rows of {source} checked, {validation['quarantined_rows']:,} "
        f"quarantined ({stages.seconds['validate']:.0f}s)",
        flush=True,
    )
    vocab = build_vocabulary(p["events"], spec)
    vocab.save(p["vocab"])
    stages.done("vocabulary")
    item_features = None
    if cfg.item_features.path:
        item_features = build_item_features(cfg.item_features, vocab, p["item_quarantine"])
        item_features.save(p["vocab"])
        log.info("item features %s: %s", [f.name for f in item_features.features], item_features.stats)
    seqs = build_sequences(p["events"], vocab, spec, cfg, p["splits"])
    stages.done("sequences")
    histories = history_stats(seqs.paths["train"])
    print(f"[argus] prepare: {describe_histories(histories)}", flush=True)
    np.save(p["counts"], seqs.item_counts)
    p["spec"].write_text(json.dumps(to_dict(spec), indent=2))
    summary = {
        "data_config": to_dict(cfg),
        "validation": validation,
        "num_items": vocab.num_items,
        "num_users": len(vocab.users),
        "users_too_short": seqs.users_too_short,
        "split": cfg.split,
        "temporal_cuts": seqs.temporal_cuts,
        "rows": seqs.rows,
        "train_histories": histories,
        "splits": seqs.paths,
        "seconds": round(time.time() - started, 1),
        "stage_seconds": stages.seconds,
        "item_features": item_features.stats if item_features else None,
        "example_users": example_users(seqs.paths["test"], vocab),
    }
    p["summary"].write_text(json.dumps(summary, indent=2))
    log.info(
        "prepared %d users, %d items; split rows %s; %d users below data.min_events_per_user (%.1fs)",
        len(vocab.users),
        vocab.num_items,
        seqs.rows,
        seqs.users_too_short,
        time.time() - started,
    )
    return PreparedRun(
        spec=spec,
        vocab=vocab,
        item_counts=seqs.item_counts,
        paths=seqs.paths,
        summary=summary,
        item_features=item_features,
    )
