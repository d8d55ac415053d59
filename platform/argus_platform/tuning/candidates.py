"""What the weight search ranks: for each validation (and test) row, the retrieval stage's top-N
for that user plus the item the user actually engaged with next, with the model's P(a) for each,
what the user did (observed) and, on synthetic data, E[a] from the simulator (oracle).

Scored once with Ray Data (one pass over every split; an actor pool, each actor with the checkpoint
loaded) and cached as .npz; every trial of the search then only re-weights these arrays.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from argus_models.checkpoint import load_inference_model
from argus_models.contract import ITEM_COL, USER_IDX, act_col, ctx_col, target_code
from argus_models.inference import Events, ExactIndex, action_probabilities, encode_next, item_vectors
from argus_platform.data.prepare import PreparedRun
from argus_platform.data.synthetic import expected_actions, load_ground_truth
from argus_platform.tuning.config import CandidateConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 1
SPLIT_COL = "__split"  # which split a row came from: every split is scored in one pass


@dataclass
class CandidateSet:
    """Rows R × candidates C of one split. The actual next item is one of each row's candidates."""

    items: np.ndarray  # [R, C] item indices (0 = no candidate: tiny catalogues)
    target: np.ndarray  # [R, C] bool, the item the user engaged with next
    probs: dict[str, np.ndarray]  # [R, C] model P(a)
    observed: dict[str, np.ndarray]  # [R, C] what the user did (0 for items they were not shown)
    oracle: dict[str, np.ndarray] | None  # [R, C] E[a | user, item] from the simulator

    @property
    def valid(self) -> np.ndarray:
        return self.items > 0

    def save(self, path: Path, meta: dict) -> None:
        arrays = {"items": self.items, "target": self.target}
        arrays |= {f"prob/{a}": v for a, v in self.probs.items()} | {f"obs/{a}": v for a, v in self.observed.items()}
        arrays |= {f"oracle/{a}": v for a, v in (self.oracle or {}).items()}
        np.savez_compressed(path, **arrays, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> tuple["CandidateSet", dict]:
        with np.load(path) as z:
            pick = lambda prefix: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(prefix + "/")}  # noqa: E731
            oracle = pick("oracle")
            return cls(z["items"], z["target"], pick("prob"), pick("obs"), oracle or None), json.loads(str(z["meta"]))


class _Scorer:
    """Ray Data actor: histories → retrieval top-N (+ the actual next item) → P(a), observed, oracle."""

    def __init__(
        self,
        checkpoint: str,
        retrieve_n: int,
        actions: list[dict],
        contexts: list[str],
        user_factors: np.ndarray | None,
        item_factors: np.ndarray | None,
    ) -> None:
        torch.set_num_threads(1)
        self.model = load_inference_model(checkpoint)
        self.index = ExactIndex(item_vectors(self.model))
        self.n, self.actions, self.contexts = retrieve_n, actions, contexts
        self.user_factors, self.item_factors = user_factors, item_factors

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        hist, ctx, targets, target_values = [], [], [], {a["name"]: [] for a in self.actions}
        rows = batch.to_pylist()
        for r in rows:
            items = np.asarray(r[ITEM_COL], dtype=np.int64)
            contexts = {c: np.asarray(r[ctx_col(c)], dtype=np.int64) for c in self.contexts}
            feedback = {}
            for a in self.actions:
                vals = np.asarray(r[act_col(a["name"])], dtype=np.float32)
                feedback[a["name"]] = target_code(a["kind"], a["num_codes"], vals[:-1])
                last = float(vals[-1])
                target_values[a["name"]].append(a["levels"][int(last)] if a["kind"] == "graded" else last)
            hist.append(Events(items[:-1], {c: v[:-1] for c, v in contexts.items()}, feedback))
            ctx.append({c: int(v[-1]) for c, v in contexts.items()})  # the next event's context is known
            targets.append(int(items[-1]))
        head_in, query = encode_next(self.model, hist, ctx)
        ids, _ = self.index.search(query, self.n + 1, [np.unique(h.items) for h in hist])
        ids = np.pad(ids, ((0, 0), (0, self.n + 1 - ids.shape[1])))
        target = ids == np.asarray(targets)[:, None]
        missing = ~target.any(axis=1)
        ids[missing, -1] = np.asarray(targets)[missing]
        target[missing, -1] = True
        probs = action_probabilities(self.model, head_in, torch.from_numpy(ids), hist, ctx)
        out = {"items": ids, "target": target, SPLIT_COL: np.asarray([r[SPLIT_COL] for r in rows], dtype=np.int8)}
        for a in self.actions:
            name = a["name"]
            out[f"prob/{name}"] = probs[name].numpy().astype(np.float32)
            out[f"obs/{name}"] = np.where(
                target, np.asarray(target_values[name], dtype=np.float32)[:, None], 0.0
            ).astype(np.float32)
        if self.user_factors is not None:
            users = np.asarray([r[USER_IDX] for r in rows])
            affinity = np.einsum("rk,rck->rc", self.user_factors[users], self.item_factors[ids])
            for name, value in expected_actions(affinity).items():
                out[f"oracle/{name}"] = value.astype(np.float32)
        return out


