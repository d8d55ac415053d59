"""The serving benchmark's capacity rule and load schedules (the sweep itself runs against a live
service in the bench)."""

import numpy as np
import pytest

from argus_serve.bench_serve import capacity
from argus_serve.loadgen import schedule


def _row(rate, p99, refused=0, dropped=0, errors=None):
    return {"offered_rps": rate, "p99_ms": p99, "refused": refused, "dropped": dropped, "errors": errors or {}}


def test_capacity_is_the_last_rate_of_the_run_that_held_from_the_lowest():
    rows = [_row(90, 42.0), _row(50, 30.0), _row(70, 75.0), _row(60, 41.0)]  # 90 held again after 70 failed
    assert capacity(rows, 60.0) == 60
    assert capacity([_row(50, 30.0), _row(70, 59.9)], 60.0) == 70


def test_refusals_drops_and_errors_fail_a_rate_whatever_its_p99():
    assert capacity([_row(50, 20.0), _row(70, 25.0, refused=1)], 60.0) == 50
    assert capacity([_row(50, 20.0, dropped=2)], 60.0) == 0
    assert capacity([_row(50, 20.0), _row(60, 20.0, errors={"500": 1})], 60.0) == 50
    assert capacity([], 60.0) == 0


def test_uniform_schedule_spaces_requests_evenly_and_poisson_draws_exponential_gaps():
    np.testing.assert_allclose(schedule(50, 2), np.arange(100) / 50)
    times = schedule(100, 600, "poisson", seed=3)
    gaps = np.diff(times)
    assert len(times) == 60_000 and times[0] == 0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.01, rel=0.02)  # mean 1/rps
    assert np.std(gaps) == pytest.approx(0.01, rel=0.03)  # an exponential's spread equals its mean
    assert np.mean(gaps < 0.001) == pytest.approx(1 - np.exp(-0.1), abs=0.01)  # bunches: 9.5% within 1 ms
    np.testing.assert_array_equal(schedule(100, 5, "poisson", seed=3), schedule(100, 5, "poisson", seed=3))
    with pytest.raises(ValueError, match="arrivals='bursty'"):
        schedule(10, 1, "bursty")
