"""The per-worker training loop: shard → resume → TrainPipelineSparseDist epochs → evaluate →
checkpoint → report. `train_loop_per_worker` is the Ray Train entry point; `run_worker` holds the
logic and takes its data and reporting as arguments so it can run without Ray (torchrun)."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from argus_models.config import ModelSchema
from argus_models.model import count_parameters
from argus_models.rundir import checkpoint_of_epoch, checkpoints
from argus_models.sizing import embedding_parameter_count
from argus_platform.catalogue_ranking import catalogue_shard
from argus_platform.checkpoint import TrainState, load_checkpoint, write_train_state
from argus_platform.collate import Collator, length_buckets
from argus_platform.config import LossConfig, TrainJobConfig, resolve_next_item_loss
from argus_platform.configlib import from_dict
from argus_platform.curves import CURVES, Curves, plot_curves
from argus_platform.data.history_stats import history_stats
from argus_platform.data.prepare import load_prepared
from argus_platform.epoch import EpochStats, checkpoint_and_report, improved, say, start_worker, train_epoch
from argus_platform.evaluation import evaluate, user_sample
from argus_platform.item_parts import item_part_rows
from argus_platform.precision import bf16_worth_timing, timed_precision
from argus_platform.progress import Progress, StolenCpu, duration
from argus_platform.recipe import (
    choose_next_item_loss,
    full_softmax_pair_seconds,
    predicted_positions,
    resolve_data_choices,
)
from argus_platform.schedule import EpochPlan, cosine_progress, fit_epochs, lr_factor
from argus_platform.sharding.plan import describe_plan, shard
from argus_platform.worker import CHECKPOINT_SCORE, Iterate, Report, finite_score, run_ray_worker

QUIET_BELOW_S = 10.0  # epochs, step lines and evaluations shorter than this print no line of their own


def make_collators(
    cfg: TrainJobConfig, schema: ModelSchema, spec, rank: int, item_parts: np.ndarray | None = None
) -> tuple[Collator, Collator]:
    kinds = {a.name: (a.kind, a.num_codes()) for a in spec.actions}
    window = cfg.model.max_seq_len + 1
    loss = resolve_next_item_loss(cfg.loss, schema.num_items)[0]  # the negatives the task's loss expects
    negatives = "catalogue" if loss.next_item == "full_softmax" else ("uniform" if loss.uniform_negatives else "none")
    train = Collator(
        schema,
        kinds,
        window,
        negatives,
        cfg.loss.uniform_negatives,
        seed=cfg.optim.seed * 1000 + rank,
        random_windows=cfg.optim.train_windows == "random",
        item_parts=item_parts,
    )
    return train, Collator(schema, kinds, window, item_parts=item_parts)


def run_worker(
    cfg: TrainJobConfig, run_dir: Path, iterate: Iterate, resume_dir: Path | None, report: Report, device: torch.device
) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    requested, precision = cfg.optim.precision, start_worker(cfg, cfg.optim.seed, device)
    cfg = replace(cfg, optim=replace(cfg.optim, precision=precision))
    prepared = load_prepared(run_dir)
    schema = ModelSchema.load(run_dir / "schema.json")
    histories = prepared.summary.get("train_histories") or history_stats(prepared.paths["train"])

    def choose_loss(c: TrainJobConfig) -> tuple[LossConfig, str]:  # with the window chosen; collective
        positions = predicted_positions(histories, c.model.max_seq_len + 1, world)
        return choose_next_item_loss(
            c.loss,
            schema.num_items,
            c.optim.time_budget_minutes,
            positions,
            lambda: full_softmax_pair_seconds(device, c.optim.precision, c.model.embedding_dim, schema.num_items),
        )

    cfg, chosen = resolve_data_choices(cfg, histories, choose_loss, schema.num_items)
    for line in chosen:
        say(f"[argus] {line}")
    if requested == "auto" and bf16_worth_timing(device):  # the model is known now: time its step
        precision, why = timed_precision(cfg, schema, device)
        cfg = replace(cfg, optim=replace(cfg.optim, precision=precision))
        say(f"[argus] precision: {precision} ({why})")
    counts = torch.from_numpy(prepared.item_counts)
    codes = prepared.item_features.codes if prepared.item_features else None
    parts = item_part_rows(schema, prepared.vocab.items, run_dir)  # multi-hash buckets or RecJPQ codes
    sharded = shard(cfg, schema, counts, device, item_codes=codes, item_parts=parts)
    say(f"[argus] sharding plan ({world} x {device.type}):\n{describe_plan(sharded.plan)}")
    dense_params = count_parameters(sharded.dense)
    items = (
        f"items {schema.num_items + 1:,}"
        if not schema.recjpq_splits
        else f"{schema.num_items:,} items as {schema.recjpq_splits} RecJPQ tables of {schema.recjpq_sub_items + 1:,}"
    )
    say(f"[argus] dense parameters: {dense_params:,}; table rows: {items}")
    tables = embedding_parameter_count(schema, cfg.model.embedding_dim)
    sizes = {
        "dense": dense_params,
        "tables": tables["total"],
        "item_tables": sum(v for k, v in tables.items() if k == "item" or k.startswith(("item_h", "item_q"))),
    }
    state = TrainState()
    curves = Curves(run_dir, rank == 0)
    if resume_dir is not None:
        state = load_checkpoint(resume_dir, sharded)
        state.resumed_at_epochs.append(state.epoch)
        say(f"[argus] resumed from {resume_dir} at epoch {state.epoch}, step {state.step}")
    train_collate, eval_collate = make_collators(cfg, schema, prepared.spec, rank, parts)
    pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, device)
    o = cfg.optim
    window = cfg.model.max_seq_len + 1
    # Steps per epoch for the schedule: estimated from the split's rows, then the count of the last epoch.
    steps_per_epoch = max(1, prepared.summary["rows"]["train"] // (o.batch_size * world))
    budget = Budget(o, state)
    if budget.needs_plan:
        say(
            f"[argus] epochs: fitted into the time budget of {o.time_budget_minutes:g} min after epoch 1 "
            f"and its evaluation",
        )
    evaluation = Evaluation(cfg, sharded, pipeline, iterate, prepared, eval_collate, counts, window, device)
    started, start_epoch = time.time(), state.epoch  # the run's ETA at each epoch's end
    while state.epoch < budget.epochs:
        epoch = state.epoch
        # Same bucket order on every rank: workers wait for each other every step, so they should be
        # stepping through batches of similar length at the same time.
        bucket_rng = np.random.default_rng([o.seed, epoch])
        seen_events, factor, last_line = [0], [1.0], [time.time()]
        stolen = StolenCpu()

        def collate(table: pa.Table):
            batch = train_collate(table)
            seen_events[0] += int((batch.lengths - 1).clamp_min(0).sum())  # positions the step predicts
            return batch

        def set_lr() -> None:
            factor[0] = budget.lr_factor(state.step, steps_per_epoch)
            for group in sharded.dense_optimizer.param_groups:
                group["lr"] = o.dense_lr * factor[0]
            for group in sharded.model.fused_optimizer.param_groups:
                group["lr"] = o.sparse_lr * factor[0]

        def after_step(stats: EpochStats, elapsed: float) -> bool:
            state.step += 1
            n = stats.steps
            if o.time_budget_minutes and n % 10 == 0 and _over_budget(budget.over(elapsed), device):
                return True
            if o.log_every_steps and state.step % o.log_every_steps == 0:
                logs = stats.logs
                curves.scalars(
                    state.step,
                    {f"train/{k}": v for k, v in logs.items()}
                    | {"lr/dense": o.dense_lr * factor[0], "lr/sparse": o.sparse_lr * factor[0]},
                )
                if time.time() - last_line[0] >= QUIET_BELOW_S:  # short epochs: their end line is enough
                    last_line[0] = time.time()
                    parts = " ".join(f"{k}={float(v):.4f}" for k, v in sorted(logs.items()))
                    rate = n / max(elapsed, 1e-9)
                    left = max(steps_per_epoch - n, 0) / rate  # steps_per_epoch: estimated, then the last's
                    say(
                        f"[argus] epoch {epoch + 1}/{budget.epochs_label} step {n}/~{steps_per_epoch} {parts} "
                        f"({rate:.1f} steps/s, epoch ETA {duration(left)})"
                    )
            return False

        stats = train_epoch(
            pipeline,
            sharded.model,
            length_buckets(iterate("train", o.batch_size), o.length_buckets, window, bucket_rng),
            collate,
            "the train split is smaller than one batch per worker; lower optim.batch_size",
            set_lr,
            after_step,
        )
        out_of_time, n_steps, seconds = stats.stopped, stats.steps, stats.seconds
        state.epoch = epoch + 1
        steps_per_epoch = n_steps
        if o.time_budget_minutes and not out_of_time:  # the epoch's end is a step boundary too
            out_of_time = _over_budget(budget.over(seconds), device)
        state.train_seconds += seconds
        events = torch.tensor([seen_events[0]], dtype=torch.int64, device=_collective_device(device))
        dist.all_reduce(events)
        metrics = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": stats.mean_loss,
            "epoch_seconds": seconds,
            "train_events": int(events.item()),
            "train_events_per_second": events.item() / seconds,
            "input_wait_seconds": stats.input_wait_seconds,
            "cpu_stolen_fraction": stolen.fraction(),
            "lr_factor": factor[0],
        }
        state.train_losses.append([state.epoch, round(metrics["train_loss"], 6)])
        curves.scalars(
            state.epoch,
            {f"epoch/{k}": metrics[k] for k in ("train_loss", "epoch_seconds", "train_events_per_second")},
        )
        steal = metrics["cpu_stolen_fraction"]
        steal = (
            f"; {steal:.0%} of the machine's CPU went to other guests (hypervisor steal)"
            if steal and steal >= 0.01
            else ""
        )
        to_go = ""
        if not budget.needs_plan and state.epoch < budget.epochs:  # the run's ETA from its epochs and evaluations
            per_epoch = (time.time() - started) / (state.epoch - start_epoch)
            to_go = f"; about {duration((budget.epochs - state.epoch) * per_epoch)} to go"
        epoch_line = (
            f"train_loss={metrics['train_loss']:.4f} ({seconds:.1f}s, {metrics['train_events_per_second']:,.0f} "
            f"events/s, {stats.input_wait_seconds:.1f}s of it waiting for input{steal})"
        )
        # A short epoch has no line of its own: an evaluated one tells its figures with its validation line.
        folded = seconds < QUIET_BELOW_S and not budget.needs_plan
        if not folded:
            say(f"[argus] epoch {state.epoch} done: {epoch_line}{to_go}")
        if out_of_time:
            say(
                f"[argus] time budget of {o.time_budget_minutes:g} min {budget.counts} reached after "
                f"{state.step} steps (epoch {state.epoch}, {n_steps} of its steps)",
            )
        elif budget.fitted and state.epoch < budget.epochs and _over_budget(budget.no_room_for_another(), device):
            out_of_time = True  # the epochs so far ran slower than planned: this one is the last
            say(
                f"[argus] time budget of {o.time_budget_minutes:g} min: no room for epoch {state.epoch + 1}; "
                f"evaluating epoch {state.epoch} as the last",
            )
        last = state.epoch >= budget.epochs or out_of_time
        if state.epoch % budget.eval_every and not last:
            report(metrics, None)
            continue
        t_eval = time.time()
        validation = evaluation.run("validation", state.epoch)
        val = validation["model"]["ndcg@10"]
        metrics["validation_seconds"] = validation["seconds"]
        metrics.update({f"validation/{k}": v for k, v in validation["model"].items()})
        metrics[CHECKPOINT_SCORE] = finite_score(val)
        curves.scalars(state.epoch, {f"validation/{k}": v for k, v in validation["model"].items()})
        state.history.append(
            {
                "epoch": state.epoch,
                "validation": validation["model"],
                **{
                    k: metrics[k]
                    for k in (
                        "epoch_seconds",
                        "train_events_per_second",
                        "input_wait_seconds",
                        "cpu_stolen_fraction",
                        "validation_seconds",
                        "lr_factor",
                    )
                },
            }
        )
        if improved(state, val):
            # The test split is read once, at the end, on the best validation epoch's model.
            state.best_metrics = {
                "validation": validation["model"],
                "baselines": {"popularity": {"validation": validation["popularity"]}},
            }
        if budget.needs_plan:  # from the slowest rank's times, so that every rank makes the same plan
            times = torch.tensor(
                [seconds, time.time() - t_eval, state.train_seconds + state.eval_seconds + time.time() - t_eval],
                dtype=torch.float64,
                device=_collective_device(device),
            )
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
            epoch_s, eval_s, spent = times.tolist()
            test_s = eval_s * prepared.summary["rows"]["test"] / max(validation["model"]["users"], 1)
            plan = budget.fit(epoch_s, eval_s, spent, test_s)
            say(
                f"[argus] time budget of {o.time_budget_minutes:g} min (steps and evaluations): epoch 1 took "
                f"{epoch_s:.0f}s, its validation {eval_s:.0f}s -> {plan.epochs} epochs, validation every "
                f"{plan.eval_every}, the test once at the end (expected {plan.seconds / 60:.1f} min)",
            )
            last = state.epoch >= budget.epochs
        elif budget.fitted and not (out_of_time or last):
            # epochs that run slower (or faster) than epoch 1 did: the epochs and the cosine's span refitted
            previous = state.history[-2].get("checkpoint_seconds", 0.0) if len(state.history) > 1 else 0.0
            evaluating = time.time() - t_eval
            times = torch.tensor(  # the slowest rank's, as for the first plan: every rank refits alike
                [
                    budget.recent_epoch_seconds(),
                    evaluating + previous,
                    state.train_seconds + state.eval_seconds + evaluating,
                ],
                dtype=torch.float64,
                device=_collective_device(device),
            )
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
            before, since = budget.epochs, state.epoch - budget.refit_span + 1
            epoch_s, eval_s, spent = times.tolist()
            plan = budget.refit(epoch_s, eval_s, spent, steps_per_epoch)
            if plan.epochs != before:
                say(
                    f"[argus] time budget of {o.time_budget_minutes:g} min: epochs {since}-{state.epoch} took "
                    f"{epoch_s:.0f}s each -> {plan.epochs} epochs instead of {before}, the cosine schedule "
                    f"respanned (expected {plan.seconds / 60:.1f} min)",
                )
            last = state.epoch >= budget.epochs
        stopping = out_of_time or last
        patience_out = bool(o.early_stopping_patience) and state.evals_without_gain >= o.early_stopping_patience
        if (stopping or patience_out) and state.best_epoch == state.epoch:
            _read_test(state, evaluation.run("test", state.epoch))  # the best model is the one in memory
        state.eval_seconds += time.time() - t_eval
        metrics["final"] = _final(cfg, state, sizes)  # the checkpoint's metrics carry the run's result so far
        pop = validation["popularity"]["ndcg@10"]
        say(
            f"[argus] epoch {state.epoch} validation ndcg@10={val:.4f} ±{validation['model']['ndcg@10_se']:.4f} "
            f"hr@10={validation['model']['hr@10']:.4f} "
            f"(popularity {pop:.4f}; best {state.best_validation:.4f} @ epoch {state.best_epoch})"
            + (f"; {epoch_line}{to_go}" if folded else ""),
        )
        restore_and_test = None
        if (stopping or patience_out) and "test" not in state.best_metrics:

            def restore_and_test(saved: Path) -> None:
                """After this epoch's checkpoint is written: the best epoch's restored and tested; the
                result goes into this checkpoint's train state and metrics."""
                best = _checkpoint_of_epoch(run_dir, state.best_epoch)
                load_checkpoint(best, sharded)
                say(f"[argus] testing the best validation epoch, {state.best_epoch}: restored {best.name}")
                _read_test(state, evaluation.run("test", state.best_epoch))
                metrics["final"] = _final(cfg, state, sizes)
                if rank == 0:
                    write_train_state(saved, state)

        saved = checkpoint_and_report(sharded, state, cfg, run_dir, metrics, report, restore_and_test)
        # the budget of a fitted run counts checkpoints with the evaluations (after the save: not in this checkpoint)
        state.history[-1]["checkpoint_seconds"] = round(saved, 2)
        state.eval_seconds += saved
        if stopping:
            break
        if patience_out:
            say(f"[argus] early stopping: no validation gain in {state.evals_without_gain} evaluations")
            break
    curves.close()
    if rank == 0:
        title = f"{run_dir.name}: best validation NDCG@10 {state.best_validation:.4f} at epoch {state.best_epoch}"
        plot_curves(state.train_losses, state.history, run_dir / CURVES, title)
    return _final(cfg, state, sizes)


