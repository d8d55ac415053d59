"""End to end: the job's main through Ray Train on a tiny synthetic log, then resume."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_TRAIN as TINY
from conftest import run_train_job as _main

from argus_models.rundir import resolve_checkpoint, torchrun_checkpoint_name
from argus_platform.checkpoint import TrainState
from argus_platform.data.prepare import load_prepared


def _checkpoints(run_dir):
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def test_train_then_resume(tiny_run, tmp_path, capsys):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) >= {"validation", "test", "baselines"}
    assert {"ndcg@10", "hr@10", "ndcg@100", "mrr", "coverage@10", "like/auc", "played_ratio/ne"} <= set(metrics["test"])
    assert "ndcg@10" in metrics["baselines"]["popularity"]["test"]
    assert metrics["epochs_trained"] == 2 and (tiny_run / "config.yaml").is_file()
    ckpts = _checkpoints(tiny_run)
    assert ckpts and (ckpts[-1] / ".metadata").is_file() and (ckpts[-1] / "vocab" / "vocab.json").is_file()
    first_steps = TrainState.load(ckpts[-1]).step

    # a copy of the run directory, resumed with more epochs: it continues from epoch 2, not from
    # scratch, and reads its own copy of the prepared data
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, symlinks=True)
    args = [f"--set={kv}" for kv in TINY + [f"run.dir={run_dir}", "optim.log_every_steps=5", "optim.epochs=3"]]
    assert _main(args) == 0
    assert "resuming from the latest" in capsys.readouterr().out
    final = json.loads((run_dir / "metrics.json").read_text())  # the test figures: the best epoch's model
    assert final["test_epoch"] == final["best_epoch"]
    best = resolve_checkpoint(str(run_dir))
    assert TrainState.load(best).epoch == final["best_epoch"]
    _assert_checkpoint_reproduces(best, run_dir, "test", final["test"])
    state = TrainState.load(_checkpoints(run_dir)[-1])
    assert state.resumed_at_epochs == [2]
    assert state.epoch == 3 and first_steps < state.step < 2 * first_steps
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert all(0 <= h["input_wait_seconds"] <= h["epoch_seconds"] for h in state.history)
    assert all(h["cpu_stolen_fraction"] is None or 0 <= h["cpu_stolen_fraction"] <= 1 for h in state.history)
    assert all(str(tiny_run) not in path for path in load_prepared(run_dir).paths.values())
    # curves: the loss of every epoch (the resumed one included), TensorBoard scalars, curves.png
    assert [e for e, _ in state.train_losses] == [1, 2, 3]
    _assert_curves(run_dir, epochs=3)
    _assert_checkpoint_reproduces(_checkpoints(run_dir)[-1], run_dir, "validation", state.history[-1]["validation"])


def _assert_curves(run_dir, epochs):
    from tensorboard_events import scalar_series

    series = scalar_series(run_dir / "tensorboard")
    assert [step for step, _ in series["epoch/train_loss"]] == list(range(1, epochs + 1))
    assert {"validation/ndcg_at_10", "epoch/train_events_per_second"} <= set(series)
    assert any(tag.startswith("train/loss") for tag in series) and "lr/dense" in series
    png = (run_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _assert_checkpoint_reproduces(ckpt, run_dir, split, recorded):
    """train → checkpoint → one-process inference model gives the metrics the training run logged."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from argus_models.checkpoint import load_inference_model
    from argus_platform.collate import Collator
    from argus_platform.config import EvalConfig
    from argus_platform.configlib import from_dict
    from argus_platform.data.spec import DatasetSpec
    from argus_platform.evaluation import evaluate, local_lookup

    model = load_inference_model(ckpt)
    spec = from_dict(DatasetSpec, json.loads((ckpt / "spec.json").read_text()))
    kinds = {a.name: (a.kind, a.num_codes()) for a in spec.actions}
    parts = model.dense.item_part_rows()  # multi-hash buckets or RecJPQ codes, from the checkpoint
    parts = None if parts is None else parts.numpy()
    collator = Collator(model.schema, kinds, window=model.config.max_seq_len + 1, item_parts=parts)
    table = pq.ParquetDataset(str(run_dir / "data" / split)).read()
    batches = [table.slice(i, 50) for i in range(0, table.num_rows, 50)]
    counts = torch.from_numpy(np.load(ckpt / "train_item_counts.npy"))
    got = evaluate(
        model.dense,
        local_lookup(model.dense, model.tables),
        batches,
        collator,
        counts,
        EvalConfig(),
        torch.device("cpu"),
    )["model"]
    assert got["users"] == recorded["users"]
    for key in ("ndcg@10", "hr@10", "mrr", "like/auc"):
        assert abs(got[key] - recorded[key]) < 1e-3, (key, got[key], recorded[key])


