"""What the weight search leaves behind: weights.yaml (Serve's format), report.json, trials.csv,
pareto.csv, results.md and plots — tuned vs default vs uniform weights, on validation (searched)
and test (held out, evaluated once), with the oracle's regret where the data is synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from argus_models.weights import ENGAGE, SHARPNESS, write_weights_file
from argus_platform.tuning.candidates import CandidateSet
from argus_platform.tuning.config import MetricSpec, TuneWeightsConfig
from argus_platform.tuning.objectives import best_ordering, evaluate

RESERVED = ("tuned", "oracle_best", "oracle_ordering")


def baselines(cfg: TuneWeightsConfig, actions: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The weight sets the tuned ones must beat: default (hand-set), uniform (1/|A|), and the user's."""
    notes = []
    default = _weight_set(cfg.default_weights, actions)
    unknown = sorted(set(cfg.default_weights) - set(actions) - {ENGAGE, SHARPNESS})
    if unknown or not cfg.default_weights:
        notes.append(f"default_weights {cfg.default_weights} do not fit the actions {actions}; default = uniform")
        default = {a: 1.0 / len(actions) for a in actions}
    sets = {"default": default, "uniform": {a: 1.0 / len(actions) for a in actions}}
    for name, weights in cfg.baseline_weights.items():
        unknown = sorted(set(weights) - set(actions) - {ENGAGE, SHARPNESS})
        if name in sets or name in RESERVED or unknown:
            raise ValueError(
                f"baseline_weights.{name}: "
                + (f"names unknown action(s) {unknown} (the run's: {actions})" if unknown else "the name is taken")
            )
        sets[name] = _weight_set(weights, actions)
    return sets, notes


def _weight_set(weights: dict[str, float], actions: list[str]) -> dict[str, float]:
    """Every action's weight (0 when missing), and the engagement term's when given."""
    return {a: float(weights.get(a, 0.0)) for a in actions} | {
        k: float(weights[k]) for k in (ENGAGE, SHARPNESS) if k in weights
    }


def evaluate_sets(
    sets: dict[str, dict[str, float]],
    splits: dict[str, CandidateSet],
    specs: list[MetricSpec],
    objectives: list[MetricSpec],
) -> dict:
    out: dict = {}
    for split, cand in splits.items():
        out[split] = {}
        best = best_ordering(cand, objectives) if cand.oracle is not None else None
        for name, w in sets.items():
            row = {"observed": evaluate(cand, w, specs)}
            if best is not None:
                true = evaluate(cand, w, specs, source="oracle")
                row["oracle"] = true
                row["regret"] = {
                    o.name: (best[o.name] - true[o.name]) if o.goal == "max" else (true[o.name] - best[o.name])
                    for o in objectives
                }
            out[split][name] = row
        if best is not None:
            out[split]["oracle_ordering"] = best
    return out


def _baseline_names(evals: dict) -> list[str]:
    return [n for n in evals["validation"] if n not in RESERVED]


def _gain(evals: dict, split: str, metric: str, source: str = "observed") -> dict[str, float]:
    """Tuned − each baseline on one metric (the margin; > 0 means the tuned weights are ahead)."""
    tuned = evals[split]["tuned"][source][metric]
    return {f"vs_{b}": tuned - evals[split][b][source][metric] for b in _baseline_names(evals)}


def recoverable_gap(evals: dict, metric: str) -> dict[str, dict[str, float]]:
    """Per split, on the simulator's true values of `metric`: gap = oracle-best − default (what any
    weighting of the model's P(a) could add to the hand-set weights) and the share of it the tuned
    weights recovered."""
    out = {}
    for split, rows in evals.items():
        true = {n: r["oracle"][metric] for n, r in rows.items() if n != "oracle_ordering"}
        gap = true["oracle_best"] - true["default"]
        out[split] = {
            "oracle_best": true["oracle_best"],
            "default": true["default"],
            "tuned": true["tuned"],
            "gap": gap,
            "recovered": (true["tuned"] - true["default"]) / gap if gap > 0 else float("nan"),
        }
    return out


