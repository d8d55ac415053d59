"""Driver of `jobs/finetune_argus.py`: resolve the pre-trained run, build the request tables,
run the slate task through Ray Train, write metrics.json."""

from __future__ import annotations

import json
import time

import ray

from argus_models.rundir import absolute, resolve_checkpoint
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config, to_dict
from argus_platform.data.prepare import link_prepared, load_prepared
from argus_platform.finetune.config import FinetuneConfig
from argus_platform.finetune.loop import slate_loop_per_worker
from argus_platform.finetune.requests import build_requests, default_impressions
from argus_platform.raytrain import fit, init_ray, make_trainer, say_where_logs_go


def finetune(cfg: FinetuneConfig) -> dict:
    started = time.time()
    checkpoint = resolve_checkpoint(cfg.pretrained)
    pretrained_run = checkpoint.parent
    train_cfg = load_config(TrainJobConfig, checkpoint / "config.yaml")
    out = absolute(cfg.run_dir) if cfg.run_dir else pretrained_run / f"finetune-{cfg.mode}"
    out.mkdir(parents=True, exist_ok=True)
    link_prepared(pretrained_run, out)  # Tune and Serve read a fine-tuned run like its pre-trained one
    print(f"[finetune] {cfg.mode} from {checkpoint} into {out}", flush=True)
    prepared = load_prepared(pretrained_run)
    impressions = absolute(cfg.impressions) if cfg.impressions else default_impressions(pretrained_run)
    summary = build_requests(prepared, pretrained_run, impressions, cfg.slate_size, out / "requests")
    print(
        f"[finetune] requests {summary['requests']} from {summary['rows']:,} impressions; "
        f"skipped {summary['skipped'] or 'none'}",
        flush=True,
    )
    if not summary["requests"]["train"]:
        raise ValueError(f"no training requests in {impressions}: nothing to fine-tune on")
    init_ray(cfg.scaling.local_num_cpus, quiet=not cfg.verbose)
    say_where_logs_go(out, "verbose=true", "[finetune]")
    datasets = {s: ray.data.read_parquet(p).materialize() for s, p in summary["paths"].items()}
    trainer = make_trainer(
        slate_loop_per_worker,
        {
            "finetune": to_dict(cfg),
            "train": to_dict(train_cfg),
            "checkpoint": str(checkpoint),
            "pretrained_run": str(pretrained_run),
            "run_dir": str(out),
        },
        cfg.scaling,
        out,
        datasets,
        keep=2,
    )
    result = fit(trainer, out)
    final = (result.metrics or {}).get("final")
    if not final:
        raise RuntimeError(f"fine-tuning finished without metrics; see the logs above and {out}")
    final.update(
        run_dir=str(out),
        pretrained=str(checkpoint),
        requests=summary["requests"],
        skipped=summary["skipped"],
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        seconds=round(time.time() - started, 1),
    )
    (out / "metrics.json").write_text(json.dumps(final, indent=2))
    return final


def format_finetune(final: dict) -> str:
    lines = [f"{'held-out metric':<28}{'pre-trained':>12}{'fine-tuned':>12}"]
    for split in ("validation", "test"):
        for k, v in sorted(final["before"][split].items()):
            if isinstance(v, float):
                lines.append(f"{split + ' ' + k:<28}{v:>12.4f}{final['after'][split][k]:>12.4f}")
    lines.append(f"best epoch {final['best_epoch']} of {final['epochs_trained']}; run {final['run_dir']}")
    lines.append(f"checkpoint {final['checkpoint']}")
    return "\n".join(lines)