def test_bad_input_fails_with_named_file(ray_local, tmp_path, capsys):
    log = tmp_path / "events.csv"
    log.write_text("uid,iid,ts,like\n1,2,3,1\n1,3,4,5\n1,4,x,1\n2,2,1,0\n")
    args = [
        "--set=data.source=events",
        f"--set=data.path={log}",
        "--set=data.spec.user_column=uid",
        "--set=data.spec.item_column=iid",
        "--set=data.spec.timestamp_column=ts",
        "--set=data.spec.actions=[{name: like, kind: binary}]",
        f"--set=run.dir={tmp_path / 'run'}",
    ]
    assert _main(args) == 2
    err = capsys.readouterr().err
    assert "events.csv: 2 of 4 rows (50.0%) are unusable" in err and "quarantine" in err
    assert (tmp_path / "run" / "quarantine" / "events.parquet").is_file()


def _torchrun_within_a_budget(tmp_path) -> tuple[list[str], Path, int]:
    """The loop also runs under torchrun (no Ray Train). optim.epochs=0: epoch 1 and its evaluation
    are timed, the epochs and the validation cadence fitted into the rest of the budget, the cosine
    schedule ends with the planned epochs. Returns the command, the run's folder and its epochs."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "tr"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-port=29571",
        str(root / "jobs" / "train_argus.py"),
    ] + [f"--set={kv}" for kv in TINY + [f"run.dir={run_dir}", "optim.lr_schedule=cosine", "optim.warmup_steps=2"]]
    proc = subprocess.run(
        cmd + ["--set=optim.epochs=0", "--set=optim.time_budget_minutes=0.15"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epochs: fitted into the time budget of 0.15 min" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plan = metrics["epoch_plan"]
    assert plan["epochs"] > 1 and plan["eval_every"] >= 1 and plan["seconds"] <= 9.0
    assert f"-> {plan['first_epochs']} epochs, validation every {plan['eval_every']}" in proc.stdout
    if plan["epochs"] != plan["first_epochs"]:  # made again from the epochs after the first
        assert f"{plan['epochs']} epochs instead of" in proc.stdout
    trained = metrics["epochs_trained"]
    assert 1 < trained <= plan["epochs"] and "ndcg@10" in metrics["test"] and metrics["train_seconds"] > 0
    evaluated = [h["epoch"] for h in metrics["history"]]
    assert evaluated[0] == 1 and evaluated[-1] == trained
    assert all(e % plan["eval_every"] == 0 for e in evaluated[1:-1])
    rates = [h["lr_factor"] for h in metrics["history"]]  # plans made again never raise the rate
    assert all(a >= b - 1e-9 for a, b in zip(rates, rates[1:])), rates
    if trained == plan["epochs"]:  # ran to the plan's end: the schedule decayed to its floor
        assert metrics["history"][-1]["lr_factor"] == pytest.approx(0.1, abs=0.05)
    kept = sorted(p.name for p in run_dir.glob("checkpoint_torchrun_*"))
    # run.checkpoints_to_keep: the 2 best by validation NDCG@10, and the latest
    scores = {h["epoch"]: h["validation"]["ndcg@10"] for h in metrics["history"]}
    best = sorted(scores, key=lambda e: -scores[e])[:2]
    assert set(kept) == {torchrun_checkpoint_name(e) for e in [*best, trained]}
    assert resolve_checkpoint(str(run_dir)).parent == run_dir  # Serve and fine-tuning find torchrun's checkpoints
    return cmd, run_dir, trained


@pytest.mark.integration
def test_same_loop_under_torchrun_fits_its_epochs_into_a_budget(tmp_path):
    _torchrun_within_a_budget(tmp_path)


@pytest.mark.slow  # a second torchrun launch (~20 s on 2 cores); resuming under Ray Train stays in CI
def test_a_torchrun_run_resumes_with_one_more_epoch(tmp_path):
    import subprocess

    cmd, run_dir, trained = _torchrun_within_a_budget(tmp_path)
    proc = subprocess.run(cmd + [f"--set=optim.epochs={trained + 1}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = TrainState.load(run_dir / torchrun_checkpoint_name(trained + 1))
    assert state.resumed_at_epochs == [trained] and state.epoch == trained + 1


def test_item_features_train_checkpoint_and_reload(ray_local, tmp_path, capsys):
    """MovieLens-100K with u.item's genres and years in the item tower and two multi-hash item
    tables: the job reports the features, the checkpoint carries the item → feature codes and the
    item → hash buckets, and the one-process model reproduces validation."""
    import numpy as np
    from conftest import shared_file

    from argus_models.checkpoint import load_inference_model
    from argus_models.contract import Vocabulary
    from argus_models.hashing import catalogue_hash_codes

    run_dir = tmp_path / "ml100k"
    args = [
        "data.source=movielens",
        f"data.path={shared_file('ml-100k/u.data')}",
        "data.item_features.format=movielens",
        f"data.item_features.path={shared_file('ml-100k/u.item')}",
        "model.embedding_dim=16",
        "model.num_layers=1",
        "model.max_seq_len=20",
        "model.multi_hash_buckets=97",
        "optim.batch_size=64",
        # learning rates of 0: epoch 2 is no better than epoch 1, so the test is read at the end on
        # epoch 1's restored checkpoint
        "optim.epochs=2",
        "optim.eval_every_epochs=1",
        "optim.dense_lr=0",
        "optim.sparse_lr=0",
        "optim.log_every_steps=0",
        "optim.lr_schedule=cosine",
        "scaling.local_num_cpus=4",
        f"run.dir={run_dir}",
    ]
    assert _main([f"--set={kv}" for kv in args]) == 0
    out = capsys.readouterr().out
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["best_epoch"] == final["test_epoch"] == 1 and final["epochs_trained"] == 2
    progress = (run_dir / "logs" / "progress.log").read_text()
    assert "testing the best validation epoch, 1: restored checkpoint_" in progress
    _assert_checkpoint_reproduces(resolve_checkpoint(str(run_dir)), run_dir, "test", final["test"])
    assert "item features {'genre': 19, 'year': 71}" in out and "0 catalogue items without a row" in out
    ckpt = _checkpoints(run_dir)[-1]
    model = load_inference_model(ckpt)
    assert [f.name for f in model.schema.item_features] == ["genre", "year"]
    codes = np.load(run_dir / "vocab" / "item_features.npz")["codes"]
    assert (model.dense.item_tower.codes > 0).tolist() == (codes > 0).tolist()
    assert model.schema.item_hash_buckets == [97, 97]
    expected = catalogue_hash_codes(Vocabulary.load(run_dir / "vocab").items, [97, 97])
    assert np.array_equal(model.dense.item_hash_codes.numpy(), expected)
    assert model.tables["t_item"].shape == (model.schema.num_items + 1, 3 * 16)  # [E_item ; E_h0 ; E_h1] rows
    state = TrainState.load(ckpt)
    _assert_checkpoint_reproduces(ckpt, run_dir, "validation", state.history[-1]["validation"])


def _train_ml100k(run_dir, *options: str) -> int:
    """One epoch of a small model on MovieLens-100K's u.data with `options` (key=value) on top."""
    from conftest import shared_file

    args = [
        "data.source=movielens",
        f"data.path={shared_file('ml-100k/u.data')}",
        "model.embedding_dim=16",
        "model.num_layers=1",
        "model.max_seq_len=20",
        *options,
        "optim.batch_size=64",
        "optim.epochs=1",
        "optim.log_every_steps=0",
        "scaling.local_num_cpus=4",
        f"run.dir={run_dir}",
    ]
    return _main([f"--set={kv}" for kv in args])


