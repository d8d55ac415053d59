"""Weight-search metrics against hand-computed values; sign ranges, Pareto front, selection."""

import numpy as np
import pandas as pd
import pytest

from argus_platform.data.synthetic import choice_logits, expected_actions
from argus_platform.tuning.candidates import CandidateSet, oracle_values
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
    assert point == {"w_like": 1.0, "w_dislike": -0.5, "w_engage": 0.0, "engage_sharpness": 0.0}
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
    a, b = np.array([-0.8, 0.1, 0.9, 0.5]), np.array([0.0, 0.0, 0.0, 0.8])  # the last one is clickbait
    e = expected_actions(a, b)
    ratio = 1 / (1 + np.exp(-(2 * a[:, None] - 3 * b[:, None] + rng.normal(scale=0.5, size=(4, 200_000)))))
    np.testing.assert_allclose(e["played_ratio"], ratio.mean(1), atol=3e-3)
    np.testing.assert_allclose(e["skip"], (ratio < 0.3).mean(1), atol=3e-3)
    np.testing.assert_allclose(e["like"], 1 / (1 + np.exp(-(3 * a - 2))))
    np.testing.assert_allclose(e["dislike"], 1 / (1 + np.exp(-(-3 * a - 3 + 5 * b))))
    assert e["skip"][3] > e["skip"][1] and e["dislike"][3] > e["dislike"][1], "clickbait is skipped, disliked more"


def test_the_truth_of_a_replay_weights_each_item_by_its_choice_probability(cand):
    """With the simulator's choice model the truth is the replay's expectation: P(chosen | list) · E[a | chosen]."""
    choice = np.array([[0.2, 0.5, 0.3], [0.6, 0.4, 0.0]])
    cand = CandidateSet(cand.items, cand.target, cand.probs, cand.observed, cand.oracle, choice)
    spec = MetricSpec(name="g", kind="dcg", gains={"like": 2.0, "dislike": -3.0}, k=2)
    true = evaluate(cand, {"like": 1.0}, [spec], source="oracle")["g"]  # row 0 ranks [0, 1], row 1 [1, 0]
    row0 = 0.2 * (2 * 0.5 - 3 * 0.1) + 0.5 * (2 * 0.7) / np.log2(3)
    row1 = 0.4 * (2 * 0.9) + 0.6 * (2 * 0.1 - 3 * 0.4) / np.log2(3)
    assert true == pytest.approx((row0 + row1) / 2)
    rate = MetricSpec(name="r", kind="rate", action="dislike", k=1, goal="min")
    assert evaluate(cand, {"like": 1.0}, [rate], source="oracle")["r"] == pytest.approx((0.2 * 0.1 + 0.0) / 2)


def test_oracle_choice_is_the_generators_softmax_over_the_row_with_the_sources_temperature():
    truth = {
        "user_factors": np.array([[1.0, 0.0], [0.0, 1.0]]),
        "item_factors": np.array([[0.0, 0.0], [0.5, 0.1], [-0.2, 0.4], [0.3, 0.3]]),  # row 0 = padding
        "item_bait": np.array([0.0, 0.0, 0.9, 0.0]),
        "temperature": np.array([4.0, 4.0, 2.4, 7.2]),  # per source code (0 = unknown)
    }
    ids, sources = np.array([[1, 2, 3], [3, 2, 0]]), np.array([3, 1])
    out = oracle_values(truth, np.array([0, 1]), ids, sources)
    aff = np.array([[0.5, -0.2, 0.3], [0.3, 0.4, 0.0]])
    for r in range(2):
        n = int((ids[r] > 0).sum())
        logits = choice_logits(aff[r, :n], truth["item_bait"][ids[r, :n]], truth["temperature"][sources[r]])
        np.testing.assert_allclose(out["choice"][r, :n], np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)
    assert out["choice"][1, 2] == 0.0, "no probability on an empty slot"
    np.testing.assert_allclose(out["oracle/like"], expected_actions(aff, truth["item_bait"][ids])["like"], rtol=1e-6)


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


def test_the_engagement_term_multiplies_the_score_by_the_models_choice_among_the_list(cand):
    """score = P(engage | list) · (w_engage + Σ w_a P(a)), P(engage | list) = softmax(sharpness · retrieval)."""
    retrieval = np.array([[2.0, 0.0, 1.0], [0.5, 1.5, 9.0]])  # row 1's third slot is empty: ignored
    cand = CandidateSet(cand.items, cand.target, cand.probs, cand.observed, cand.oracle, None, retrieval)
    w = {"like": 1.0, "dislike": -1.0, "engage": 0.5, "engage_sharpness": 2.0}
    got = scores(cand, w)
    for r, n in ((0, 3), (1, 2)):
        p = np.exp(2.0 * retrieval[r, :n]) / np.exp(2.0 * retrieval[r, :n]).sum()
        value = 0.5 + cand.probs["like"][r, :n] - cand.probs["dislike"][r, :n]
        np.testing.assert_allclose(got[r, :n], p * value)
    assert got[1, 2] == -np.inf
    plain = {"like": 1.0, "dislike": -1.0}
    # sharpness 0: no engagement term, the plain Σ w_a P(a) (the engage weight would only shift every score)
    np.testing.assert_allclose(scores(cand, plain | {"engage": 3.0, "engage_sharpness": 0.0}), scores(cand, plain))
    cfg = TuneWeightsConfig()
    point = in_space(cfg, {"like": 4.0, "engage": 2.0, "engage_sharpness": 0.5}, ["like", "dislike"])
    assert point == {"w_like": 1.0, "w_dislike": 0.0, "w_engage": 0.5, "engage_sharpness": 0.5}  # sharpness unscaled
    off = TuneWeightsConfig(search=SearchConfig(engage_sharpness_high=0.0))
    assert in_space(off, {"like": 1.0, "engage_sharpness": 0.5}, ["like", "dislike"]) is None