def _factors(prepared: PreparedRun, run_dir: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The simulator's user/item factors in the run's index space (None for real data)."""
    truth = load_ground_truth(run_dir / "data" / "synthetic")
    if truth is None or prepared.summary["data_config"]["source"] != "synthetic":
        return None, None
    vocab = prepared.vocab
    users = np.searchsorted(truth["user_raw_ids"], vocab.users.astype(np.int64))
    items = np.searchsorted(truth["item_raw_ids"], vocab.items.astype(np.int64))
    item_factors = np.zeros((vocab.num_items + 1, truth["item_factors"].shape[1]))
    item_factors[1:] = truth["item_factors"][items]
    return truth["user_final_factors"][users], item_factors


def build_candidates(
    checkpoint: Path, run_dir: Path, prepared: PreparedRun, splits: list[str], cfg: CandidateConfig, cache_dir: Path
) -> dict[str, CandidateSet]:
    """Score (or reuse the cached) candidates of each split. The splits to score go through one
    Ray Data pipeline, so one actor pool loads the checkpoint once for all of them."""
    sets, metas, todo = {}, {}, []
    for split in splits:
        metas[split] = {
            "version": CACHE_VERSION,
            "checkpoint": str(checkpoint),
            "split": split,
            "retrieve_n": cfg.retrieve_n,
            "max_rows": cfg.max_rows,
        }
        cache = cache_dir / f"{split}.npz"
        if cache.is_file():
            cached, cached_meta = CandidateSet.load(cache)
            if cached_meta == metas[split]:
                log.info("reusing cached %s candidates %s", split, cache)
                sets[split] = cached
                continue
        todo.append(split)
    if not todo:
        return sets
    started = time.time()
    user_factors, item_factors = _factors(prepared, run_dir)
    actions = [
        {"name": a.name, "kind": a.kind, "num_codes": a.num_codes(), "levels": list(a.levels)}
        for a in prepared.spec.actions
    ]
    # each scorer actor holds a CPU; leave one for the read tasks that feed them, or the pool waits forever
    actors = max(1, min(cfg.concurrency, int(ray.cluster_resources().get("CPU", 1)) - 1))
    parts_in = []
    for code, split in enumerate(todo):
        ds = ray.data.read_parquet(prepared.paths[split])
        if cfg.max_rows:
            ds = ds.limit(cfg.max_rows)
        parts_in.append(
            ds.add_column(SPLIT_COL, lambda t, c=code: pa.array(np.full(len(t), c, np.int8)), batch_format="pyarrow")
        )
    ds = parts_in[0].union(*parts_in[1:]) if len(parts_in) > 1 else parts_in[0]
    ds = ds.repartition(4 * actors)  # a small split is one file: give every scorer blocks to work on
    ds = ds.map_batches(
        _Scorer,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={
            "checkpoint": str(checkpoint),
            "retrieve_n": cfg.retrieve_n,
            "actions": actions,
            "contexts": list(prepared.vocab.contexts),
            "user_factors": user_factors,
            "item_factors": item_factors,
        },
    )
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    arr = {k: np.concatenate(v) for k, v in parts.items()}
    code_of = arr.pop(SPLIT_COL) if arr else np.zeros(0, np.int8)
    for code, split in enumerate(todo):
        rows = code_of == code
        if not rows.any():
            raise ValueError(f"the {split} split of {run_dir} has no rows to rank")
        mine = {k: v[rows] for k, v in arr.items()}
        pick = lambda prefix: {k.split("/", 1)[1]: v for k, v in mine.items() if k.startswith(prefix + "/")}  # noqa: E731
        result = CandidateSet(
            mine["items"], mine["target"].astype(bool), pick("prob"), pick("obs"), pick("oracle") or None
        )
        cache_dir.mkdir(parents=True, exist_ok=True)
        result.save(cache_dir / f"{split}.npz", metas[split])
        sets[split] = result
        print(
            f"[tune] {split}: {result.items.shape[0]:,} rows × {result.items.shape[1]} candidates scored"
            f"{'; oracle from the simulator' if result.oracle else ''}",
            flush=True,
        )
    print(f"[tune] candidates of {' and '.join(todo)} scored in one pass ({time.time() - started:.0f}s)", flush=True)
    return {split: sets[split] for split in splits}