@pytest.fixture(scope="module")
def ml100k_hstu_recjpq(ray_local, tmp_path_factory) -> tuple[Path, str]:
    """One epoch on MovieLens-100K (timestamps in seconds) with the HSTU encoder and RecJPQ item
    codes: (run dir, the job's terminal output). Two options that touch different parts of the
    model (the encoder's attention bias, the item rows), trained once for the two tests below."""
    import contextlib
    import io

    run_dir = tmp_path_factory.mktemp("ml100k") / "hstu-jpq"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = _train_ml100k(
            run_dir,
            "model.encoder=hstu",
            "model.item_codes=recjpq",
            "model.recjpq_splits=4",
            "model.recjpq_sub_items=64",
        )
    assert rc == 0, out.getvalue()[-3000:]
    return run_dir, out.getvalue()


def test_recjpq_item_codes_train_checkpoint_and_reload(ml100k_hstu_recjpq):
    """MovieLens-100K with RecJPQ item codes: the driver assigns the codes once, the checkpoint
    carries them, and the one-process model (item rows rebuilt from the sub-item tables) reproduces
    the test metrics the job reported."""
    import numpy as np
    import pyarrow.parquet as pq

    from argus_models.checkpoint import load_inference_model
    from argus_models.recjpq import assign_codes
    from argus_platform.item_parts import RECJPQ_CODES

    run_dir, out = ml100k_hstu_recjpq
    assert "[argus] RecJPQ item codes from a rank-4 SVD of 943 training histories" in out
    assert "4 sub-item tables of 64 rows x 4 wide, 25.9x fewer weights than one row per item" in out
    final = json.loads((run_dir / "metrics.json").read_text())
    ckpt = resolve_checkpoint(str(run_dir))
    _assert_checkpoint_reproduces(ckpt, run_dir, "test", final["test"])
    model = load_inference_model(ckpt)
    codes = np.load(run_dir / RECJPQ_CODES)
    assert np.array_equal(model.dense.recjpq_codes.numpy(), codes)
    assert (model.schema.recjpq_splits, model.schema.recjpq_sub_items) == (4, 64)
    assert model.tables["t_item"].shape == (model.schema.num_items + 1, 16)
    assert model.tables["t_item_q0"].shape == (65, 4)
    train = pq.read_table(run_dir / "data" / "train", columns=["item_id"]).column("item_id")
    lengths = np.array([len(r) for r in train.to_pylist()])
    again = assign_codes(
        np.repeat(np.arange(len(lengths)), lengths),
        np.concatenate(train.to_pylist()),
        len(lengths),
        model.schema.num_items,
        4,
        64,
    )
    assert np.array_equal(again, codes)  # the same codes from the same training split


