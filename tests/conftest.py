"""Shared fixtures: repo paths, ../shared data (skipped with a reason when absent), a local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARGUS_SHARED", ROOT.parent / "shared"))
RAW = SHARED / "data" / "raw"


def pytest_collection_modifyitems(items):
    """Tests on the shared local Ray (directly or through a trained run) are `integration` tests,
    as are those marked so by hand (several processes, a job or a validator in a subprocess):
    `make test-fast` leaves them out."""
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.integration)


def shared_file(relative: str) -> Path:
    path = RAW / relative
    if not path.exists():
        pytest.skip(f"needs ../shared/data/raw/{relative} (not found at {path})")
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        # Serve's fast request path as shipped (HAProxy, direct ingress, gRPC): read by Ray's
        # processes when they start, so it is in the environment before ray.init.
        from argus_serve.launch import SERVE_ENV

        for key, value in SERVE_ENV.items():
            os.environ.setdefault(key, value)
        # An ingress replica drains 30 s before it stops (for load balancers to notice); a test
        # module's serve.shutdown() would outlast its own 30 s wait and leave a dying controller.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
        # 4 logical CPUs on any machine: 2 train workers + budget for Ray Data.
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


TINY_TRAIN = [
    "data.synthetic.num_users=120",
    "data.synthetic.num_items=60",
    "data.synthetic.events_per_user=12",
    "data.synthetic.min_events=6",
    "model.embedding_dim=16",
    "model.num_layers=1",
    "model.max_seq_len=10",
    "optim.batch_size=16",
    "optim.eval_every_epochs=1",
    "optim.log_every_steps=0",
    "loss.in_batch_negatives=16",
    "loss.uniform_negatives=16",
    "scaling.local_num_cpus=4",
]


def run_train_job(args: list[str]) -> int:
    """`jobs/train_argus.py` main, loaded by path (tests never import jobs/ as a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_argus", ROOT / "jobs" / "train_argus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


@pytest.fixture(scope="session")
def tiny_run(ray_local, tmp_path_factory):
    """A real (tiny) training run of the synthetic default through Ray Train: 2 epochs, the loss
    logged every 5 steps."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert (
        run_train_job(
            [f"--set={kv}" for kv in TINY_TRAIN + [f"run.dir={run_dir}", "optim.epochs=2", "optim.log_every_steps=5"]]
        )
        == 0
    )
    return run_dir


@pytest.fixture(scope="session")
def hashed_run(ray_local, tmp_path_factory):
    """A tiny three-token run with multi-hash item embeddings (13 buckets × 2 tables): 2 epochs."""
    run_dir = tmp_path_factory.mktemp("hashed") / "run"
    assert (
        run_train_job(
            [
                f"--set={kv}"
                for kv in TINY_TRAIN
                + [
                    f"run.dir={run_dir}",
                    "optim.epochs=2",
                    "model.tokenization=three_token",
                    "model.multi_hash_buckets=13",
                ]
            ]
        )
        == 0
    )
    return run_dir


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server (the Debian package `make test` installs) on a free port, its append-only
    file in a temporary directory. Skipped with the reason where the binary is absent, except under
    CI=true, where that is a failure."""
    import shutil

    from argus_serve.redis_local import RedisServer

    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (make test installs the Debian package redis-server)")
        pytest.skip("needs redis-server (Debian package redis-server; `make test` installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), _free_port()).start()
    yield server
    server.stop()
