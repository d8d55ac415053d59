import pytest
import torch

from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config, to_dict


def test_defaults_round_trip():
    cfg = load_config(TrainJobConfig)
    assert to_dict(load_config(TrainJobConfig, overrides=[])) == to_dict(cfg)
    assert cfg.data.source == "synthetic" and cfg.scaling.num_workers == 2


def test_yaml_and_typed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 3\nmodel:\n  num_layers: 1\n")
    cfg = load_config(TrainJobConfig, path, ["optim.dense_lr=0.01", "eval.ks=[5, 20]", "loss.action_weights={like: 2}"])
    assert cfg.optim.epochs == 3 and cfg.model.num_layers == 1
    assert cfg.optim.dense_lr == 0.01 and cfg.eval.ks == [5, 20]
    assert cfg.loss.action_weights == {"like": 2.0}


def test_int_is_accepted_for_float():
    assert load_config(TrainJobConfig, overrides=["optim.dense_lr=1"]).optim.dense_lr == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.epoch=3", "unknown config key 'optim.epoch'"),
        ("nope.x=1", "unknown config key 'nope'"),
        ("optim.epochs=three", "optim.epochs: expected an integer"),
        ("loss.next_item=softmax", "is not one of"),
        ("scaling.use_gpu=maybe", "expected true/false"),
        ("optim.epochs", "must look like key.path=value"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainJobConfig, overrides=[override])


def test_unknown_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.learning_rate'"):
        load_config(TrainJobConfig, path)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(TrainJobConfig, overrides=["data.source=sasrec"])
    with pytest.raises(ConfigError, match="sparse_optimizer=adam runs on GPUs only"):
        load_config(TrainJobConfig, overrides=["optim.sparse_optimizer=adam"])
    assert (
        load_config(
            TrainJobConfig, overrides=["optim.sparse_optimizer=adam", "scaling.use_gpu=true"]
        ).optim.sparse_optimizer
        == "adam"
    )
    with pytest.raises(ConfigError, match="optim.sparse_weight_decay must be >= 0"):
        load_config(TrainJobConfig, overrides=["optim.sparse_weight_decay=-0.1"])
    with pytest.raises(
        ConfigError,
        match="sparse_weight_decay is implemented for sparse_optimizer rowwise_adagrad and adagrad, not sgd",
    ):
        load_config(TrainJobConfig, overrides=["optim.sparse_weight_decay=0.01", "optim.sparse_optimizer=sgd"])


def test_action_specs_from_yaml(tmp_path):
    path = tmp_path / "events.yaml"
    path.write_text(
        "data:\n  source: events\n  path: x.parquet\n  spec:\n    user_column: uid\n"
        "    actions:\n      - {name: like, kind: binary}\n      - {name: stars, kind: graded, levels: [1, 2, 3]}\n"
    )
    cfg = load_config(TrainJobConfig, path)
    assert cfg.data.spec.user_column == "uid"
    assert [a.kind for a in cfg.data.spec.actions] == ["binary", "graded"]
    assert cfg.data.spec.actions[1].num_codes() == 3


def test_every_shipped_config_loads():
    from pathlib import Path

    from argus_platform.tuning.config import TuneWeightsConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("tune_"):  # configs of jobs/tune_weights.py
            load_config(TuneWeightsConfig, path, [])
        else:
            load_config(TrainJobConfig, path, ["data.path=x"] if "default" not in path.name else [])


