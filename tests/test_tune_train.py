"""The training hyper-parameter search for real: Ray Tune trials that are Ray Train runs of the
core job on a tiny synthetic log, with ASHA; the best config comes out ready to train."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_TRAIN

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import load_config

pytestmark = pytest.mark.integration  # several processes or subprocesses (make test-fast skips)


@pytest.mark.slow  # four Ray Train trials under Tune in their own Ray: ~3 minutes on 2 cores
def test_search_runs_train_trials_with_asha_and_writes_the_best_config(tmp_path):
    out = tmp_path / "tt"
    overrides = [kv for kv in TINY_TRAIN if not kv.startswith("scaling.")] + [
        "optim.epochs=2",
        "optim.log_every_steps=0",
    ]
    args = [
        sys.executable,
        str(ROOT / "jobs" / "tune_train.py"),
        f"--set=out_dir={out}",
        "--set=num_samples=4",
        "--set=grace_period=1",
        f"--set=train_overrides={json.dumps(overrides)}",
    ]
    # its own Ray, without the dashboard: stopped trials' workers are released without the state API
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["trials"] == 4 and report["errors"] == []
    # ASHA stopped a trial and its worker placement group was given back (else the next trial
    # would have waited for CPUs forever and the run would not have finished)
    assert report["stopped_early"] >= 1, report
    assert report["released_worker_groups"] == report["stopped_early"], report
    assert len(list((out / "trials").glob("*/checkpoint_*"))) >= 4, "every trial is a Ray Train run leaving checkpoints"
    best = load_config(TrainJobConfig, out / "best_config.yaml", [])
    sampled = report["best"]["config"]
    assert (
        best.optim.dense_lr == sampled["optim.dense_lr"]
        and best.loss.action_weights["like"] == sampled["loss.action_weights.like"]
    )
    assert best.optim.epochs == 2 and best.run.dir == ""


def test_the_first_trial_is_the_configs_own_values_where_the_ranges_hold_them():
    from argus_models.task import DEFAULT_ACTION_WEIGHT
    from argus_platform.configlib import to_dict
    from argus_platform.tuning.tune_train import ParamSpec, _default_space, own_point

    base = to_dict(load_config(TrainJobConfig, None, ["loss.action_weights={like: 1.5}", "optim.sparse_lr=0.5"]))
    point, notes = own_point(base, _default_space())
    # every key (Optuna's warm start needs them all): dense_lr 2e-3 and 128 negatives as set;
    # sparse_lr 0.5 lies outside, the nearest in range; the skip weight is λ's default
    assert point == {
        "optim.dense_lr": 2e-3,
        "optim.sparse_lr": 0.2,
        "loss.action_weights.like": 1.5,
        "loss.action_weights.skip": DEFAULT_ACTION_WEIGHT,
        "loss.uniform_negatives": 128,
    }
    assert notes == ["optim.sparse_lr=0.5 lies outside the search range: 0.2 instead"]
    dim = base["model"]["embedding_dim"]
    point, notes = own_point(base, {"model.embedding_dim": ParamSpec(kind="choice", values=[dim // 4, dim // 2])})
    assert point == {"model.embedding_dim": dim // 2} and len(notes) == 1
    point, notes = own_point(base, {"model.no_such_key": ParamSpec(kind="loguniform", low=1e-4, high=1e-2)})
    assert point == {"model.no_such_key": pytest.approx(1e-3)} and "not set" in notes[0]
