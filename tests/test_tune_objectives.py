"""Weight-search metrics against hand-computed values; sign ranges, Pareto front, selection."""

import numpy as np
import pandas as pd
import pytest

from argus_platform.data.synthetic import expected_actions
from argus_platform.tuning.candidates import CandidateSet
from argus_platform.tuning.config import MetricSpec, SearchConfig, TuneWeightsConfig
from argus_platform.tuning.objectives import best_ordering, evaluate, scores, violation
from argus_platform.tuning.report import recoverable_gap
from argus_platform.tuning.search import in_space, pareto_mask, select, trial, weight_range


@pytest.fixture
def cand():
    # 2 rows × 3 candidates; row 0's engaged item is candidate 1, row 1's is candidate 0
    items = np.array([[5, 6, 7], [8, 9, 0]])  # row 1 has only two candidates
    target = np.array([[False, True, False], [True, False, False]])
    probs = {
        "like": np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.0]]),
        "dislike": np.array([[0.0, 0.1, 0.6], [0.3, 0.0, 0.0]]),
    }
    observed = {"like": np.array([[0, 1, 0], [0, 0, 0]], float), "dislike": np.array([[0, 0, 0], [1, 0, 0]], float)}
    oracle = {
        "like": np.array([[0.5, 0.7, 0.2], [0.1, 0.9, 0.0]]),
        "dislike": np.array([[0.1, 0.0, 0.5], [0.4, 0.0, 0.0]]),
    }
    return CandidateSet(items, target, probs, observed, oracle)


def test_replay_metrics_match_hand_computed_values(cand):
    gains = {"like": 2.0, "dislike": -3.0}
    specs = [
        MetricSpec(name="u1", kind="utility", gains=gains, k=1),
        MetricSpec(name="u2", kind="utility", gains=gains, k=2),
        MetricSpec(name="d2", kind="rate", action="dislike", k=2),
        MetricSpec(name="n3", kind="ndcg", gains=gains, k=3),
    ]
    # weights like=1: row 0 order [0, 1, 2] (engaged at position 2), row 1 order [1, 0] (engaged at 2)
    got = evaluate(cand, {"like": 1.0, "dislike": 0.0}, specs)
    assert got["u1"] == pytest.approx(0.0)
    assert got["u2"] == pytest.approx((2.0 + -3.0) / 2)
    assert got["d2"] == pytest.approx(0.5)
    assert got["n3"] == pytest.approx(1 / np.log2(3))  # only row 0 has a positive gain; it sits at rank 2
    # weights dislike=+1: row 0 puts candidate 2 first (not engaged: 0), row 1 its engaged, disliked item (−3)
    assert evaluate(cand, {"like": 0.0, "dislike": 1.0}, specs)["u1"] == pytest.approx((0.0 - 3.0) / 2)


def test_value_corr_is_spearman_over_engaged_items(cand):
    spec = MetricSpec(name="v", kind="value_corr", gains={"like": 1.0, "dislike": -1.0})
    # engaged: row 0 (value +1, like-score 0.5), row 1 (value −1, like-score 0.2) → same order: +1
    assert evaluate(cand, {"like": 1.0, "dislike": 0.0}, [spec])["v"] == pytest.approx(1.0)
    assert evaluate(cand, {"like": -1.0, "dislike": 0.0}, [spec])["v"] == pytest.approx(-1.0)


def test_oracle_truth_and_regret(cand):
    spec = MetricSpec(name="v", kind="value_corr", gains={"like": 1.0}, k=1)
    # truth of any metric = true utility of the top-k; best ordering picks E[like] 0.7 and 0.9
    assert best_ordering(cand, [spec])["v"] == pytest.approx((0.7 + 0.9) / 2)
    true = evaluate(cand, {"like": 1.0}, [spec], source="oracle")["v"]  # picks candidates 0 (0.5) and 1 (0.9)
    assert true == pytest.approx((0.5 + 0.9) / 2)
    rate = MetricSpec(name="r", kind="rate", action="dislike", k=1, goal="min", max=0.1)
    assert best_ordering(cand, [rate])["r"] == pytest.approx((0.0 + 0.0) / 2)
    assert violation(rate, 0.25) == pytest.approx(0.15) and violation(rate, 0.05) == 0.0


