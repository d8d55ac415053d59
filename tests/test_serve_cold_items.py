"""Serve on a multi-hash model: history items outside the training vocabulary are embedded from
their hash rows alone (models/README.md, "Item vectors"), over HTTP."""

import json
import socket

import numpy as np
import pytest
import requests

from argus_models.checkpoint import load_inference_model
from argus_models.contract import Vocabulary, action_target, target_code
from argus_models.hashing import hash_buckets
from argus_models.inference import Events, encode_next, item_vectors
from argus_serve.artifacts import read_actions, resolve_checkpoint
from argus_serve.launch import deploy, serve_config


@pytest.fixture(scope="module")
def url(hashed_run):
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deploy(serve_config(args={"checkpoint": str(hashed_run)}, port=port))
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _recommend(url, body):
    return requests.post(f"{url}/v1/recommend", data=json.dumps(body), timeout=30)


def test_a_new_item_in_the_history_is_read_through_its_hash_rows(url, hashed_run):
    vocab = Vocabulary.load(hashed_run / "vocab")
    known = [
        {"item_id": str(vocab.items[3]), "actions": {"like": 1}},
        {"item_id": str(vocab.items[8]), "actions": {"skip": 1}},
    ]
    new = {"item_id": "film-released-yesterday", "actions": {"like": 1, "played_ratio": 0.8}}
    without = _recommend(url, {"history": known, "k": 8, "debug": True})
    r = _recommend(url, {"history": known[:1] + [new] + known[1:], "k": 8, "debug": True})
    assert without.status_code == 200 and r.status_code == 200, r.text
    body = r.json()
    assert body["warnings"] == {"hashed_history_items": ["film-released-yesterday"]}
    assert body["history_events"] == 3  # read, not skipped
    got = {i["item_id"]: i["retrieval_score"] for i in body["items"]}
    before = {i["item_id"]: i["retrieval_score"] for i in without.json()["items"]}
    assert got != before  # the new item changed the query

    # reference: the checkpoint's model on Events whose middle item is 0 with the id's hash buckets
    ckpt = resolve_checkpoint(str(hashed_run))
    model = load_inference_model(ckpt)
    index = vocab.item_index()
    actions = {a.name: a for a in read_actions(ckpt)}
    events = [known[0], new, known[1]]
    feedback = {}
    for name, a in actions.items():
        values = np.array([e["actions"].get(name, 0.0) for e in events])
        feedback[name] = target_code(a.kind, a.num_codes, action_target(a.kind, a.levels, values)).astype(np.int64)
    hashes = np.zeros((3, len(model.schema.item_hash_buckets)), dtype=np.int64)
    hashes[1] = hash_buckets(["film-released-yesterday"], model.schema.item_hash_buckets)[0]
    items = np.array([index[known[0]["item_id"]], 0, index[known[1]["item_id"]]])
    contexts = {c: np.zeros(3, dtype=np.int64) for c in model.schema.contexts}
    _, query = encode_next(model, [Events(items, contexts, feedback, hashes)], [{c: 0 for c in contexts}])
    vectors = item_vectors(model)
    for item, score in got.items():
        assert score == pytest.approx(float(query[0] @ vectors[index[item]]), abs=1e-4)
