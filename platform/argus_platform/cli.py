"""The jobs' command lines: `--config FILE`, repeated `--set key.path=value`, `--print-config`, `--help`.

Each `*_main(argv)` is what `jobs/<job>.py` runs (the thin files `ray job submit` takes) and what the
console scripts of the installed package (`argus-train`, ...) call. Heavy imports stay inside the
mains, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

import yaml

from argus_platform.configlib import ConfigError, describe, load_config, to_dict

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_config(cls, description: str, argv: list[str] | None = None):
    return parse_config_and_args(cls, description, None, argv)[0]


def config_epilog(cls, title: str = "config keys (YAML or --set)") -> str:
    """--help's list of a config's keys: type, default and what each does."""
    rows = describe(cls)
    width = max(len(k) for k, *_ in rows)
    return f"{title}:\n" + "\n".join(
        f"  {k:<{width}}  {t:<10} default {d!r}{'  — ' + h if h else ''}" for k, t, d, h in rows
    )


def parse_config_and_args(cls, description: str, add_arguments=None, argv: list[str] | None = None):
    """(config, argparse namespace); `add_arguments(parser)` adds a job's own flags."""
    parser = argparse.ArgumentParser(
        description=description, epilog=config_epilog(cls), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config file (see jobs/configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set optim.epochs=3 (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        sys.exit(0)
    return cfg, args


def _quiet(*names: str) -> None:
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


TRAIN_DESCRIPTION = "Train an ARGUS-style recommender on Ray Train with TorchRec-sharded embedding tables."


def train_flags(parser: argparse.ArgumentParser) -> None:
    """The training job's own flags, beside --config/--set."""
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="validate and prepare the data into run.dir, then exit (training with the same run.dir reuses it)",
    )


def train_main(argv: list[str] | None = None) -> int:
    """argus-train / jobs/train_argus.py."""
    from argus_platform.config import TrainJobConfig
    from argus_platform.data.quarantine import TooManyBadRows
    from argus_platform.data.sources import DataSourceError
    from argus_platform.torchrun import run_torchrun, under_torchrun
    from argus_platform.train_argus import format_summary, prepare_only, train

    cfg, args = parse_config_and_args(TrainJobConfig, TRAIN_DESCRIPTION, train_flags, argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    _quiet("ray", "torchrec", "torch.distributed")
    try:
        if args.prepare_only:
            prepare_only(cfg)
            return 0
        final = run_torchrun(cfg) if under_torchrun() else train(cfg)
    except (DataSourceError, TooManyBadRows) as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if final.get("baselines") and final.get("run_dir"):  # under torchrun: rank 0 only
        print(format_summary(final), flush=True)
    return 0


def finetune_main(argv: list[str] | None = None) -> int:
    """argus-finetune / jobs/finetune_argus.py."""
    from argus_models.rundir import CheckpointError
    from argus_platform.finetune.config import FinetuneConfig
    from argus_platform.finetune.finetune_argus import finetune, format_finetune

    cfg = parse_config(
        FinetuneConfig,
        "Fine-tune a pre-trained ARGUS run on impressions: two-tower pairwise (BPR) or a candidate-isolation ranker.",
        argv,
    )
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        final = finetune(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"finetune error: {exc}", file=sys.stderr)
        return 2
    print(format_finetune(final), flush=True)
    return 0


def tune_weights_main(argv: list[str] | None = None) -> int:
    """argus-tune-weights / jobs/tune_weights.py."""
    from argus_models.rundir import CheckpointError
    from argus_platform.tuning.config import TuneWeightsConfig
    from argus_platform.tuning.tune_weights import format_report, tune_weights

    cfg = parse_config(
        TuneWeightsConfig,
        "Search the ranking weights w of score = Σ_a w_a·P(a) with Ray Tune, for a training run.",
        argv,
    )
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        report = tune_weights(cfg)
    except (CheckpointError, ValueError) as exc:
        print(f"tune error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    return 0


def tune_train_main(argv: list[str] | None = None) -> int:
    """argus-tune-train / jobs/tune_train.py."""
    import json

    from argus_platform.tuning.tune_train import TuneTrainConfig, tune_train

    cfg = parse_config(
        TuneTrainConfig,
        "Search training hyper-parameters with Ray Tune: every trial a Ray Train run, ASHA early stopping.",
        argv,
    )
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        report = tune_train(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str))
    print(f"[tune-train] best config: {report['out_dir']}/best_config.yaml")
    return 0 if not report["errors"] else 1


def plan_main(argv: list[str] | None = None) -> int:
    """argus-plan / jobs/plan_argus.py."""
    from argus_platform.config import TrainJobConfig
    from argus_platform.plan_argus import Cluster, format_cluster_plan, plan_cluster, planning_schema

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--world-size", type=int, default=8, help="GPUs in the job (default 8)")
        parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
        parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
        parser.add_argument(
            "--host-memory-gb", type=float, default=1024.0, help="host memory per node in GiB (default 1024)"
        )
        parser.add_argument("--headroom", type=float, default=0.10, help="share of each GPU kept free (default 0.10)")
        parser.add_argument(
            "--num-items", type=int, default=0, help="catalogue size (default: data.synthetic.num_items of the config)"
        )

    cfg, args = parse_config_and_args(
        TrainJobConfig,
        "Plan a training config for a GPU cluster, without GPUs: TorchRec's sharding plan per table and memory "
        "per device.",
        add_arguments,
        argv,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    num_items = args.num_items or cfg.data.synthetic.num_items
    cluster = Cluster(
        world_size=args.world_size,
        gpus_per_node=args.gpus_per_node,
        gpu_memory_gb=args.gpu_memory_gb,
        host_memory_gb=args.host_memory_gb,
        headroom=args.headroom,
    )
    try:
        plan = plan_cluster(cfg, planning_schema(cfg, num_items), cluster)
    except ValueError as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    print(format_cluster_plan(plan), flush=True)
    return 0 if plan.fits else 1


def ablate_main(argv: list[str] | None = None) -> int:
    """argus-ablate / jobs/ablate_argus.py."""
    from argus_platform.ablate_argus import AblationConfig, ablate, format_table
    from argus_platform.data.quarantine import TooManyBadRows
    from argus_platform.data.sources import DataSourceError

    cfg = parse_config(
        AblationConfig,
        "Ablate the next-item loss, the negatives and the tokenisation on one dataset: a run per variant, one table.",
        argv,
    )
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    _quiet("ray", "torchrec", "torch.distributed")
    try:
        rows = ablate(cfg)
    except (ConfigError, DataSourceError, TooManyBadRows) as exc:
        print(f"ablation error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows), flush=True)
    return 0
