"""`jobs/ablate_argus.py`: train the same data and budget under several loss / negative / token
variants and tabulate the test metrics (the ablation tables of jobs/README.md come from here).

Each variant is a full training run (`train_argus.train`) in `<out_dir>/<variant>`; data is prepared
once and linked into every run. A variant whose `metrics.json` exists is not run again, so an
interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from argus_models.rundir import absolute
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config
from argus_platform.configlib import documented as _help
from argus_platform.data.prepare import link_prepared, prepare_data
from argus_platform.raytrain import init_ray, say_where_logs_go
from argus_platform.train_argus import train


def variant_overrides(name: str, base: TrainJobConfig) -> list[str]:
    """Overrides of one variant. Sampled variants keep the base config's total number of negatives.
    `name+key=value+...` is the variant `name` with more overrides (e.g. other negative counts)."""
    name, *extra = name.split("+")
    return _variant(name, base) + extra


def _variant(name: str, base: TrainJobConfig) -> list[str]:
    total = base.loss.in_batch_negatives + base.loss.uniform_negatives
    sampled = ["loss.exclude_history=false"]  # leaving the history out is a full-softmax option
    buckets = base.model.multi_hash_buckets or MULTI_HASH_BUCKETS
    table = {
        "full_softmax": ["loss.next_item=full_softmax"],
        "full_softmax_with_history": ["loss.next_item=full_softmax", "loss.exclude_history=false"],
        "logq_mixed": ["loss.next_item=logq", *sampled],
        "corrected_logq_mixed": ["loss.next_item=corrected_logq", *sampled],
        "corrected_logq_in_batch": [
            "loss.next_item=corrected_logq",
            f"loss.in_batch_negatives={total}",
            "loss.uniform_negatives=0",
            *sampled,
        ],
        "corrected_logq_mixed_three_token": [
            "loss.next_item=corrected_logq",
            "model.tokenization=three_token",
            *sampled,
        ],
        "full_softmax_ids_only": ["loss.next_item=full_softmax", "model.multi_hash_buckets=0"],
        "full_softmax_multi_hash": ["loss.next_item=full_softmax", f"model.multi_hash_buckets={buckets}"],
    }
    if name not in table:
        raise ConfigError(f"unknown ablation variant {name!r}; choose from {sorted(table)}")
    return table[name]


VARIANTS = [
    "full_softmax",
    "logq_mixed",
    "corrected_logq_mixed",
    "corrected_logq_in_batch",
    "corrected_logq_mixed_three_token",
]
OPTIONAL_VARIANTS = ["full_softmax_with_history", "full_softmax_ids_only", "full_softmax_multi_hash"]
MULTI_HASH_BUCKETS = (
    4096  # rows per hash table in full_softmax_multi_hash unless the base config sets model.multi_hash_buckets
)


@dataclass
class AblationConfig:
    train_config: str = _help("training YAML every variant starts from ('' = the embedded default)", "")
    train_overrides: list[str] = _help(
        "overrides for every variant, e.g. [data.path=..., optim.epochs=10]", factory=list
    )
    variants: list[str] = _help(
        "variants to run: "
        + ", ".join(VARIANTS)
        + " (also: full_softmax_with_history, when the base leaves the history "
        "out; full_softmax_ids_only and full_softmax_multi_hash, the latter with two hash tables of "
        f"model.multi_hash_buckets rows, {MULTI_HASH_BUCKETS} when the base has none)",
        factory=lambda: list(VARIANTS),
    )
    out_dir: str = _help("runs in <out_dir>/<variant>, table in <out_dir>/ablation.md ('' = runs/ablation-<time>)", "")

    def validate(self) -> None:
        if not self.variants:
            raise ConfigError("variants is empty")


COLUMNS = ("ndcg@10", "hr@10", "ndcg@100", "hr@100", "mrr")


def ablate(cfg: AblationConfig) -> list[dict]:
    base = load_config(TrainJobConfig, cfg.train_config or None, cfg.train_overrides)
    variants = {name: variant_overrides(name, base) for name in cfg.variants}  # unknown names fail before any run
    out = absolute(cfg.out_dir or f"runs/{time.strftime('ablation-%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    init_ray(base.scaling.local_num_cpus, quiet=not base.run.verbose)
    say_where_logs_go(out, "run.verbose=true in train_overrides", "[ablation]")
    shared = out / "prepared"
    prepare_data(base.data, shared)
    rows = []
    for i, (name, overrides) in enumerate(variants.items(), 1):
        run_dir = out / name.replace("+", "__").replace("=", "-")  # no key=value folders (read as Hive partitions)
        metrics_path = run_dir / "metrics.json"
        if not metrics_path.exists():
            print(f"[ablate] {i}/{len(variants)} {name}: {' '.join(overrides)}", flush=True)
            link_prepared(shared, run_dir)
            run_cfg = load_config(
                TrainJobConfig, cfg.train_config or None, [*cfg.train_overrides, *overrides, f"run.dir={run_dir}"]
            )
            train(run_cfg)
        else:
            print(f"[ablate] {i}/{len(variants)} {name}: done before ({metrics_path})", flush=True)
        final = json.loads(metrics_path.read_text())
        rows.append(
            {
                "variant": name,
                "overrides": overrides,
                **{k: final["test"].get(k) for k in COLUMNS},
                "best_epoch": final["best_epoch"],
                "epochs": final["epochs_trained"],
                "seconds": final.get("seconds"),
            }
        )
        (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    (out / "ablation.md").write_text(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| variant | " + " | ".join(f"test {c}" for c in COLUMNS) + " | best epoch / epochs | wall |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        vals = " | ".join("n/a" if r[c] is None else f"{r[c]:.4f}" for c in COLUMNS)
        wall = f"{r['seconds'] / 60:.1f} min" if r.get("seconds") else "n/a"
        lines.append(f"| {r['variant']} | {vals} | {r['best_epoch']} / {r['epochs']} | {wall} |")
    return "\n".join(lines) + "\n"
