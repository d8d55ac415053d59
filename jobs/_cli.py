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

from argus_platform.configlib import ConfigError, describe, load_config  # noqa: E402


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
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return load_config(cls, args.config, args.overrides), args
    except ConfigError as exc:
        parser.exit(2, f"config error: {exc}\n")
