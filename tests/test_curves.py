"""TensorBoard scalars written by rank 0 read back as written; curves.png is drawn from a run's history."""

import pytest
from tensorboard_events import scalar_series

from argus_platform.curves import Curves, plot_curves


def test_scalars_round_trip_and_other_ranks_write_nothing(tmp_path):
    curves = Curves(tmp_path, enabled=True)
    for step in (20, 40):
        curves.scalars(step, {"train/loss": 1.0 / step, "lr/dense": 0.002})
    curves.scalars(1, {"validation/ndcg@10": 0.25})
    curves.close()
    series = scalar_series(tmp_path / "tensorboard")
    assert series["train/loss"] == [(20, pytest.approx(0.05)), (40, pytest.approx(0.025))]  # float32 in the file
    assert series["validation/ndcg_at_10"] == [(1, 0.25)] and len(series["lr/dense"]) == 2
    Curves(tmp_path / "rank1", enabled=False).scalars(1, {"train/loss": 1.0})
    assert not (tmp_path / "rank1").exists()


def test_curves_png_from_a_history(tmp_path):
    history = [{"epoch": e, "validation": {"ndcg@10": 0.1 * e}} for e in (3, 6, 9)]
    path = plot_curves([[e, 5.0 / e] for e in range(1, 10)], history, tmp_path / "curves.png", "a run")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