def _table(evals: dict, cfg: TuneWeightsConfig) -> str:
    specs = cfg.objectives + cfg.constraints
    head = "| split | weights | " + " | ".join(s.name for s in specs)
    has_oracle = "oracle_ordering" in evals.get("test", {})
    if has_oracle:
        head += (
            " | "
            + " | ".join(f"true {o.name}" for o in cfg.objectives)
            + " | "
            + " | ".join(f"regret {o.name}" for o in cfg.objectives)
        )
    lines = [head + " |", "|" + "---|" * (head.count("|"))]
    for split, rows in evals.items():
        for name in [n for n in rows if n != "oracle_ordering"]:
            r = rows[name]
            cells = [f"{r['observed'][s.name]:.4f}" for s in specs]
            if has_oracle:
                cells += [f"{r['oracle'][o.name]:.4f}" for o in cfg.objectives] + [
                    f"{r['regret'][o.name]:.4f}" for o in cfg.objectives
                ]
            lines.append(f"| {split} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markers(evals: dict) -> dict[str, dict]:
    """Plot styles of the weight sets marked beside the trials: the baselines and the oracle-best."""
    fixed = {
        "default": {"marker": "s", "color": "tab:red"},
        "uniform": {"marker": "^", "color": "tab:orange"},
        "oracle_best": {"marker": "D", "color": "tab:purple"},
    }
    others = [n for n in evals["validation"] if n not in fixed and n not in RESERVED]
    palette = ["tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    styles = {n: {"marker": "v", "color": palette[i % len(palette)]} for i, n in enumerate(others)}
    return {n: st for n, st in (fixed | styles).items() if n in evals["validation"]}


def _plots(
    out_dir: Path,
    df: pd.DataFrame,
    feasible: pd.DataFrame,
    front: np.ndarray,
    chosen: int,
    evals: dict,
    cfg: TuneWeightsConfig,
) -> list[str]:
    files = []
    objectives = cfg.objectives
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(objectives) >= 2:
        x, y = objectives[0].name, objectives[1].name
        ax.scatter(df[x], df[y], s=12, c="lightgray", label="trials")
        pf = feasible[front].sort_values(x)
        ax.plot(pf[x], pf[y], "o-", color="tab:blue", label="Pareto front (feasible)")
        for name, style in _markers(evals).items():
            v = evals["validation"][name]["observed"]
            ax.scatter([v[x]], [v[y]], s=70, label=name.replace("_", "-"), **style)
        ax.scatter([df.loc[chosen, x]], [df.loc[chosen, y]], marker="*", s=200, color="tab:green", label="chosen")
        ax.set_xlabel(f"{x} ({objectives[0].goal})")
        ax.set_ylabel(f"{y} ({objectives[1].goal})")
        ax.set_title("Weight search on validation candidates")
        name = "pareto.png"
    else:
        o = objectives[0]
        v = df[o.name].to_numpy()
        best = np.maximum.accumulate(v) if o.goal == "max" else np.minimum.accumulate(v)
        ax.plot(np.arange(len(v)), v, ".", color="lightgray", label="trial")
        ax.plot(np.arange(len(v)), best, "-", color="tab:blue", label="best so far")
        for name, style in _markers(evals).items():
            ax.axhline(evals["validation"][name]["observed"][o.name], color=style["color"], ls="--", label=name)
        ax.set_xlabel("trial")
        ax.set_ylabel(o.name)
        ax.set_title("Weight search on validation candidates")
        name = "search.png"
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    files.append(name)
    return files


def write_outputs(
    out_dir: Path,
    cfg: TuneWeightsConfig,
    df: pd.DataFrame,
    chosen: int,
    feasible: pd.DataFrame,
    front: np.ndarray,
    sets: dict[str, dict[str, float]],
    evals: dict,
    algorithm: str,
    checkpoint: Path,
    notes: list[str],
    candidates: dict,
) -> dict:
    tuned = sets["tuned"]
    target = cfg.search.select or cfg.objectives[0].name
    write_weights_file(
        out_dir / "weights.yaml",
        {a: w for a, w in tuned.items() if a != SHARPNESS},
        {
            "checkpoint": str(checkpoint),
            "algorithm": algorithm,
            "trials": len(df),
            "selected_by": target,
            "candidates": candidates["source"],
            "validation": {m: float(df.loc[chosen, m]) for m in [o.name for o in cfg.objectives + cfg.constraints]},
        },
        engage_sharpness=tuned.get(SHARPNESS, 0.0),
    )
    df.to_csv(out_dir / "trials.csv", index=False)
    feasible[front].to_csv(out_dir / "pareto.csv", index=False)
    plots = _plots(out_dir, df, feasible, front, chosen, evals, cfg)
    names = [o.name for o in cfg.objectives]
    report = {
        "checkpoint": str(checkpoint),
        "algorithm": algorithm,
        "trials": len(df),
        "selected_by": target,
        "candidates": candidates,
        "weights": sets,
        "evaluation": evals,
        "margin": {split: {n: _gain(evals, split, n) for n in names} for split in evals},
        "test_improvement": {n: _gain(evals, "test", n) for n in names},
        "pareto_front": feasible[front].to_dict(orient="records"),
        "files": ["weights.yaml", "trials.csv", "pareto.csv", "results.md"] + plots,
        "notes": notes,
    }
    lines = []
    if "oracle_ordering" in evals.get("test", {}):
        report["test_improvement_true"] = {n: _gain(evals, "test", n, "oracle") for n in names}
        if "oracle_best" in sets:
            report["recoverable_gap"] = {"metric": target} | recoverable_gap(evals, target)
            g = report["recoverable_gap"]["test"]
            lines = [
                f"Recoverable gap on test (true {target}): oracle-best weights {g['oracle_best']:.4f} − default "
                f"{g['default']:.4f} = {g['gap']:+.4f}; the tuned weights ({g['tuned']:.4f}) recover "
                f"{100 * g['recovered']:.0f}% of it.",
                "",
            ]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    md = [
        f"# Weight search ({algorithm}, {len(df)} trials, selected by {target})",
        "",
        f"Candidates: {candidates['source']}"
        + (
            f" ({candidates['impressions']}; requests {candidates['requests']})"
            if candidates.get("impressions")
            else ""
        )
        + (f". {candidates['bias']}" if candidates.get("bias") else ""),
        "",
        "Chosen weights: " + ", ".join(f"{a}={w:+.3f}" for a, w in tuned.items()),
        "",
        *lines,
        _table(evals, cfg),
        "",
        "Margins of the tuned weights (tuned − baseline, observed):",
        "",
        _margins(report["margin"]),
        "",
        "Pareto front (feasible, validation):",
        "",
        _markdown(feasible[front]),
    ]
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    return report


def _margins(margin: dict) -> str:
    rows = [(split, metric, vs, v) for split, by in margin.items() for metric, g in by.items() for vs, v in g.items()]
    return "\n".join(
        ["| split | metric | versus | tuned − it |", "|---|---|---|---|"]
        + [f"| {s} | {m} | {vs.removeprefix('vs_')} | {v:+.4f} |" for s, m, vs, v in rows]
    )


def _markdown(df: pd.DataFrame) -> str:
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join(
        ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
        + ["| " + " | ".join(r) + " |" for r in cells]
    )