class Evaluation:
    """One split's evaluation of the model as it is now: rows looked up through the sharded tables
    (the pipeline lets go of the sparse forward until the next epoch), each rank scoring its own
    block of the catalogue. Validation reads a user sample when eval.max_users is set; the test,
    every user."""

    def __init__(self, cfg, sharded, pipeline, iterate, prepared, collate, counts, window, device) -> None:
        self.cfg, self.sharded, self.pipeline, self.iterate = cfg, sharded, pipeline, iterate
        self.prepared, self.collate, self.counts, self.window, self.device = prepared, collate, counts, window, device

    def run(self, split: str, epoch: int) -> dict:
        """{"model": ..., "popularity": ..., "seconds": ...} of `split` (collective)."""
        cfg, rank = self.cfg, dist.get_rank()
        self.pipeline.detach()
        lookup = self.sharded.task.sparse
        dense = self.sharded.eval_dense(cfg)
        catalogue = catalogue_shard(dense, lookup, self.collate.id_features, self.device, cfg.eval.catalogue_block)
        sample = cfg.eval.max_users if split == "validation" else 0
        rows = self.prepared.summary["rows"][split]
        held_out = length_buckets(
            user_sample(self.iterate(split, cfg.eval.batch_size), sample, rows), cfg.eval.length_buckets, self.window
        )
        progress = Progress(
            f"epoch {epoch} {split}",
            min(sample, rows) if sample else rows,
            "users",
            rank == 0,
            close_below_s=QUIET_BELOW_S,
        )
        result = evaluate(
            dense, lookup, held_out, self.collate, self.counts, cfg.eval, self.device, catalogue, progress
        )
        return {**result, "seconds": progress.close()}