def test_hstu_time_gap_bias_trains_reloads_and_reads_request_times(ml100k_hstu_recjpq):
    """MovieLens-100K (timestamps in seconds) with `model.encoder=hstu`: the schema has the time-gap
    bias, the one-process model reproduces the job's test metrics (the collator hands it the event
    times), and Serve's request reader gives each history event its time and refuses a request
    history without timestamps with the field named."""
    import numpy as np
    import torch

    from argus_models.checkpoint import load_inference_model
    from argus_models.inference import encode_next
    from argus_serve.api import RecommendRequest
    from argus_serve.ingress import BadRequest, Limits, RequestReader

    run_dir, _ = ml100k_hstu_recjpq
    final = json.loads((run_dir / "metrics.json").read_text())
    ckpt = resolve_checkpoint(str(run_dir))
    model = load_inference_model(ckpt)
    assert model.schema.time_buckets == 128 and model.dense.encoder.blocks[0].time_bias.abs().sum() > 0  # trained
    _assert_checkpoint_reproduces(ckpt, run_dir, "test", final["test"])

    reader = RequestReader(ckpt, Limits())
    raw_items = [str(x) for x in reader.vocab.items[:3]]
    timed = [{"item_id": i, "timestamp": 881_250_949 + 3_600 * k} for k, i in enumerate(raw_items)]
    prepared = reader.prepare(RecommendRequest(history=timed, k=5), from_store=False)
    assert prepared.events.times.tolist() == [881_250_949, 881_254_549, 881_258_149]
    head_in, query = encode_next(model, [prepared.events], [prepared.next_context])
    assert torch.isfinite(query).all()
    later = [{**e, "timestamp": e["timestamp"] + 10**7 * k} for k, e in enumerate(timed)]
    moved = reader.prepare(RecommendRequest(history=later, k=5), from_store=False)
    # One epoch moves each bucket's bias by ~1e-3, too little to pin reliably through the query; with a
    # bias that grows with the gap the moved times must change the query, and without one must not.
    bias = model.dense.encoder.blocks[0].time_bias
    with torch.no_grad():
        bias.copy_(torch.linspace(-2.0, 2.0, len(bias)))
        ramped = [encode_next(model, [r.events], [r.next_context])[1] for r in (prepared, moved)]
        bias.zero_()
        flat = [encode_next(model, [r.events], [r.next_context])[1] for r in (prepared, moved)]
    assert (ramped[0] - ramped[1]).abs().max() > 1e-3  # the request's times reach the attention bias
    assert torch.equal(flat[0], flat[1])  # and only through it
    with pytest.raises(BadRequest, match=r"history\[1\]: no timestamp; this model's HSTU encoder"):
        reader.prepare(RecommendRequest(history=[timed[0], {"item_id": raw_items[1]}], k=5), from_store=False)
    stored = reader.store.get(str(reader.vocab.users[0]))
    assert stored.times is not None and np.all(np.diff(stored.times) >= 0)  # the run's histories keep their times


