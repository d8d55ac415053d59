"""The Serve application for real: serve/argus.yaml deployed through Serve's config path on a
tiny training run, called over HTTP."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import torch
import torch.nn.functional as F

from argus_models.checkpoint import load_inference_model
from argus_models.contract import ITEM_COL, USER_IDX, Vocabulary, act_col, ctx_col, target_code
from argus_models.losses import feedback_probability
from argus_models.model import ITEM, ctx_feature, fb_feature, table_name
from argus_serve.artifacts import read_actions, resolve_checkpoint
from argus_serve.launch import serve_config

YAML_WEIGHTS = {"like": 1.0, "played_ratio": 0.5, "skip": -0.5, "dislike": -1.0}  # serve/argus.yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, run_dir, port, args=None):
        self.run_dir, self.port, self.url = run_dir, port, f"http://127.0.0.1:{port}"
        self.args = {"checkpoint": str(run_dir), **(args or {})}

    def deploy(self, user_configs=None, deployment_options=None):
        from argus_serve.launch import deploy

        deploy(
            serve_config(
                args=self.args,
                user_configs=user_configs,
                port=self.port,
                deployment_options=deployment_options,
            )
        )

    def recommend(self, body, **kw):
        return requests.post(
            f"{self.url}/v1/recommend",
            data=body if isinstance(body, (str, bytes)) else json.dumps(body),
            timeout=30,
            **kw,
        )

    def events(self, body):
        return requests.post(f"{self.url}/v1/events", data=json.dumps(body), timeout=30)

    def health(self):
        return requests.get(f"{self.url}/healthz", timeout=30).json()


@pytest.fixture(scope="module")
def service(tiny_run, redis_server):
    """serve/argus.yaml with the event store in a real redis-server: every test here reads the
    histories from Redis (the whole history kept: the cap well above the tiny model's window)."""
    from ray import serve

    svc = Service(tiny_run, _free_port(), {"events_store": redis_server.url, "history_cap": 1000})
    svc.deploy()
    yield svc
    serve.shutdown()


def _user_rows(run_dir):
    """user raw id → full sequence row (the test split holds every event under leave-last-out)."""
    vocab = Vocabulary.load(run_dir / "vocab")
    table = pq.ParquetDataset(str(run_dir / "data" / "test")).read().to_pylist()
    return {str(vocab.users[r[USER_IDX]]): r for r in table}, vocab


def _direct_scores(ckpt, row, items):
    """Reference without argus_serve: the training forward on [history ; (item, next context)]."""
    model = load_inference_model(ckpt)
    actions = read_actions(ckpt)
    L = min(len(row[ITEM_COL]), model.config.max_seq_len)
    out = {}
    for item in items:
        ids = {ITEM: row[ITEM_COL][-L:] + [item]}
        ctx = row[ctx_col("source")][-L:]
        ids[ctx_feature("source")] = ctx + [ctx[-1]]  # the request's context defaults to the last event's
        for a in actions:
            codes = target_code(a.kind, a.num_codes, np.asarray(row[act_col(a.name)][-L:], dtype=np.float32))
            ids[fb_feature(a.name)] = codes.tolist() + [0]
        emb = {k: F.embedding(torch.tensor([v]), model.tables[table_name(k)]) for k, v in ids.items()}
        with torch.no_grad():
            res = model.dense(emb, torch.tensor([L + 1]))
        logits = model.dense.action_logits(res["feedback"][0, -1])
        probs = {h.name: float(feedback_probability(h, logits[h.name])) for h in model.schema.actions}
        retrieval = float(res["query"][0, -1] @ model.dense.item_vectors(model.tables["t_item"])[item])
        out[item] = (sum(YAML_WEIGHTS[a] * p for a, p in probs.items()), probs, retrieval)
    return out


def test_known_user_round_trip_gives_the_checkpoints_scores(service):
    rows, vocab = _user_rows(service.run_dir)
    user = sorted(rows)[3]
    r = service.recommend({"user_id": user, "k": 5, "debug": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["history_source"] == "store" and body["history_events"] == len(rows[user][ITEM_COL])
    assert len(body["items"]) == 5 and body["model_version"]["retriever"] == body["model_version"]["ranker"]
    assert {"retrieve_ms", "rank_ms", "total_ms", "retriever_compute_ms", "ranker_compute_ms"} <= set(
        body["timings_ms"]
    )
    index = vocab.item_index()
    got = {index[it["item_id"]]: it for it in body["items"]}
    seen = set(rows[user][ITEM_COL])
    assert not seen & set(got), "items the user has seen must be filtered"
    ckpt = resolve_checkpoint(str(service.run_dir))
    for item, (score, probs, retrieval) in _direct_scores(ckpt, rows[user], list(got)).items():
        assert got[item]["score"] == pytest.approx(score, abs=1e-4)
        assert got[item]["retrieval_score"] == pytest.approx(retrieval, abs=1e-4)
        for a, p in probs.items():
            assert got[item]["probabilities"][a] == pytest.approx(p, abs=1e-5)


def test_concurrent_requests_batch_without_changing_anyones_scores(service):
    rows, _ = _user_rows(service.run_dir)
    users = sorted(rows)[:8]  # within the Retriever's bound of 8 in the handlers (more would be refused, 503)
    alone = [service.recommend({"user_id": u, "k": 10, "debug": True}).json() for u in users]
    # as shipped batches never wait (timeout 0) and only form when requests queue; waiting 50 ms
    # makes 8 concurrent requests meet in a batch whatever the host's speed
    wait = {"batch_wait_timeout_s": 0.05}
    service.deploy({"Retriever": wait, "Ranker": wait})
    try:
        with ThreadPoolExecutor(len(users)) as pool:
            together = list(pool.map(lambda u: service.recommend({"user_id": u, "k": 10, "debug": True}).json(), users))
    finally:
        service.deploy()
    batches = [max(t["timings_ms"][f"{d}_batch"] for t in together) for d in ("retriever", "ranker")]
    assert min(batches) > 1, f"requests were never batched together: largest batches {batches}"
    for a, t in zip(alone, together):
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in t["items"]]
        np.testing.assert_allclose([i["score"] for i in a["items"]], [i["score"] for i in t["items"]], atol=1e-5)


def test_request_history_for_a_user_outside_the_store(service):
    _, vocab = _user_rows(service.run_dir)
    history = [
        {
            "item_id": vocab.items[0],
            "actions": {"like": 1, "played_ratio": 0.9},
            "context": {"source": vocab.contexts["source"][0]},
        },
        {"item_id": "no-such-item", "actions": {"like": 0}},
        {"item_id": vocab.items[5], "actions": {"skip": 1}},
    ]
    r = service.recommend({"user_id": "brand-new", "history": history, "exclude": [vocab.items[1], "ghost"], "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["history_source"] == "request" and body["history_events"] == 2
    assert body["warnings"] == {"unknown_history_items": ["no-such-item"], "unknown_exclude_items": ["ghost"]}
    returned = {i["item_id"] for i in body["items"]}
    assert len(returned) == 7 and not returned & {vocab.items[0], vocab.items[1], vocab.items[5]}


@pytest.mark.parametrize(
    "body, status, reason",
    [
        ('{"user_id": "1", ', 422, "JSON decode error"),
        ({"user_id": "1", "kk": 3}, 422, "Extra inputs are not permitted"),
        ({"user_id": "1", "k": 0}, 422, "greater than or equal to 1"),
        ({"user_id": "1", "k": 101}, 422, "k=101 is out of range: 1..100"),
        ({"user_id": "nobody"}, 404, "unknown user_id 'nobody' and no history"),
        ({"history": [{"item_id": "nope"}]}, 422, "none of the 1 history items is known"),
        ({"history": [{"item_id": "1", "actions": {"like": 2}}]}, 422, "history[0].actions.like: 2.0 is not 0 or 1"),
        ({"history": [{"item_id": "1", "actions": {"clicked": 1}}]}, 422, "unknown action(s) ['clicked']"),
        ({"user_id": "1", "context": {"weather": "rain"}}, 422, "unknown context column(s) ['weather']"),
        ({"user_id": "1", "history": [{"item_id": "1"}] * 2001}, 422, "at most 2000 are accepted"),
        ("x" * 1_000_001, 413, "exceeds 1000000"),
    ],
)
def test_bad_input_gets_a_4xx_with_the_reason_and_the_service_stays_up(service, body, status, reason):
    rows, _ = _user_rows(service.run_dir)
    if isinstance(body, dict) and body.get("user_id") == "1":
        body = {**body, "user_id": sorted(rows)[0]}
    r = service.recommend(body)
    assert r.status_code == status, r.text
    assert reason in r.text
    assert service.recommend({"user_id": sorted(rows)[0], "k": 2}).status_code == 200


def test_health_docs_and_openapi(service):
    h = service.health()
    assert h["status"] == "ok" and h["ranker"]["weights"] == YAML_WEIGHTS and h["retriever"]["index"] == "sq8-rescored"
    store = h["retriever"]["user_store"]
    assert (
        store["users"] == h["users"] and store["file"].endswith("serving/user_store.arrow") and store["file_bytes"] > 0
    )
    assert (
        min(h["retriever"]["rss_bytes"], h["ranker"]["rss_bytes"]) > 0 and h["retriever"]["pid"] != h["ranker"]["pid"]
    )
    assert requests.get(f"{service.url}/docs", timeout=10).status_code == 200
    spec = requests.get(f"{service.url}/openapi.json", timeout=10).json()
    assert "/v1/recommend" in spec["paths"] and "RecommendResponse" in spec["components"]["schemas"]


def test_weights_and_model_reload_in_place_and_a_failed_reload_keeps_the_old(service):
    rows, _ = _user_rows(service.run_dir)
    user = sorted(rows)[1]
    before, pid = service.recommend({"user_id": user, "k": 5}).json(), service.health()["ranker"]["pid"]

    service.deploy({"Ranker": {"weights": {"like": 1.0}}})  # only like counts now
    after = service.recommend({"user_id": user, "k": 5}).json()
    h = service.health()
    assert h["ranker"]["pid"] == pid, "a weights change must reconfigure the replica, not restart it"
    assert h["ranker"]["weights"] == {"skip": 0.0, "like": 1.0, "dislike": 0.0, "played_ratio": 0.0}
    assert after["weights_version"] != before["weights_version"]
    for item in after["items"]:
        assert item["score"] == pytest.approx(item["probabilities"]["like"], abs=1e-6)

    service.deploy({"Ranker": {"weights": {"likes": 1.0}}})  # refused: no such action
    h = service.health()
    assert h["status"] == "degraded" and "unknown action(s) ['likes']" in h["ranker"]["reload_error"]
    assert h["ranker"]["weights"]["like"] == 1.0 and h["ranker"]["pid"] == pid
    assert service.recommend({"user_id": user, "k": 5}).json()["weights_version"] == after["weights_version"]

    older = sorted(service.run_dir.glob("checkpoint_*"))[0]  # the run's epoch-1 checkpoint
    service.deploy(
        {"Retriever": {"checkpoint": str(older)}, "Ranker": {"checkpoint": str(older), "weights": YAML_WEIGHTS}}
    )
    body = service.recommend({"user_id": user, "k": 5}).json()
    assert body["model_version"]["retriever"].endswith("@epoch1") and body["model_version"]["ranker"].endswith(
        "@epoch1"
    )
    service.deploy({"Retriever": {"checkpoint": str(service.run_dir / "missing")}})
    h = service.health()
    assert "does not exist" in h["retriever"]["reload_error"] and h["retriever"]["model_version"].endswith("@epoch1")
    service.deploy()  # back to the YAML as shipped
    assert service.health()["status"] == "ok"


def test_retriever_switches_to_a_faiss_index_above_the_configured_size(service):
    rows, _ = _user_rows(service.run_dir)
    user = sorted(rows)[2]
    exact = service.recommend({"user_id": user, "k": 10}).json()
    service.deploy({"Retriever": {"ann_min_items": 10}})
    try:
        info = service.health()["retriever"]["index_info"]
        assert info["kind"] == "faiss-ivf" and info["bytes"] > 0 and info["file"].endswith(f"-{info['lists']}.faiss")
        ann = service.recommend({"user_id": user, "k": 10}).json()
        assert ann["model_version"]["index"] == "faiss-ivf"
        # on a 60-item catalogue there is one list (at least 39 items per list): exact, so the same ranked list
        assert [i["item_id"] for i in ann["items"]] == [i["item_id"] for i in exact["items"]]
    finally:
        service.deploy()


def test_load_generator_reports_rates_and_percentiles(service):
    from argus_serve.loadgen import run_load, summarize

    rows, _ = _user_rows(service.run_dir)
    users = sorted(rows)
    result = summarize(
        run_load(
            f"{service.url}/v1/recommend",
            lambda i: {"user_id": users[i % len(users)], "debug": True},
            rps=20,
            seconds=1.5,
        )
    )
    e = result["end_to_end"]
    assert e["requests"] == e["sent"] == 30 and not e["errors"] and e["dropped"] == 0
    assert 0 < e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"] and 10 < e["rps"] <= 21
    assert {"retrieve", "rank", "total", "retriever_compute", "ranker_compute"} <= set(result["stages"])


def test_overload_is_refused_at_once_with_503_and_retry_after_and_the_service_stays_up(service):
    """Above the Retriever's bound (max_ongoing_requests in the handlers + max_queued_requests waiting)
    a request gets 503 with Retry-After at once; those let in are answered, and afterwards all is well."""
    from argus_serve.loadgen import run_load, summarize

    rows, _ = _user_rows(service.run_dir)
    users = sorted(rows)
    service.deploy(deployment_options={"Retriever": {"max_ongoing_requests": 1, "max_queued_requests": 1}})
    try:
        # in-flight cap above the 200 requests: the client never holds one back, whatever the latency
        load = run_load(
            f"{service.url}/v1/recommend", lambda i: {"user_id": users[i % len(users)]}, 400, 0.5, max_in_flight=256
        )
        e = summarize(load)["end_to_end"]
        assert e["sent"] == 200 and not e["errors"] and e["dropped"] == 0, e
        assert e["refused"] > 0 and e["refused_with_retry_after"] == e["refused"] and e["requests"] > 0, e
        assert e["requests"] + e["refused"] == 200, e
    finally:
        service.deploy()
    assert service.health()["status"] == "ok"
    assert service.recommend({"user_id": users[0], "k": 5}).status_code == 200


def test_an_ingested_event_reaches_the_next_recommendation_once(service):
    rows, vocab = _user_rows(service.run_dir)
    user = sorted(rows)[4]
    before = service.recommend({"user_id": user, "k": 5}).json()
    top = before["items"][0]["item_id"]
    event = {"user_id": user, "item_id": top, "timestamp": 1_800_000_000, "actions": {"like": 1}}
    r = service.events(event)
    assert r.status_code == 200, r.text
    n = len(rows[user][ITEM_COL])
    assert r.json() | {"quarantined": []} == {
        "received": 1,
        "appended": 1,
        "duplicates": 0,
        "quarantined": [],
        "history_events": {user: n + 1},
        "warnings": {},
    }
    after = service.recommend({"user_id": user, "k": 5}).json()
    assert after["history_events"] == n + 1 and top not in {i["item_id"] for i in after["items"]}
    # the scores are the encoder's on the history with the event appended (no context: index 0)
    row = {k: (list(v) if isinstance(v, list) else v) for k, v in rows[user].items()}
    row[ITEM_COL] = row[ITEM_COL] + [vocab.item_index()[top]]
    for col in [c for c in row if c.startswith("ctx_")]:
        row[col] = row[col] + [0]
    for col in [c for c in row if c.startswith("act_")]:
        row[col] = row[col] + [1.0 if col == act_col("like") else 0.0]
    got = {vocab.item_index()[i["item_id"]]: i for i in after["items"]}
    for item, (score, _, retrieval) in _direct_scores(resolve_checkpoint(str(service.run_dir)), row, list(got)).items():
        assert got[item]["score"] == pytest.approx(score, abs=1e-4)
        assert got[item]["retrieval_score"] == pytest.approx(retrieval, abs=1e-4)
    # a retried POST (same event, so the same derived id) is not counted twice
    retry = service.events({"events": [event]}).json()
    assert (retry["appended"], retry["duplicates"], retry["history_events"]) == (0, 1, {user: n + 1})
    assert service.recommend({"user_id": user, "k": 5}).json()["history_events"] == n + 1


def test_events_of_a_new_user_make_a_history_and_bad_events_are_refused_or_quarantined(service):
    _, vocab = _user_rows(service.run_dir)
    assert service.recommend({"user_id": "newcomer", "k": 3}).status_code == 404
    batch = {
        "events": [
            {"event_id": "n-1", "user_id": "newcomer", "item_id": vocab.items[2], "actions": {"like": 1}},
            {"event_id": "n-2", "user_id": "newcomer", "item_id": "no-such-item"},
            {"event_id": "n-3", "user_id": "newcomer", "item_id": vocab.items[3], "actions": {"skip": 1}},
        ]
    }
    body = service.events(batch).json()
    assert (body["appended"], body["history_events"]) == (2, {"newcomer": 2})
    assert body["quarantined"] == [
        {
            "index": 1,
            "event_id": "n-2",
            "user_id": "newcomer",
            "item_id": "no-such-item",
            "reason": "item_id 'no-such-item' is not in the model's vocabulary",
        }
    ]
    r = service.recommend({"user_id": "newcomer", "k": 3}).json()
    assert r["history_source"] == "store" and r["history_events"] == 2
    assert not {i["item_id"] for i in r["items"]} & {vocab.items[2], vocab.items[3]}
    for bad, reason in [
        (
            {"user_id": "x", "item_id": vocab.items[0], "actions": {"like": 3}},
            "events[0].actions.like: 3.0 is not 0 or 1",
        ),
        ({"user_id": "x", "item_id": vocab.items[0], "context": {"weather": "sun"}}, "unknown context column(s)"),
        ({"user_id": "x", "item_id": vocab.items[0], "timestamp": -1}, "greater than or equal to 0"),
        ({"events": []}, "at least 1 item"),
    ]:
        r = service.events(bad)
        assert r.status_code == 422 and reason in r.text, r.text
    assert service.recommend({"user_id": "x", "k": 3}).status_code == 404  # nothing of a refused batch is stored


def test_a_redis_restart_answers_503_with_the_reason_meanwhile_and_loses_no_event(service, redis_server):
    rows, vocab = _user_rows(service.run_dir)
    user = sorted(rows)[5]
    assert service.events({"user_id": user, "item_id": vocab.items[7], "event_id": "r-1"}).json()["appended"] == 1
    redis_server.stop()
    try:
        r = service.recommend({"user_id": user, "k": 3})
        assert r.status_code == 503 and "unreachable" in r.text and r.headers.get("Retry-After") == "1", r.text
        r = service.events({"user_id": user, "item_id": vocab.items[8], "event_id": "r-2"})
        assert r.status_code == 503 and "unreachable" in r.text
        assert service.health()["status"] == "degraded"
    finally:
        redis_server.start()
    r = service.recommend({"user_id": user, "k": 3})
    assert r.status_code == 200 and r.json()["history_events"] == len(rows[user][ITEM_COL]) + 1
    assert service.health()["status"] == "ok"


def _recommend_once_stored(service, body, seq_lag=0, timeout_s=30.0):
    """Recommend until the answer used a stored state covering all but `seq_lag` events."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        r = service.recommend(body).json()
        if r["state_source"] != "encoder" and r.get("state_lag_events") == seq_lag:
            return r
        time.sleep(0.1)
    raise AssertionError(f"no stored state within {timeout_s}s: last answer {r}, health {service.health()}")


def test_the_state_refresher_encodes_touched_users_off_the_request_path(service):
    rows, vocab = _user_rows(service.run_dir)
    user = sorted(rows)[6]
    body = {"user_id": user, "k": 50}
    assert service.recommend(body).json()["state_source"] == "encoder"  # nothing ingested for this user yet
    service.events({"user_id": user, "item_id": vocab.items[9], "event_id": "s-1", "actions": {"like": 1}})
    first = _recommend_once_stored(service, body)
    assert first["state_source"] == "stored" and 0 <= first["state_age_s"] < 30
    # the stored state scores as the encoder does on the same history
    service.deploy({"Retriever": {"state_mode": "off"}})
    try:
        sync = service.recommend(body).json()
    finally:
        service.deploy()
    assert sync["state_source"] == "encoder"
    assert [i["item_id"] for i in sync["items"]] == [i["item_id"] for i in first["items"]]
    np.testing.assert_allclose([i["score"] for i in sync["items"]], [i["score"] for i in first["items"]], atol=1e-4)
    # a second event: the latest state moves on; the mean of the two is SOAP's state
    service.events({"user_id": user, "item_id": vocab.items[11], "event_id": "s-2", "actions": {"skip": 1}})
    second = _recommend_once_stored(service, body)
    service.deploy({"Retriever": {"state_mode": "mean2"}})
    try:
        mean = service.recommend(body).json()
    finally:
        service.deploy()
    assert mean["state_source"] == "stored_mean2" and mean["state_lag_events"] == 0
    r1 = {i["item_id"]: i["retrieval_score"] for i in first["items"]}
    r2 = {i["item_id"]: i["retrieval_score"] for i in second["items"]}
    both = [i for i in mean["items"] if i["item_id"] in r1 and i["item_id"] in r2]
    assert len(both) >= 5
    for item in both:  # <(q1 + q2) / 2, e> = (<q1, e> + <q2, e>) / 2
        assert item["retrieval_score"] == pytest.approx((r1[item["item_id"]] + r2[item["item_id"]]) / 2, abs=1e-4)
    refresher = service.health()["state_refresher"]
    assert refresher["counts"]["users_encoded"] >= 2 and refresher["refresh_lag_s"]["p50"] is not None
    assert refresher["last_error"] is None


def test_a_replay_scores_each_held_out_event_on_the_history_before_it_then_ingests_it(service):
    """argus_serve.replay_serve through the live service: the last tenth of the run's log replayed under
    fresh user ids, each user seeded with their earlier events."""
    from argus_serve.replay_serve import ReplayConfig, events_from, replay_once

    times = pq.read_table(service.run_dir / "data" / "events.parquet").column("timestamp").to_numpy()
    held = events_from(service.run_dir, float(np.quantile(times, 0.9)), 1e9, 40, 0)
    raw = replay_once(service.url, held, "replay-t", 0.0, ReplayConfig(k=50))
    expected, seen = [], [0] * len(held.users)
    for (n, _), cold in zip(held.events, held.cold):
        if not cold:
            expected.append(len(held.prefix[n]) + seen[n])
        seen[n] += 1
    # every request read the user's prefix and their earlier held-out events, never a later one
    assert raw["history_events"] == expected and len(raw["ranks"]) == len(expected) > 0
    assert raw["quarantined"] == 0 and set(raw["sources"]) <= {"stored", "encoder"}
    assert all(r is None or 0 <= r < 50 for r in raw["ranks"])
    n = held.events[-1][0]
    last = service.recommend({"user_id": f"replay-t:{held.users[n]}", "k": 5}).json()
    assert last["history_events"] == len(held.prefix[n]) + seen[n]  # the last event was ingested too


def test_neural_linear_exploration_learns_from_ingested_feedback_and_marks_explored_slots(service):
    """The feedback learner folds each ingested event in once; the Ranker samples from the shared
    posterior, reproducibly for a seed, and marks the explored slots."""
    import time

    rows, vocab = _user_rows(service.run_dir)
    users = sorted(rows)[10:14]
    explore = {"exploration": "neural_linear", "exploration_share": 0.4, "exploration_seed": 5}
    service.args |= {"feedback_learner": True, "events_prefix": "nlb-test"}  # a namespace of its own
    try:
        service.deploy({"Ranker": explore})
        body = {"user_id": users[0], "k": 5}
        prior = service.recommend(body).json()
        assert [i["explored"] for i in prior["items"]] == [False] * 3 + [True] * 2
        assert prior["weights_version"].endswith("+nlb0")  # nothing learned yet: the prior
        events = [
            {"user_id": u, "item_id": vocab.items[20 + j], "event_id": f"nlb-{u}-{j}", "actions": {"like": j % 2}}
            for u in users
            for j in range(3)
        ]
        assert service.events({"events": events}).json()["appended"] == 12
        deadline = time.time() + 60
        while time.time() < deadline:
            ranker = service.health()["ranker"]["exploration"]
            if ranker["observations"] and min(ranker["observations"].values()) == 12:
                break
            service.recommend(body)  # a request makes the replica look for a newer posterior
            time.sleep(0.5)
        assert ranker["observations"] == {a: 12 for a in YAML_WEIGHTS} and ranker["error"] is None, ranker
        assert service.events({"events": events}).json()["duplicates"] == 12  # a retried POST teaches nothing
        time.sleep(1.5)
        a, b = service.recommend(body).json(), service.recommend(body).json()
        assert a["items"] == b["items"] and a["weights_version"] == b["weights_version"] != prior["weights_version"]
        assert service.health()["ranker"]["exploration"]["observations"] == {a: 12 for a in YAML_WEIGHTS}
        # the exploited slots are the posterior mean's; other seeds explore other items
        others = set()
        for seed in range(3):
            service.deploy({"Ranker": explore | {"exploration_seed": seed}})
            got = service.recommend(body).json()["items"]
            assert [i["item_id"] for i in got[:3]] == [i["item_id"] for i in a["items"][:3]]
            others.add(tuple(i["item_id"] for i in got[3:]))
        assert len(others) > 1
        learner = service.health()["state_refresher"]
        assert learner["counts"]["feedback_observed"] == 12 and learner["learner"]["error"] is None
    finally:
        service.args = {k: v for k, v in service.args.items() if k not in ("feedback_learner", "events_prefix")}
        service.deploy()
    assert "explored" not in service.recommend({"user_id": users[0], "k": 5}).json()["items"][0]  # back as shipped


def test_a_bandit_simulation_plays_sessions_through_the_service_and_ingests_each_choice(service):
    """argus_platform.simulate_bandit against the live service (greedy, as deployed): every choice is
    ingested, so no later slate of that user shows it again."""
    from argus_platform.simulate_bandit import BanditSimConfig, load_world, run_policy

    rows, _ = _user_rows(service.run_dir)
    world = load_world(service.run_dir, "recommended")
    cfg = BanditSimConfig(sessions=24, users=3, k=5, seed=11)
    records = run_policy(service.url, world, "sim-t", cfg, YAML_WEIGHTS)
    assert len(records["value"]) == len(records["oracle"]) == 24 and records["explored"] == [0] * 24
    assert all(np.isfinite(records["value"]) & np.isfinite(records["oracle"]))
    chosen: dict[int, set] = {}
    for user, slate, pick in zip(records["user"], records["slate"], records["chosen"]):
        assert not chosen.setdefault(user, set()) & set(slate) and not world.seen[user] & set(slate)
        chosen[user].add(pick)
    for user, picks in chosen.items():
        raw = str(world.raw_users[user])
        body = service.recommend({"user_id": raw, "k": 5}).json()
        assert body["history_events"] == len(rows[raw][ITEM_COL]) + records["user"].count(user)


def test_the_api_token_is_read_from_a_file_or_a_variable_and_never_left_open(tmp_path, monkeypatch):
    from argus_serve.ingress import read_token

    assert read_token() is None  # nothing named: no check
    (tmp_path / "token").write_text("  s3cret\n")
    assert read_token(str(tmp_path / "token")) == b"s3cret"
    monkeypatch.setenv("ARGUS_TEST_TOKEN", "t0ken")
    assert read_token(token_env="ARGUS_TEST_TOKEN") == b"t0ken"
    (tmp_path / "empty").write_text("\n")
    for kwargs, reason in (
        ({"token_file": str(tmp_path / "missing")}, "missing"),
        ({"token_file": str(tmp_path / "empty")}, "holds no token"),
        ({"token_env": "ARGUS_NO_SUCH_VARIABLE"}, "ARGUS_NO_SUCH_VARIABLE holds no token"),
        ({"token_file": str(tmp_path / "token"), "token_env": "ARGUS_TEST_TOKEN"}, "both given"),
    ):
        with pytest.raises(ValueError, match=reason):
            read_token(**kwargs)


def _fuzz(url: str, headers: dict) -> dict[tuple[str, int], int]:
    """schemathesis against the live /openapi.json, valid and invalid requests (fixed seed, 300
    cases): no 5xx, every 4xx says why in `detail`. Returns (route, status class) -> count."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seen: dict[tuple[str, int], int] = {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    cases = st.one_of(*(schema.as_strategy(mode) for mode in modes))

    @settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        response = case.call(timeout=30, headers=headers)
        where = f"{case.method} {case.path} body={case.body!r:.300}"
        key = (f"{case.method} {case.path}", response.status_code // 100 * 100)
        seen[key] = seen.get(key, 0) + 1
        assert response.status_code < 500, f"{response.status_code} on {where}: {response.text[:300]}"
        if response.status_code >= 400:
            detail = response.json().get("detail")
            assert detail, f"{response.status_code} without a reason on {where}: {response.text[:300]}"

    fuzz()
    return seen


def test_with_a_token_every_route_but_healthz_needs_it_and_fuzzing_finds_no_5xx(service, tmp_path):
    """One deploy with a bearer token, a small body limit and an events namespace of its own: the
    refused (none, another, not Bearer) and accepted cases on every route, `/healthz` open; then
    schemathesis fuzzing from the API's own schema with the token finds no 5xx and a reason on every
    4xx, and the service is healthy afterwards. Also pins that a replica's settings reach the
    middleware of the app it serves (Serve runs a copy of the FastAPI app in each replica)."""
    token = tmp_path / "api-token"
    token.write_text("s3cret-token\n")
    guarded = {"auth_token_file": str(token), "max_body_bytes": 2048, "events_prefix": "fuzz-test"}
    service.args |= guarded
    body = json.dumps({"user_id": sorted(_user_rows(service.run_dir)[0])[0], "k": 3})
    post = lambda path, **headers: requests.post(f"{service.url}{path}", data=body, headers=headers, timeout=30)  # noqa: E731
    auth = {"Authorization": "Bearer s3cret-token"}
    try:
        service.deploy()
        missing = post("/v1/recommend")
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["detail"]
        wrong = post("/v1/recommend", Authorization="Bearer s3cret-tokem")
        assert wrong.status_code == 401 and "not this service's" in wrong.json()["detail"]
        assert post("/v1/recommend", Authorization="Basic s3cret-token").status_code == 401
        assert post("/v1/recommend", **auth).status_code == 200
        large = requests.post(f"{service.url}/v1/recommend", data=" " * 3000, headers=auth, timeout=30)
        assert large.status_code == 413 and "exceeds 2048" in large.json()["detail"]
        assert post("/v1/events").status_code == 401
        assert requests.get(f"{service.url}/openapi.json", timeout=30).status_code == 401
        assert requests.get(f"{service.url}/healthz", timeout=30).status_code == 200  # probes need no token
        seen = _fuzz(service.url, auth)
        assert service.health()["status"] == "ok"
    finally:
        service.args = {k: v for k, v in service.args.items() if k not in guarded}
        service.deploy()
    assert post("/v1/recommend").status_code == 200  # the token check goes with the setting
    print("fuzzed:", dict(sorted(seen.items())))
    routes = {route for route, _ in seen}
    assert {"POST /v1/recommend", "POST /v1/events", "GET /healthz"} <= routes, routes
    assert any(status == 400 for _, status in seen) and any(status == 200 for _, status in seen), seen