def _read_test(state: TrainState, test: dict) -> None:
    """The best validation epoch's test figures, into the run's result."""
    state.best_metrics["test"] = test["model"]
    state.best_metrics["test_epoch"] = state.best_epoch
    state.best_metrics["test_seconds"] = round(test["seconds"], 2)
    state.best_metrics.setdefault("baselines", {}).setdefault("popularity", {})["test"] = test["popularity"]


def _checkpoint_of_epoch(run_dir: Path, epoch: int) -> Path:
    """The kept checkpoint of `epoch` (the checkpoints keep the best validation epochs and the latest)."""
    found = checkpoint_of_epoch(run_dir, epoch)
    if found is None:
        raise RuntimeError(
            f"{run_dir}: no kept checkpoint of epoch {epoch}, the best validation epoch, to read the test split "
            f"with (found {[c.name for c in checkpoints(run_dir)]}); run.checkpoints_to_keep must be at least 1"
        )
    return found


def _collective_device(device: torch.device) -> torch.device | str:
    """Where a small tensor for a collective lives: nccl moves CUDA tensors only, gloo CPU tensors."""
    return device if dist.get_backend() == "nccl" else "cpu"


def _over_budget(over: bool, device: torch.device) -> bool:
    """Whether any rank is over the time budget (collective, so every rank stops at the same step)."""
    flag = torch.tensor([int(over)], device=_collective_device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class Budget:
    """The epochs of a run and `optim.time_budget_minutes`.

    optim.epochs > 0: that many epochs, stopped early once the budget's minutes of training steps
    have run. optim.epochs = 0: the budget covers steps and evaluations; epoch 1 runs at a flat
    learning rate after warm-up and is evaluated, then `fit_epochs` sets the epochs and the
    validation cadence from their measured times, and the cosine schedule spans those epochs.
    The plan is kept in the train state, so a resumed run keeps it."""

    RESERVE = 0.2  # epoch 1 of a fitted run stops at 80% of the budget, leaving room for its evaluation

    def __init__(self, o, state: TrainState) -> None:
        self.o, self.state = o, state
        self.fitted = o.epochs == 0

    @property
    def needs_plan(self) -> bool:
        return self.fitted and not self.state.plan

    @property
    def epochs(self) -> int:
        return self.o.epochs or self.state.plan.get("epochs", self.state.epoch + 1)  # unplanned: one to time

    @property
    def eval_every(self) -> int:
        return self.state.plan.get("eval_every", 1) if self.fitted else self.o.eval_every_epochs

    @property
    def epochs_label(self) -> str:
        return "?" if self.needs_plan else str(self.epochs)

    @property
    def counts(self) -> str:
        return "of training and evaluation" if self.fitted else "of training"

    def total_steps(self, steps_per_epoch: int) -> int:
        """The schedule's length: unknown (a flat rate after warm-up) until a fitted run is planned."""
        return 1 << 62 if self.needs_plan else steps_per_epoch * self.epochs

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The learning-rate multiplier at `step`; a fitted run's cosine goes on from where each plan
        was made (`schedule.lr_factor`'s anchor), so a plan made again never raises the rate."""
        o = self.o
        total = self.total_steps(steps_per_epoch)
        return lr_factor(step, o.warmup_steps, total, o.lr_schedule, o.min_lr_ratio, self._anchor)

    @property
    def _anchor(self) -> tuple[int, float] | None:
        plan = self.state.plan
        return (plan["anchor_step"], plan["anchor_progress"]) if "anchor_step" in plan else None

    def over(self, epoch_seconds: float) -> bool:
        """Whether this rank, `epoch_seconds` into the current epoch, has used the budget."""
        limit = self.o.time_budget_minutes * 60
        if not self.fitted:
            return self.state.train_seconds + epoch_seconds >= limit
        spent = self.state.train_seconds + self.state.eval_seconds + epoch_seconds
        reserve = self._eval_seconds() + self._test_seconds() if self.state.plan else self.RESERVE * limit
        return spent >= limit - reserve

    def no_room_for_another(self) -> bool:
        """Fitted run, after an epoch: whether one more epoch, its evaluation and the test at the end
        would pass the budget."""
        s = self.state
        spent = s.train_seconds + s.eval_seconds
        need = s.train_seconds / max(s.epoch, 1) + self._eval_seconds() + self._test_seconds()
        return spent + need > self.o.time_budget_minutes * 60

    def fit(self, epoch_seconds: float, eval_seconds: float, spent_seconds: float, test_seconds: float) -> EpochPlan:
        s = self.state
        plan = fit_epochs(
            self.o.time_budget_minutes * 60, spent_seconds, s.epoch, epoch_seconds, eval_seconds, test_seconds
        )
        s.plan = {
            **asdict(plan),
            "first_epochs": plan.epochs,
            "epoch_seconds": round(epoch_seconds, 1),
            "eval_seconds": round(eval_seconds, 1),
            "test_seconds": round(test_seconds, 1),
            "fitted_at_epoch": s.epoch,
            "fitted_at_train_seconds": round(s.train_seconds, 2),
            "anchor_step": s.step,  # the cosine starts here, after epoch 1's flat rate
            "anchor_progress": 0.0,
        }
        return plan

    @property
    def refit_span(self) -> int:
        """Epochs since the plan was last made."""
        return self.state.epoch - self.state.plan.get("fitted_at_epoch", 1)

    def recent_epoch_seconds(self) -> float:
        """This rank's mean epoch since the plan was last made."""
        s = self.state
        return (s.train_seconds - s.plan.get("fitted_at_train_seconds", 0.0)) / max(self.refit_span, 1)

    def refit(self, epoch_seconds: float, eval_seconds: float, spent_seconds: float, steps_per_epoch: int) -> EpochPlan:
        """The plan again, after an evaluation, from the epochs since the last plan: same validation
        cadence; the cosine goes on from where it is over the new plan's remaining steps."""
        s = self.state
        progress = cosine_progress(s.step, self.o.warmup_steps, self.total_steps(steps_per_epoch), self._anchor)
        plan = fit_epochs(
            self.o.time_budget_minutes * 60,
            spent_seconds,
            s.epoch,
            epoch_seconds,
            eval_seconds,
            s.plan.get("test_seconds", 0.0),
            every=s.plan["eval_every"],
        )
        s.plan.update(
            epochs=plan.epochs,
            seconds=plan.seconds,
            fitted_at_epoch=s.epoch,
            fitted_at_train_seconds=round(s.train_seconds, 2),
            anchor_step=s.step,
            anchor_progress=round(progress, 6),
            refits=s.plan.get("refits", 0) + 1,
        )
        return plan

    def _eval_seconds(self) -> float:
        """One evaluation's seconds, as the last one took (validation and checkpoint)."""
        last = self.state.history[-1] if self.state.history else {}
        return sum(last.get(k, 0.0) for k in ("validation_seconds", "checkpoint_seconds"))

    def _test_seconds(self) -> float:
        """What the test at the end will take, until it is read: the planned estimate and the
        restore of the best epoch's checkpoint (about as long as the last save)."""
        if "test" in self.state.best_metrics:
            return 0.0
        last = self.state.history[-1] if self.state.history else {}
        return self.state.plan.get("test_seconds", 0.0) + last.get("checkpoint_seconds", 0.0)


def _final(cfg: TrainJobConfig, state: TrainState, sizes: dict[str, int]) -> dict:
    return {
        **state.best_metrics,
        "parameters": sizes,
        # this worker's peak resident memory so far (Linux reports ru_maxrss in KiB)
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "best_epoch": state.best_epoch,
        "epochs_trained": state.epoch,
        "steps": state.step,
        "history": state.history,
        "train_seconds": round(state.train_seconds, 1),
        "eval_seconds": round(state.eval_seconds, 1),
        **({"epoch_plan": state.plan} if state.plan else {}),
        "protocol": {
            "split": cfg.data.split,
            "filter_seen": cfg.eval.filter_seen,
            "ranking": "full catalogue",
            "selection": "best validation ndcg@10",
            "validation_users": (
                f"a sample of about {cfg.eval.max_users:,} (hash of user_idx)" if cfg.eval.max_users else "all"
            ),
            "test_users": "all",
            "precision": cfg.optim.precision,
            "next_item_loss": cfg.loss.next_item,
        },
    }


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: the config dict is the only thing that crosses the process boundary."""
    cfg = from_dict(TrainJobConfig, config["job"])
    run_ray_worker(config, lambda io, resume: run_worker(cfg, io.run_dir, io.iterate, resume, io.report, io.device))