def test_the_slate_replay_dcg_matches_hand_computed_values(cand):
    """A logged slate per row: only the chosen item has actions. dcg sums gain · value / log2(pos + 1)."""
    spec = MetricSpec(name="g", kind="dcg", gains={"like": 2.0, "dislike": -3.0}, k=3)
    # like=1: row 0 ranks [0, 1, 2], its chosen, liked item 2nd (+2); row 1 ranks [1, 0], its chosen,
    # disliked item 2nd (−3): (2 − 3) / log2(3) / 2 rows
    assert evaluate(cand, {"like": 1.0}, [spec])["g"] == pytest.approx((2.0 - 3.0) / np.log2(3) / 2)
    # like=−1: row 0 ranks [2, 1, 0] (+2 at 2nd), row 1 [0, 1]: the disliked item first (−3)
    assert evaluate(cand, {"like": -1.0}, [spec])["g"] == pytest.approx((2.0 / np.log2(3) - 3.0) / 2)
    # the truth of a dcg objective is the dcg of the simulator's values, position-discounted too
    true = evaluate(cand, {"like": 1.0}, [spec], source="oracle")["g"]
    row0 = (2 * 0.5 - 3 * 0.1) + (2 * 0.7 - 0) / np.log2(3) + (2 * 0.2 - 3 * 0.5) / 2
    row1 = (2 * 0.9) + (2 * 0.1 - 3 * 0.4) / np.log2(3)
    assert true == pytest.approx((row0 + row1) / 2)


def test_baselines_enter_the_search_space_rescaled_and_rank_the_same(cand):
    cfg = TuneWeightsConfig()  # every weight in [-1, 1]
    loud = {"like": 4.0, "dislike": -2.0}
    point = in_space(cfg, loud, ["like", "dislike"])
    assert point == {"w_like": 1.0, "w_dislike": -0.5}
    scaled = {"like": point["w_like"], "dislike": point["w_dislike"]}
    np.testing.assert_array_equal(np.argsort(-scores(cand, loud)), np.argsort(-scores(cand, scaled)))
    signed = TuneWeightsConfig(search=SearchConfig(signs_from_gains=True))  # skip ≤ 0, like ≥ 0, ...
    actions = ["skip", "like", "dislike", "played_ratio"]
    assert in_space(signed, {a: 0.25 for a in actions}, actions) is None, "uniform's +skip is outside"
    assert in_space(signed, {"like": 1.0, "played_ratio": 0.5, "skip": -0.5}, actions) is not None


def test_the_recoverable_gap_is_oracle_best_minus_default_and_the_tuned_share_of_it():
    row = lambda v: {"observed": {}, "oracle": {"m": v}}  # noqa: E731
    evals = {"test": {"tuned": row(3.0), "default": row(2.0), "uniform": row(1.0), "oracle_best": row(6.0)}}
    evals["test"]["oracle_ordering"] = {"m": 9.0}
    got = recoverable_gap(evals, "m")["test"]
    assert got["gap"] == pytest.approx(4.0) and got["recovered"] == pytest.approx(0.25)


def test_expected_actions_match_the_generators_sampling():
    rng = np.random.default_rng(0)
    a = np.array([-0.8, 0.1, 0.9])
    e = expected_actions(a)
    ratio = 1 / (1 + np.exp(-(2 * a[:, None] + rng.normal(scale=0.5, size=(3, 200_000)))))
    np.testing.assert_allclose(e["played_ratio"], ratio.mean(1), atol=3e-3)
    np.testing.assert_allclose(e["skip"], (ratio < 0.3).mean(1), atol=3e-3)
    np.testing.assert_allclose(e["like"], 1 / (1 + np.exp(-(3 * a - 2))))


def test_weight_signs_follow_the_objectives_gains_and_selection_respects_constraints():
    cfg = TuneWeightsConfig(
        objectives=[
            MetricSpec(name="a", kind="utility", gains={"like": 5, "skip": -1}),
            MetricSpec(name="b", kind="rate", action="dislike", goal="min"),
        ],
        search=SearchConfig(weight_low=-2, weight_high=3, signs_from_gains=True),
    )
    assert weight_range(cfg, "like") == (0.0, 3) and weight_range(cfg, "skip") == (-2, 0.0)
    assert weight_range(cfg, "dislike") == (-2, 3)  # no gain names it
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0, 2.5], "b": [0.1, 0.2, 0.5, 0.1], "violation": [0, 0, 0, 0.3]})
    assert pareto_mask(df, cfg.objectives).tolist() == [False, False, True, True]  # row 3 dominates rows 0 and 1 ...
    chosen, feasible, front = select(df, cfg)  # ... but violates a constraint, so selection never sees it
    assert chosen == 2 and len(feasible) == 3 and front.tolist() == [True, True, True]


def test_a_trial_penalises_violated_constraints(cand):
    objectives = [MetricSpec(name="u", kind="utility", gains={"like": 1.0}, k=1)]
    constraints = [MetricSpec(name="d", kind="rate", action="dislike", k=1, max=0.0)]
    out = trial({"w_like": 0.0, "w_dislike": 1.0}, cand, objectives, constraints, ["like", "dislike"])
    assert out["d"] == pytest.approx(0.5) and out["violation"] == pytest.approx(0.5)
    assert out["searched_0"] == pytest.approx(out["u"] - 100 * 0.5)