# What "the same result" means for the tiny config: 3 uninterrupted runs of it (2026-12-07) spread
# over these ranges (the wider of validation and test; test NDCG@10 0.0973-0.1141) — Ray Data's
# streaming split hands rows to the two workers in whatever order they ask, so batches differ from
# run to run. Twice the range is allowed.
TINY_SPREAD = {"ndcg@10": 0.0168, "hr@10": 0.05, "mrr": 0.0066, "like/auc": 0.0128}


def test_a_killed_train_worker_restarts_from_the_last_checkpoint_and_ends_where_an_uninterrupted_run_does(
    tiny_run, tmp_path, capsys
):
    """SIGKILL one Ray Train worker once epoch 1's checkpoint is registered, in the tiny run's own
    command with run.max_failures=1: Ray Train restarts the worker group from that checkpoint, the
    job finishes, and its figures are the uninterrupted tiny run's within the run-to-run spread."""
    import os
    import signal
    import threading
    import time

    import psutil

    run_dir = tmp_path / "run"
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray Train's record of registered reports
    killed: dict = {}

    def kill_a_worker_after_epoch_one() -> None:
        deadline, workers = time.time() + 600, []
        while time.time() < deadline:
            if len(workers) < 2:  # Ray names each worker process after its actor's class
                workers = sorted(
                    p.pid
                    for p in psutil.process_iter(["cmdline"])
                    if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])
                )
            try:
                reports = json.loads(snapshot.read_text())["current_report_index"]
            except (OSError, ValueError, KeyError):
                reports = 0
            if reports and workers:
                os.kill(workers[-1], signal.SIGKILL)
                killed.update(pid=workers[-1], reports=reports)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker_after_epoch_one, daemon=True)
    killer.start()
    args = TINY + [f"run.dir={run_dir}", "optim.epochs=2", "optim.log_every_steps=5", "run.max_failures=1"]
    assert _main([f"--set={kv}" for kv in args]) == 0
    killer.join(timeout=5)
    assert killed.get("reports") == 1, killed  # killed after epoch 1's report, before epoch 2's
    assert "up to 1 time(s)" in capsys.readouterr().out
    state, reference = (TrainState.load(_checkpoints(d)[-1]) for d in (run_dir, tiny_run))
    assert state.resumed_at_epochs == [1] and state.epoch == 2  # the restart went on from epoch 1
    assert state.step == reference.step  # no step lost or done twice
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, tiny_run))
    for split in ("validation", "test"):
        for key, spread in TINY_SPREAD.items():
            a, b = got[split][key], want[split][key]
            assert abs(a - b) <= 2 * spread, (split, key, a, b)
