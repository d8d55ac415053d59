"""The neural-linear bandit: the conjugate update against the closed-form posterior, sampling,
seeded reproducibility, the slot split, the shared posterior in Redis and the learner's features."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from argus_models.config import ActionHead
from argus_models.inference import Events, action_features, encode_next
from argus_serve.bandit import (
    BanditPrior,
    Observation,
    Posterior,
    PosteriorStore,
    explore_order,
    observations,
    payoff_features,
    request_rng,
    reward_value,
)
from argus_serve.scoring import diversify

PRIOR = BanditPrior(prior_std=0.3, noise_std=0.7)


def _closed_form(x: np.ndarray, r: np.ndarray, prior: BanditPrior) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of θ ~ N(m0, s²I), r = xθ + N(0, σ²), written out directly."""
    d = x.shape[1]
    m0 = np.zeros(d)
    m0[-1] = 1.0
    s2, n2 = prior.prior_std**2, prior.noise_std**2
    cov = np.linalg.inv(np.eye(d) / s2 + x.T @ x / n2)
    return cov @ (m0 / s2 + x.T @ r / n2), cov


def test_batched_updates_give_the_closed_form_posterior():
    rng = np.random.default_rng(0)
    x, r = rng.normal(size=(300, 6)), rng.random(300)
    post = Posterior.prior(6, PRIOR)
    for lo in range(0, 300, 70):  # batches of any size: the natural parameters add
        post = post.updated(x[lo : lo + 70], r[lo : lo + 70], PRIOR.noise_std)
    mean, cov = _closed_form(x, r, PRIOR)
    solved = post.solved()
    assert post.count == 300
    np.testing.assert_allclose(solved.mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(post.precision), cov, rtol=1e-9, atol=1e-12)
    # with no data the mean payoff is the network's own P(a) (the weight on the last feature)
    np.testing.assert_allclose(Posterior.prior(6, PRIOR).solved().mean, [0, 0, 0, 0, 0, 1])


def test_thompson_samples_follow_the_posterior():
    rng = np.random.default_rng(1)
    x, r = rng.normal(size=(40, 4)), rng.random(40)
    solved = Posterior.prior(4, PRIOR).updated(x, r, PRIOR.noise_std).solved()
    draws = np.stack([solved.sample(rng) for _ in range(40_000)])
    mean, cov = _closed_form(x, r, PRIOR)
    se = np.sqrt(np.diag(cov) / len(draws))
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.05, atol=0.05 * np.abs(cov).max())


