"""The weight search for real: Ray Data candidate scoring and Ray Tune trials on a tiny training
run; the weights file goes into Serve's loader; same seed, same trials; an interrupted search resumes."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from argus_models.weights import load_weights_file
from argus_platform.tuning.config import CandidateConfig, SearchConfig, TuneWeightsConfig
from argus_platform.tuning.tune_weights import tune_weights
from argus_serve.weights import resolve_weights

ACTIONS = ["skip", "like", "dislike", "played_ratio"]
OBJECTIVES = ("engagement", "no_dislike")


def dominates(a: dict, b: dict) -> bool:
    """a is at least as good as b on every (maximised) objective and better on one."""
    return all(a[o] >= b[o] for o in OBJECTIVES) and any(a[o] > b[o] for o in OBJECTIVES)


def _cfg(run_dir, out_dir, **search):
    return TuneWeightsConfig(
        run=str(run_dir),
        out_dir=str(out_dir),
        candidates=CandidateConfig(retrieve_n=10, concurrency=1),
        search=SearchConfig(num_samples=search.pop("num_samples", 8), **search),
    )


@pytest.fixture(scope="module")
def searched(tiny_run, tmp_path_factory) -> dict:
    """One weight search of the tiny run (8 NSGA-II trials, and the oracle search beside it)."""
    out = tmp_path_factory.mktemp("tune") / "tune"
    return {"out": out, "report": tune_weights(_cfg(tiny_run, out))}


def test_search_writes_weights_serve_reads_and_a_report_with_oracle_regret(searched, tiny_run, tmp_path):
    out, report = searched["out"], searched["report"]
    assert report["algorithm"] == "nsga2" and report["trials"] == 8
    for name in ("weights.yaml", "report.json", "trials.csv", "pareto.csv", "results.md", "pareto.png"):
        assert (out / name).is_file(), name
    written = load_weights_file(out / "weights.yaml", ACTIONS)
    tuned = written.weights
    assert tuned | {"engage_sharpness": written.engage_sharpness} == report["weights"]["tuned"]
    # Serve picks <run>/tune/weights.yaml up when its config names no weights
    (tiny_run / "tune").mkdir(exist_ok=True)
    shutil.copy(out / "weights.yaml", tiny_run / "tune" / "weights.yaml")
    try:
        assert resolve_weights({}, "", ACTIONS, tiny_run).weights == tuned
    finally:
        shutil.rmtree(tiny_run / "tune")
    full = json.loads((out / "report.json").read_text())
    ev = full["evaluation"]
    assert full["candidates"]["source"] == "impressions", "the synthetic run logs the slates it showed"
    assert full["candidates"]["requests"]["validation"] > 0 and "bias" not in full["candidates"]
    for split in ("validation", "test"):
        assert {"tuned", "default", "uniform", "oracle_best", "oracle_ordering"} == set(ev[split])
        for name in ("tuned", "default", "uniform", "oracle_best"):
            assert set(ev[split][name]["regret"]) == {"engagement", "no_dislike"}
            assert all(r >= -1e-9 for r in ev[split][name]["regret"].values()), "nothing beats the oracle ordering"
    assert set(report["test_improvement"]["engagement"]) == {"vs_default", "vs_uniform"}
    assert set(report["margin"]) == {"validation", "test"}
    # default and uniform are trials: the chosen weights sit on the Pareto front of all trials, so
    # neither baseline dominates them on validation
    trials = pd.read_csv(out / "trials.csv", keep_default_na=False)
    assert sorted(trials.loc[trials["baseline"] != "", "baseline"]) == ["default", "uniform"]
    chosen = ev["validation"]["tuned"]["observed"]
    for name in ("default", "uniform"):
        other = ev["validation"][name]["observed"]
        assert not dominates(other, chosen), (name, other, chosen)
    # the oracle search starts from the tuned and baseline weights: its best is at least as good on
    # the truth of validation, and the gap it leaves is reported
    true = {n: ev["validation"][n]["oracle"]["engagement"] for n in ("tuned", "default", "uniform", "oracle_best")}
    assert true["oracle_best"] >= max(true.values()) - 1e-12
    gap = report["recoverable_gap"]
    assert gap["metric"] == "engagement"
    assert gap["validation"]["gap"] == pytest.approx(true["oracle_best"] - true["default"])
    assert "Recoverable gap on test" in (out / "results.md").read_text()

    # same seed, same trials (the candidate cache is reused)
    again = tmp_path / "again"
    shutil.copytree(out / "cache", again / "cache")
    tune_weights(_cfg(tiny_run, again))
    cols = [f"w_{a}" for a in ACTIONS]
    pd.testing.assert_frame_equal(pd.read_csv(out / "trials.csv")[cols], pd.read_csv(again / "trials.csv")[cols])


def test_single_objective_uses_tpe_and_bad_objectives_are_refused(tiny_run, tmp_path):
    from argus_platform.tuning.config import MetricSpec

    cfg = _cfg(tiny_run, tmp_path / "tpe", num_samples=5)
    cfg.objectives = [MetricSpec(name="value", kind="value_corr", gains={"like": 5.0, "dislike": -10.0})]
    cfg.candidates.source = "retrieval"  # the fallback, and the report says why it is biased
    report = tune_weights(cfg)
    assert report["algorithm"] == "tpe" and (tmp_path / "tpe" / "search.png").is_file()
    assert report["candidates"]["source"] == "retrieval" and "never shown" in report["candidates"]["bias"]
    assert "never shown" in (tmp_path / "tpe" / "results.md").read_text()
    cfg.objectives = [MetricSpec(name="value", kind="utility", gains={"clicks": 1.0})]
    try:
        tune_weights(cfg)
    except ValueError as exc:
        assert "unknown action(s) ['clicks']" in str(exc)
    else:
        raise AssertionError("an objective naming an unknown action must be refused")


@pytest.mark.slow  # two searches of the weights, ~140 s on 2 cores; the one-search tests above stay in CI
def test_an_interrupted_search_resumes(tiny_run, tmp_path):
    out = tmp_path / "tune"
    args = [
        sys.executable,
        str(ROOT / "jobs" / "tune_weights.py"),
        f"--set=run={tiny_run}",
        f"--set=out_dir={out}",
        "--set=candidates.retrieve_n=10",
        "--set=search.num_samples=120",
        "--set=local_num_cpus=2",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # interrupt once the search has started
        if line.startswith("[tune] searching"):
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)  # Tune saves the experiment state and stops
            break
    proc.communicate(timeout=120)
    assert not (out / "trials.csv").exists(), "the interrupted run must not have finished"
    done_before = len(list((out / "search").glob("_trainable_*")))
    assert 1 <= done_before < 120, done_before

    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming the search" in result.stdout
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 120 and trials["trial_id"].is_unique


def test_over_seeds_and_draws_the_chosen_weights_are_never_dominated_by_a_baseline(searched, tiny_run, tmp_path):
    """Property: whatever the sampler's seed and whichever rows are drawn, a baseline is a trial and
    selection takes the best engagement of the non-dominated trials, so no baseline beats the choice
    on both objectives (validation)."""
    from argus_platform.tuning.candidates import CandidateSet
    from argus_platform.tuning.report import baselines
    from argus_platform.tuning.search import run_search, select

    full, _ = CandidateSet.load(searched["out"] / "cache" / "validation.npz")
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        rows = rng.choice(len(full.items), size=len(full.items) // 2, replace=False)
        draw = full.rows(rows)
        cfg = _cfg(tiny_run, tmp_path, num_samples=5, seed=seed)
        sets, _ = baselines(cfg, ACTIONS)
        df, _ = run_search(cfg, draw, ACTIONS, tmp_path / f"draw{seed}", {"draw": seed}, baselines=sets)
        chosen, _, _ = select(df, cfg)
        for name in ("default", "uniform"):
            (row,) = df.index[df["baseline"] == name]
            assert not dominates(df.loc[row], df.loc[chosen]), (seed, name)
