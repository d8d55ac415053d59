"""`jobs/tune_weights.py`: resolve the run → score candidates (Ray Data, cached) → Tune search on
validation → evaluate tuned/default/uniform once on test → write the outputs."""

from __future__ import annotations

import time

from argus_models.rundir import absolute, resolve_checkpoint, wait_for_run
from argus_platform.data.prepare import load_prepared
from argus_platform.raytrain import init_ray, say_where_logs_go
from argus_platform.tuning.candidates import build_candidates
from argus_platform.tuning.config import TuneWeightsConfig
from argus_platform.tuning.report import baselines, evaluate_sets, write_outputs
from argus_platform.tuning.search import run_search, select


def tune_weights(cfg: TuneWeightsConfig) -> dict:
    started = time.time()
    wait_for_run(cfg.run, cfg.wait_s)
    checkpoint = resolve_checkpoint(cfg.run, cfg.runs_root)
    run_dir = checkpoint.parent
    out_dir = absolute(cfg.out_dir) if cfg.out_dir else run_dir / "tune"
    prepared = load_prepared(run_dir)
    actions = [a.name for a in prepared.spec.actions]
    if not actions:
        raise ValueError(f"{run_dir}: the data has no actions, so there are no weights to tune")
    for m in cfg.objectives + cfg.constraints:
        unknown = sorted(m.actions() - set(actions))
        if unknown:
            raise ValueError(f"{m.name} names unknown action(s) {unknown}; the run's actions are {actions}")
    print(f"[tune] run {run_dir.name}, checkpoint {checkpoint.name}; output {out_dir}", flush=True)
    init_ray(cfg.local_num_cpus, quiet=not cfg.verbose)
    say_where_logs_go(out_dir, "verbose=true", "[tune]")
    splits = build_candidates(checkpoint, run_dir, prepared, ["validation", "test"], cfg.candidates, out_dir / "cache")
    cache_meta = {
        "checkpoint": str(checkpoint),
        "retrieve_n": cfg.candidates.retrieve_n,
        "max_rows": cfg.candidates.max_rows,
    }
    print(
        f"[tune] searching {len(actions)} weights over {cfg.search.num_samples} trials: objectives "
        f"{[o.name for o in cfg.objectives]}, constraints {[c.name for c in cfg.constraints]}",
        flush=True,
    )
    sets, notes = baselines(cfg, actions)
    df, algorithm = run_search(cfg, splits["validation"], actions, out_dir, cache_meta, start=sets["default"])
    chosen, feasible, front = select(df, cfg)
    sets = {"tuned": {a: float(df.loc[chosen, f"w_{a}"]) for a in actions}} | sets
    specs = cfg.objectives + cfg.constraints
    evals = evaluate_sets(sets, splits, specs, cfg.objectives)
    report = write_outputs(out_dir, cfg, df, chosen, feasible, front, sets, evals, algorithm, checkpoint, notes)
    report["out_dir"] = str(out_dir)
    report["seconds"] = round(time.time() - started, 1)
    return report


def format_report(report: dict) -> str:
    lines = [
        f"[tune] {report['algorithm']}, {report['trials']} trials, chosen by {report['selected_by']}: "
        + ", ".join(f"{a}={w:+.3f}" for a, w in report["weights"]["tuned"].items())
    ]
    for split in ("validation", "test"):
        ev = report["evaluation"][split]
        for name in ("tuned", "default", "uniform"):
            parts = [f"{k}={v:.4f}" for k, v in ev[name]["observed"].items()]
            if "regret" in ev[name]:
                parts += [f"regret[{k}]={v:.4f}" for k, v in ev[name]["regret"].items()]
            lines.append(f"  {split:<10} {name:<8} " + " ".join(parts))
    for metric, gain in report["test_improvement"].items():
        lines.append(
            f"  test {metric}: tuned − default {gain['vs_default']:+.4f}, tuned − uniform {gain['vs_uniform']:+.4f}"
        )
    lines.append(f"[tune] wrote {', '.join(report['files'])} to {report['out_dir']} ({report['seconds']:.0f}s)")
    return "\n".join(lines)
