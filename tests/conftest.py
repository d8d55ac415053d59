"""Shared fixtures: repo paths, ../shared data (skipped with a reason when absent), a local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARGUS_SHARED", ROOT.parent / "shared"))
RAW = SHARED / "data" / "raw"


def shared_file(relative: str) -> Path:
    path = RAW / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/raw/{relative} (not found at {path})")
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        # 4 logical CPUs on any machine: 2 train workers + budget for Ray Data (DESIGN.md §9).
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