def test_a_seeded_request_draws_the_same_sample_and_a_new_seed_user_or_version_another():
    solved = Posterior.prior(8, PRIOR).solved()
    same = [solved.sample(request_rng(7, "user-1", 3)) for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    for other in (request_rng(8, "user-1", 3), request_rng(7, "user-2", 3), request_rng(7, "user-1", 4)):
        assert not np.allclose(solved.sample(other), same[0])


def test_explored_slots_are_the_last_share_and_never_repeat_an_exploited_item():
    rng = np.random.default_rng(2)
    exploit, sampled, groups = rng.normal(size=50), rng.normal(size=50), rng.integers(0, 5, size=50)
    order, explored = explore_order(exploit, sampled, groups, 0.85, 10, 0.3)
    assert len(order) == 10 and len(set(order)) == 10
    assert explored.tolist() == [False] * 7 + [True] * 3
    np.testing.assert_array_equal(order[:7], diversify(exploit, groups, 0.85, 7))
    rest = np.setdiff1d(np.arange(50), order[:7])
    np.testing.assert_array_equal(order[7:], rest[diversify(sampled[rest], groups[rest], 0.85, 3)])
    none, flags = explore_order(exploit, sampled, groups, 0.85, 10, 0.0)
    np.testing.assert_array_equal(none, diversify(exploit, groups, 0.85, 10))
    assert not flags.any()
    all_, flags = explore_order(exploit, sampled, groups, 1.0, 10, 1.0)
    np.testing.assert_array_equal(all_, np.argsort(-sampled)[:10])
    assert flags.all()


def test_payoff_features_and_rewards():
    hidden = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    x = payoff_features(hidden, torch.tensor([0.25, 0.5]))
    np.testing.assert_allclose(x, [[0.6, 0.8, 1.0, 0.25], [0.0, 1.0, 1.0, 0.5]])
    assert reward_value(ActionHead("like", "binary", 2), np.array([0, 1])).tolist() == [0, 1]
    assert reward_value(ActionHead("played", "ratio", 10), np.array([0, 9])).tolist() == [0.05, 0.95]
    assert reward_value(ActionHead("stars", "graded", 5), np.array([0, 2, 4])).tolist() == [0, 0.5, 1]


def _obs(user: str, seq: int, rng) -> Observation:
    return Observation(user, seq, {"like": rng.normal(size=5)}, {"like": float(rng.random() < 0.5)})


def test_the_shared_posterior_counts_each_event_once_and_concurrent_updates_commute(redis_server):
    store = PosteriorStore(redis_server.url, "test-nlb", [ActionHead("like", "binary", 2)], PRIOR)
    rng = np.random.default_rng(3)
    a = [_obs("u1", s, rng) for s in (1, 2, 3)]
    b = [_obs("u2", s, rng) for s in (1, 2)] + [_obs("u3", 1, rng)]

    async def scenario():
        # two learner replicas at once (WATCH/MULTI: one retries), then a retried batch
        counted = await asyncio.gather(store.update("m1", a), store.update("m1", b))
        again = await store.update("m1", a + b[:1])
        later = await store.update("m1", [_obs("u1", 3, rng), a_next])  # seq 3 is in; seq 4 is new
        version, posts = await store.load("m1", 5)
        return counted, again, later, version, posts, await store.cursors("m1", ["u1", "u2", "u3", "u4"])

    a_next = _obs("u1", 4, rng)
    counted, again, later, version, posts, cursors = asyncio.run(scenario())
    assert counted == [3, 3] and again == 0 and later == 1 and version == 3
    assert cursors == {"u1": 4, "u2": 2, "u3": 1}
    seen = a + b + [a_next]
    x = np.stack([o.features["like"] for o in seen])
    r = np.array([o.rewards["like"] for o in seen])
    mean, _ = _closed_form(x, r, PRIOR)
    assert posts["like"].count == 7
    np.testing.assert_allclose(posts["like"].solved().mean, mean, rtol=1e-9, atol=1e-12)
    # another model version (or prior) is another posterior: the prior until it learns
    _, fresh = asyncio.run(store.load("m2", 5))
    assert fresh["like"].count == 0


def test_the_learner_scores_each_new_event_from_the_history_before_it(tiny_run):
    from argus_serve.artifacts import load_serving_model, resolve_checkpoint

    model = load_serving_model(resolve_checkpoint(str(tiny_run))).model
    heads = model.schema.actions
    rng = np.random.default_rng(4)
    n = 9
    history = Events(
        rng.integers(1, 50, size=n),
        {c: rng.integers(1, 3, size=n) for c in model.schema.contexts},
        {a.name: rng.integers(0, a.num_codes, size=n) for a in heads},
    )
    # seq 5 = the last event; the cursor at 2: events 3, 4, 5 are new (list positions 6, 7, 8)
    obs, skipped = observations(model, [("u", history, 5, 2)])
    assert skipped == 0 and [o.seq for o in obs] == [3, 4, 5]
    for o, i in zip(obs, (6, 7, 8)):
        prefix, ctx = history.head(i), [{c: int(v[i]) for c, v in history.contexts.items()}]
        head_in, _ = encode_next(model, [prefix], ctx)
        probs, hidden = action_features(model, head_in, torch.tensor([[int(history.items[i])]]), [prefix], ctx)
        for a in heads:
            expected = payoff_features(hidden[0, 0], probs[a.name][0, 0])
            np.testing.assert_allclose(o.features[a.name], expected, atol=1e-5)
            assert o.rewards[a.name] == pytest.approx(reward_value(a, history.feedback[a.name][i : i + 1])[0])
    # an event with nothing before it (a new user's first) is skipped and counted
    obs, skipped = observations(model, [("v", history.head(2), 2, 0)])
    assert [o.seq for o in obs] == [2] and skipped == 1


def test_the_simulated_users_react_as_the_exact_engagement_says():
    from argus_platform.simulate_bandit import World, react, slate_engagement

    rng = np.random.default_rng(5)
    world = World(
        user_factors=rng.normal(size=(2, 4)) * 0.7,
        item_factors=np.vstack([np.zeros(4), rng.normal(size=(12, 4)) * 0.7]),
        bait=np.concatenate([[0.0], np.where(rng.random(12) < 0.3, 0.8, 0.0)]),
        temperature=1.5,
        raw_users=np.array(["a", "b"]),
        raw_items=np.array([str(i) for i in range(12)]),
        seen=[set(), set()],
    )
    slate = np.array([1, 4, 5, 9, 12])
    weights = {"like": 1.0, "played_ratio": 0.5, "skip": -0.5, "dislike": -1.0}
    exact = slate_engagement(world, 1, slate, weights)
    draws = [react(world, 1, slate, np.random.default_rng([9, t])) for t in range(20_000)]
    value = np.array([sum(w * acts[a] for a, w in weights.items()) for _, acts in draws])
    assert abs(value.mean() - exact["value"]) < 4 * value.std() / np.sqrt(len(value))
    for a in ("like", "dislike", "skip"):
        got = np.mean([acts[a] for _, acts in draws])
        assert abs(got - exact[a]) < 4 * np.sqrt(exact[a] * (1 - exact[a]) / len(draws)) + 1e-3
    bait = np.mean([world.bait[slate[j]] > 0 for j, _ in draws])
    assert bait == pytest.approx(exact["clickbait_chosen"], abs=0.015)