def test_lr_schedule_warmup_then_cosine():
    from argus_platform.schedule import lr_factor

    assert lr_factor(0, 10, 110, "cosine", 0.1) == pytest.approx(0.1)  # warm-up 1/10
    assert lr_factor(9, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    mid = lr_factor(60, 10, 110, "cosine", 0.1)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lr_factor(110, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, "cosine", 0.1) == pytest.approx(0.1)  # held past the end
    decay = [lr_factor(s, 10, 110, "cosine", 0.1) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lr_factor(500, 10, 110, "constant", 0.1) == 1.0
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_factor(0, 1, 1, "linear", 0.1)


def test_epochs_fitted_into_a_time_budget():
    from argus_platform.schedule import evaluations_between, fit_epochs

    # evaluations after epochs 2..7 every 3 epochs: after 3, 6 and the last (7)
    assert evaluations_between(1, 7, 3) == 3 and evaluations_between(1, 6, 3) == 2 and evaluations_between(4, 4, 3) == 0
    # 60 min; epoch 1 took 45 s, its validation 6 s, the test at the end 6 s: validations every 3
    # epochs keep them under 5% of the epochs' time
    plan = fit_epochs(3600, 57, 1, 45, 6, final_s=6)
    assert plan.eval_every == 3
    cost = lambda n: 57 + (n - 1) * 45 + evaluations_between(1, n, 3) * 6 + 6  # noqa: E731
    assert cost(plan.epochs) <= 3600 < cost(plan.epochs + 1) and plan.seconds == cost(plan.epochs)
    assert fit_epochs(3600, 57, 1, 45, 1).eval_every == 1  # cheap evaluations: after every epoch
    # no room for a second epoch: the plan is the epoch done
    assert fit_epochs(3600, 3000, 1, 2500, 500).epochs == 1
    assert fit_epochs(100, 1, 1, 1e-6, 1e-6, max_epochs=50).epochs == 50


def test_budget_of_a_fitted_run_counts_steps_and_evaluations():
    from argus_platform.checkpoint import TrainState
    from argus_platform.config import OptimConfig
    from argus_platform.schedule import evaluations_between
    from argus_platform.train_loop import Budget

    state = TrainState()
    budget = Budget(OptimConfig(epochs=0, time_budget_minutes=10), state)
    assert budget.needs_plan and budget.epochs == 1 and budget.eval_every == 1 and budget.epochs_label == "?"
    assert budget.total_steps(100) > 10**15  # a flat rate after warm-up until the plan is made
    assert not budget.over(479) and budget.over(480)  # epoch 1 keeps 20% of the budget for its evaluation
    state.epoch, state.train_seconds, state.eval_seconds = 1, 30.0, 10.0
    state.history.append({"validation_seconds": 6.0, "checkpoint_seconds": 2.0})
    plan = budget.fit(30.0, 8.0, 40.0, 4.0)  # the test, once at the end: 4 s
    assert budget.epochs == plan.epochs == 18  # 17 more epochs, 3 validations (after 6, 12, 18): 534 s, + 4 s
    assert budget.eval_every == plan.eval_every == 6 and budget.total_steps(100) == 100 * plan.epochs
    assert state.plan["epochs"] == plan.epochs and state.plan["test_seconds"] == 4.0  # a resumed run keeps it
    state.epoch, state.train_seconds, state.eval_seconds = 17, 510.0, 47.0
    # 557 s spent + a 30 s epoch + an 8 s evaluation + the test (4 s) and the best checkpoint's restore (2 s)
    assert budget.no_room_for_another()
    state.eval_seconds = 46.0
    assert not budget.no_room_for_another()  # exactly 600 s
    assert budget.over(30.0) and not budget.over(29.0)  # mid-epoch: 556 s + 30 s, 14 s held back
    state.best_metrics["test"] = {"ndcg@10": 0.1}  # read: nothing more to hold back for it
    assert budget.over(36.0) and not budget.over(35.0)
    # epochs that run slower than epoch 1: the plan made again after an evaluation, same cadence
    slow = TrainState(epoch=1, train_seconds=30.0, eval_seconds=10.0)
    slow.history.append({"validation_seconds": 6.0, "checkpoint_seconds": 2.0})
    refitted = Budget(OptimConfig(epochs=0, time_budget_minutes=10, lr_schedule="cosine", min_lr_ratio=0.02), slow)
    refitted.fit(30.0, 8.0, 40.0, 4.0)
    slow.epoch, slow.train_seconds, slow.eval_seconds = 6, 30.0 + 5 * 45.0, 18.0  # epochs 2-6: 45 s each
    assert refitted.refit_span == 5 and refitted.recent_epoch_seconds() == 45.0
    slow.step = 600  # 100 steps an epoch
    before = refitted.lr_factor(600, 100)
    again = refitted.refit(45.0, 8.0, 273.0, 100)  # 12 more epochs at 45 s and 2 validations do not fit in 323 s
    cost = lambda n: 273 + (n - 6) * 45 + evaluations_between(6, n, 6) * 8 + 4  # noqa: E731
    assert again.eval_every == 6 and cost(again.epochs) <= 600 < cost(again.epochs + 1) and again.epochs == 12
    assert refitted.epochs == 12 and slow.plan["first_epochs"] == 18 and slow.plan["refits"] == 1
    assert refitted.refit_span == 0 and refitted.total_steps(100) == 1200  # the cosine spans the new plan
    # the cosine goes on from the rate it had (not the one a 12-epoch cosine would have at step 600)
    # and still reaches its floor on the new plan's last step
    assert refitted.lr_factor(600, 100) == pytest.approx(before, abs=1e-5)
    assert refitted.lr_factor(1200, 100) == pytest.approx(0.02)
    rates = [refitted.lr_factor(step, 100) for step in range(600, 1201)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    # a plan made longer again: the rate does not go back up
    slow.epoch, slow.step, slow.train_seconds = 9, 900, 30.0 + 8 * 20.0
    late = refitted.lr_factor(900, 100)
    longer = refitted.refit(20.0, 8.0, 220.0, 100)
    assert longer.epochs > 12 and refitted.lr_factor(900, 100) == pytest.approx(late, abs=1e-5)
    assert refitted.lr_factor(100 * longer.epochs, 100) == pytest.approx(0.02)
    # epochs > 0: the budget is minutes of training steps only
    fixed = Budget(OptimConfig(epochs=5, time_budget_minutes=1, eval_every_epochs=2), TrainState(train_seconds=50.0))
    assert not fixed.fitted and fixed.epochs == 5 and fixed.eval_every == 2 and fixed.over(10.0) and not fixed.over(9.0)


def test_next_item_auto_chooses_by_catalogue_size():
    from argus_platform.config import resolve_next_item_loss

    loss = load_config(TrainJobConfig).loss
    assert loss.next_item == "auto"
    limit = loss.full_softmax_max_items
    assert resolve_next_item_loss(loss, limit)[0].next_item == "full_softmax"
    chosen, why = resolve_next_item_loss(loss, limit + 1)
    assert chosen.next_item == "corrected_logq" and f"{limit + 1:,} items" in why
    set_by_hand = load_config(TrainJobConfig, overrides=["loss.next_item=logq"]).loss
    assert resolve_next_item_loss(set_by_hand, 10)[0].next_item == "logq"
    history = load_config(TrainJobConfig, overrides=["loss.exclude_history=true"]).loss  # allowed with auto ...
    assert resolve_next_item_loss(history, limit)[0].exclude_history
    with pytest.raises(ConfigError, match="auto chose corrected_logq"):  # ... until auto picks a sampled loss
        resolve_next_item_loss(history, limit + 1)


def test_scaling_settings_apply_to_this_process():
    from argus_platform.config import ScalingCfg

    before = torch.get_num_threads()
    try:
        ScalingCfg(torch_threads=2, hold_freed_memory=False).apply_to_process()
        assert torch.get_num_threads() == 2
        ScalingCfg(torch_threads=0, hold_freed_memory=False).apply_to_process(threads_if_unset=1)
        assert torch.get_num_threads() == 1
        ScalingCfg(torch_threads=0, hold_freed_memory=False).apply_to_process()  # 0 and nothing asked: unchanged
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
