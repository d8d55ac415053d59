"""Per-worker fine-tuning: shard the slate task, load the pre-trained weights, evaluate, train,
evaluate again, checkpoint in the pre-trained format (Serve and Tune load it as they load any run)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from argus_models.config import ModelSchema
from argus_models.finetune import SlateObjective, SlateTask, pairwise_correct
from argus_models.losses import feedback_probability
from argus_models.model import ArgusDenseArch, ArgusSparseArch, lookup_local
from argus_platform.checkpoint import TrainState
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import from_dict
from argus_platform.data.prepare import load_prepared
from argus_platform.epoch import checkpoint_and_report, improved, say, start_worker, train_epoch
from argus_platform.evaluation import _gather_arrays, auc, normalized_entropy
from argus_platform.finetune.collate import SlateCollator
from argus_platform.finetune.config import FinetuneConfig
from argus_platform.sharding.gather import gather_tables
from argus_platform.sharding.plan import ShardedTask, shard
from argus_platform.worker import CHECKPOINT_SCORE, Iterate, Report, finite_score, run_ray_worker


def load_weights(checkpoint: Path, sharded: ShardedTask) -> None:
    """The pre-trained model state only (the optimizer starts fresh); any plan, any world size."""
    state = {"model": sharded.model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint))
    sharded.model.load_state_dict(state["model"])


@torch.no_grad()
def evaluate_slates(
    sharded: ShardedTask,
    train_cfg: TrainJobConfig,
    mode: str,
    batches: Iterable[pa.Table],
    collate: SlateCollator,
    device: torch.device,
) -> dict[str, float]:
    """Pairwise accuracy of the model's slate scores (pairwise mode: <q, v>), or per-action AUC and
    normalised entropy on impressions (ranker); collective over the workers."""
    dense = sharded.eval_dense(train_cfg)
    tables = dense.local_tables(gather_tables(sharded.model))
    dense.eval()
    objective = SlateObjective(dense, mode)
    correct = pairs = 0.0
    preds: dict[str, list] = {a.name: [] for a in dense.schema.actions}
    labels: dict[str, list] = {a.name: [] for a in dense.schema.actions}
    for table in batches:
        batch = collate(table).to(device)
        if batch.slate.shape[0] == 0:
            continue
        out = objective.slate_outputs(lookup_local(tables, batch.sparse_features), batch).float()
        valid = batch.slate > 0
        if mode == "pairwise":
            c, n = pairwise_correct(out, batch.clicked, valid)
            correct, pairs = correct + c, pairs + n
            continue
        logits = dense.action_logits(out)
        for j, head in enumerate(dense.schema.actions):
            if head.kind == "graded":
                continue
            preds[head.name].append(feedback_probability(head, logits[head.name])[valid].cpu().numpy())
            labels[head.name].append(batch.labels[..., j][valid].cpu().numpy())
    if mode == "pairwise":
        totals = torch.tensor([correct, pairs], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(totals)
        return {
            "pairwise_accuracy": float(totals[0] / totals[1]) if totals[1] else float("nan"),
            "pairs": int(totals[1]),
        }
    metrics = {}
    for head in dense.schema.actions:
        p, y = _gather_arrays(preds[head.name]), _gather_arrays(labels[head.name])
        if len(y):
            metrics[f"{head.name}/auc"] = auc(p, y >= 0.5)
            metrics[f"{head.name}/ne"] = normalized_entropy(p, y)
    aucs = [v for k, v in metrics.items() if k.endswith("/auc") and np.isfinite(v)]
    metrics["mean_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return metrics


def run_slate_worker(
    cfg: FinetuneConfig,
    train_cfg: TrainJobConfig,
    checkpoint: Path,
    pretrained_run: Path,
    iterate: Iterate,
    report: Report,
    device: torch.device,
) -> dict:
    schema = ModelSchema.load(checkpoint / "schema.json")
    counts = torch.from_numpy(np.load(checkpoint / "train_item_counts.npy"))
    precision = start_worker(train_cfg, cfg.seed, device)
    tcfg = replace(
        train_cfg, optim=replace(train_cfg.optim, dense_lr=cfg.dense_lr, sparse_lr=cfg.sparse_lr, precision=precision)
    )
    dense = ArgusDenseArch(tcfg.model, schema)
    task = SlateTask(
        ArgusSparseArch(schema, tcfg.model.embedding_dim, "meta"),
        SlateObjective(dense, cfg.mode, cfg.action_weights),
        tcfg.optim.precision,
        device.type,
    )
    sharded = shard(tcfg, schema, counts, device, task=task)
    load_weights(checkpoint, sharded)
    spec = load_prepared(pretrained_run).spec
    kinds = {a.name: (a.kind, a.num_codes()) for a in spec.actions}
    parts = dense.item_part_rows()  # multi-hash buckets or RecJPQ codes, from the checkpoint
    parts = None if parts is None else parts.cpu().numpy()
    collate = SlateCollator(schema, kinds, tcfg.model.max_seq_len + 1, cfg.slate_size, item_parts=parts)
    key = "pairwise_accuracy" if cfg.mode == "pairwise" else "mean_auc"

    def held_out() -> dict:
        return {
            s: evaluate_slates(sharded, tcfg, cfg.mode, iterate(s, 256), collate, device)
            for s in ("validation", "test")
        }

    before = held_out()
    say(f"[finetune] pre-trained: validation {before['validation']}")
    state = TrainState(best_metrics={"before": before})
    pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, device)
    for epoch in range(cfg.epochs):
        stats = train_epoch(
            pipeline,
            sharded.model,
            iterate("train", cfg.batch_size),
            collate,
            "the training requests are fewer than one batch of users per worker; lower batch_size",
        )
        steps = stats.steps
        state.epoch, state.step = epoch + 1, state.step + steps
        after = held_out()
        val = after["validation"].get(key, float("nan"))
        say(
            f"[finetune] epoch {epoch + 1}/{cfg.epochs}: train loss {stats.mean_loss:.4f} ({steps} steps, "
            f"{stats.seconds:.1f}s); validation {after['validation']}"
        )
        state.history.append({"epoch": state.epoch, "validation": after["validation"]})
        if improved(state, val):
            state.best_metrics = {"before": before, "after": after}
        final = {
            **state.best_metrics,
            "best_epoch": state.best_epoch,
            "epochs_trained": state.epoch,
            "mode": cfg.mode,
            "selection": f"best validation {key}",
            "requests_outside_window": collate.outside_window,
        }
        metrics = {"epoch": state.epoch, f"validation/{key}": val, CHECKPOINT_SCORE: finite_score(val), "final": final}
        checkpoint_and_report(sharded, state, tcfg, pretrained_run, metrics, report)
    return final


def slate_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. A restarted worker group fine-tunes again from the pre-trained checkpoint."""
    cfg = from_dict(FinetuneConfig, config["finetune"])
    train_cfg = from_dict(TrainJobConfig, config["train"])
    checkpoint, pretrained = Path(config["checkpoint"]), Path(config["pretrained_run"])
    run_ray_worker(
        config,
        lambda io, _resume: run_slate_worker(cfg, train_cfg, checkpoint, pretrained, io.iterate, io.report, io.device),
    )
