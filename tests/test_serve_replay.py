"""The staleness replay's input and figures (argus_serve.replay_serve): the held-out events of a temporal
split in time order with each user's earlier events, and the per-event metrics. The replay through
a live service is in test_serve_app."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from argus_platform.data.config import DataConfig, SyntheticConfig
from argus_platform.data.prepare import prepare_data
from argus_serve.artifacts import ArtifactError
from argus_serve.replay_serve import ReplayConfig, dcg_at, held_out_events, metrics, paired


def _prepare(tmp_path, split):
    cfg = DataConfig(
        synthetic=SyntheticConfig(num_users=30, num_items=40, events_per_user=8, min_events=4), split=split
    )
    prepare_data(cfg, tmp_path)
    return tmp_path


def test_held_out_events_are_the_test_period_in_time_order_after_each_users_earlier_events(ray_local, tmp_path):
    run = _prepare(tmp_path, "temporal")
    start = json.loads((run / "data" / "summary.json").read_text())["temporal_cuts"][3]
    log = pq.read_table(run / "data" / "events.parquet").to_pandas()
    held = held_out_events(run, window_h=1e9, max_events=10**6, history_cap=0)
    assert held.test_start == start
    assert len(held.events) == int((log["timestamp"] >= start).sum()) > 0
    times = [e["timestamp"] for _, e in held.events]
    assert times == sorted(times) and min(times) >= start
    for n, user in enumerate(held.users):
        mine = log[log["user_id"] == user].sort_values("timestamp", kind="stable")
        before = mine[mine["timestamp"] < start]
        assert [e["item_id"] for e in held.prefix[n]] == list(before["item_id"])
        assert [e["item_id"] for m, e in held.events if m == n] == list(mine[mine["timestamp"] >= start]["item_id"])
        assert all(set(e["actions"]) <= {"like", "dislike", "skip", "played_ratio"} for e in held.prefix[n])
    # a user's first event is scored only when there is a history before it
    first = {}
    for j, (n, _) in enumerate(held.events):
        first.setdefault(n, j)
    assert held.cold == [first[n] == j and not held.prefix[n] for j, (n, _) in enumerate(held.events)]
    # the window, the count and the history cap bound what is replayed
    capped = held_out_events(run, window_h=1e9, max_events=5, history_cap=2)
    assert [e for _, e in capped.events] == [e for _, e in held.events[:5]]
    assert all(len(p) <= 2 for p in capped.prefix)
    span = (times[-1] - start) / 3600
    assert len(held_out_events(run, window_h=span / 2, max_events=10**6, history_cap=0).events) < len(held.events)


def test_a_run_not_split_in_time_is_refused_with_the_reason(ray_local, tmp_path):
    run = _prepare(tmp_path, "leave_last_out")
    with pytest.raises(ArtifactError, match="needs a temporal split"):
        held_out_events(run, 24.0, 100, 0)


def test_per_event_metrics_and_the_paired_difference():
    assert dcg_at(0, 10) == 1.0 and dcg_at(1, 10) == pytest.approx(1 / np.log2(3))
    assert dcg_at(10, 10) == 0.0 and dcg_at(None, 10) == 0.0
    reference, ranks = [0, 3, None, 12], [1, 3, 2, None]
    m = metrics(ranks, k=100)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(4)) / 4)
    assert m["hr@10"] == 0.75 and m["hr@100"] == 0.75
    d = paired(ranks, reference)
    per_event = np.array([1 / np.log2(3) - 1, 0.0, 1 / np.log2(4), 0.0])
    assert d["ndcg@10_delta"] == pytest.approx(per_event.mean())
    assert d["ndcg@10_delta_se"] == pytest.approx(per_event.std(ddof=1) / 2)
    assert d["same_rank_share"] == 0.25
    assert paired(reference, reference) == {"ndcg@10_delta": 0.0, "ndcg@10_delta_se": 0.0, "same_rank_share": 1.0}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"modes": ("latest",)}, "must include 'off'"),
        ({"modes": ("off", "mean3")}, "unknown state_mode"),
        ({"k": 5}, "NDCG@10 needs k"),
        ({"think_s": (-1.0,)}, "must be ≥ 0"),
        ({"window_h": 0.0}, "must be > 0"),
    ],
)
def test_replay_config_refuses_what_it_cannot_measure(change, reason):
    with pytest.raises(ValueError, match=reason):
        ReplayConfig(**change).validate()
