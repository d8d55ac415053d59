"""The serving benchmark's capacity rule (the sweep itself runs against a live service in the bench)."""

from argus_serve.bench_serve import capacity


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
