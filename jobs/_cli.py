"""Shared command line of the jobs: `--config FILE` and repeated `--set key.path=value`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source roots (not the repo root: a repo-root `platform` folder must never shadow the stdlib).
for _src in ("platform", "models"):
    if str(ROOT / _src) not in sys.path:
        sys.path.insert(0, str(ROOT / _src))

import yaml  # noqa: E402

from argus_platform.configlib import ConfigError, describe, load_config, to_dict  # noqa: E402


def parse_config(cls, description: str, argv: list[str] | None = None):
    return parse_config_and_args(cls, description, None, argv)[0]


def parse_config_and_args(cls, description: str, add_arguments=None, argv: list[str] | None = None):
    """(config, argparse namespace); `add_arguments(parser)` adds a job's own flags."""
    rows = describe(cls)
    width = max(len(k) for k, *_ in rows)
    epilog = "config keys (YAML or --set):\n" + "\n".join(
        f"  {k:<{width}}  {t:<10} default {d!r}{'  — ' + h if h else ''}" for k, t, d, h in rows
    )
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (see jobs/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set optim.epochs=3 (repeatable)")
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
