"""`jobs/tune_weights.py`: resolve the run → score candidates (Ray Data, cached) → Tune search on
validation → evaluate tuned/default/uniform once on test → write the outputs."""

from __future__ import annotations

import time

from argus_models.rundir import absolute, resolve_checkpoint, wait_for_run
from argus_platform.configlib import to_dict
from argus_platform.data.prepare import load_prepared
from argus_platform.raytrain import init_ray, say_where_logs_go
from argus_platform.tuning.candidates import build_candidates
from argus_platform.tuning.config import TuneWeightsConfig
from argus_platform.tuning.report import baselines, evaluate_sets, write_outputs
from argus_platform.tuning.search import run_search, select, selected_objective, weights_of


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
    splits, about = build_candidates(
        checkpoint, run_dir, prepared, ["validation", "test"], cfg.candidates, out_dir / "cache"
    )
    cache_meta = {"checkpoint": str(checkpoint), "candidates": to_dict(cfg.candidates)}
    sets, notes = baselines(cfg, actions)
    print(
        f"[tune] searching {len(actions)} weights over {cfg.search.num_samples} trials ({', '.join(sets)} among "
        f"them): objectives {[o.name for o in cfg.objectives]}, constraints {[c.name for c in cfg.constraints]}",
        flush=True,
    )
    df, algorithm = run_search(cfg, splits["validation"], actions, out_dir, cache_meta, baselines=sets)
    chosen, feasible, front = select(df, cfg)
    sets = {"tuned": weights_of(df.loc[chosen], actions)} | sets
    if splits["validation"].oracle is not None:
        # The best any weighting of the model's P(a) can do, judged by the simulator's truth on validation.
        target = selected_objective(cfg).name
        truth, _ = run_search(
            cfg, splits["validation"], actions, out_dir, cache_meta, baselines=sets, source="oracle", name="oracle"
        )
        best = int(truth[target].idxmax()) if selected_objective(cfg).goal == "max" else int(truth[target].idxmin())
        sets["oracle_best"] = weights_of(truth.loc[best], actions)
        print(f"[tune] oracle-best weights (true {target} on validation): {_weights(sets['oracle_best'])}", flush=True)
    specs = cfg.objectives + cfg.constraints
    evals = evaluate_sets(sets, splits, specs, cfg.objectives)
    report = write_outputs(out_dir, cfg, df, chosen, feasible, front, sets, evals, algorithm, checkpoint, notes, about)
    report["out_dir"] = str(out_dir)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _weights(w: dict[str, float]) -> str:
    return ", ".join(f"{a}={v:+.3f}" for a, v in w.items())


def format_report(report: dict) -> str:
    lines = [
        f"[tune] {report['algorithm']}, {report['trials']} trials on {report['candidates']['source']} candidates, "
        f"chosen by {report['selected_by']}: " + _weights(report["weights"]["tuned"])
    ]
    for split in ("validation", "test"):
        ev = report["evaluation"][split]
        for name in [n for n in ev if n != "oracle_ordering"]:
            parts = [f"{k}={v:.4f}" for k, v in ev[name]["observed"].items()]
            if "oracle" in ev[name]:
                parts += [f"true[{k}]={v:.4f}" for k, v in ev[name]["oracle"].items()]
            lines.append(f"  {split:<10} {name:<11} " + " ".join(parts))
    for split, by in report["margin"].items():
        for metric, gain in by.items():
            lines.append(
                f"  {split} {metric}: "
                + ", ".join(f"tuned − {b.removeprefix('vs_')} {v:+.4f}" for b, v in gain.items())
            )
    if "recoverable_gap" in report:
        g, metric = report["recoverable_gap"]["test"], report["recoverable_gap"]["metric"]
        lines.append(
            f"  recoverable gap (test, true {metric}): oracle-best {g['oracle_best']:.4f} − "
            f"default {g['default']:.4f} = {g['gap']:+.4f}; tuned {g['tuned']:.4f} recovers {100 * g['recovered']:.0f}%"
        )
    lines.append(f"[tune] wrote {', '.join(report['files'])} to {report['out_dir']} ({report['seconds']:.0f}s)")
    return "\n".join(lines)
