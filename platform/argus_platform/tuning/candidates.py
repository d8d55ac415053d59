"""What the weight search ranks, per validation (and test) row, with the model's P(a) for each
candidate, what the user did (observed) and, on synthetic data, E[a] from the simulator (oracle):

  impressions  the slate the user was shown at that event (impressions.parquet: the item they chose,
               with its feedback, and the items shown beside it, which they passed over) — the
               standard replay for ranking weights: a weighting is scored by where it puts what was
               shown, chosen and liked or skipped.
  retrieval    (when no impressions exist) the retrieval stage's top-N for that user plus the item the
               user engaged with next. Biased: only that one item has observed actions, the others
               were never shown, so a replay metric mostly rewards ranking the engaged item first —
               predicting the next item — rather than the value of the list.

Scored once with Ray Data (one pass over every split; an actor pool, each actor with the checkpoint
loaded) and cached as .npz; every trial of the search then only re-weights these arrays.

On synthetic data each candidate also gets its true value from the simulator: E[a | chosen] and
P(chosen | the row's candidates) — the generator's choice model (a softmax of its choice logits
over the list) — so the truth of a ranking is the expected value of its replay.
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
from argus_models.contract import ITEM_COL, TIME_COL, USER_IDX, act_col, ctx_col, target_code
from argus_models.inference import Events, ExactIndex, action_probabilities, encode_next, item_vectors
from argus_models.rundir import absolute
from argus_platform.data.prepare import PreparedRun
from argus_platform.data.synthetic import (
    SOURCE_TEMPERATURE,
    SOURCES,
    choice_logits,
    expected_actions,
    load_ground_truth,
)
from argus_platform.finetune.requests import (
    REQ_CLICKED,
    REQ_ITEMS,
    REQ_POS,
    build_requests,
    default_impressions,
    req_act,
)
from argus_platform.tuning.config import CandidateConfig

log = logging.getLogger(__name__)

CACHE_VERSION = 4
RETRIEVAL_BIAS = (
    "retrieval candidates: only the item each user engaged with next has observed actions and the others were "
    "never shown, so the replay rewards ranking the engaged item first (next-item prediction) more than the "
    "value of the list; impressions (what was shown beside it) remove that bias"
)
SPLIT_COL = "__split"  # which split a row came from: every split is scored in one pass


@dataclass
class CandidateSet:
    """Rows R × candidates C of one split. The actual next item is one of each row's candidates."""

    items: np.ndarray  # [R, C] item indices (0 = no candidate: tiny catalogues)
    target: np.ndarray  # [R, C] bool, the item the user engaged with next
    probs: dict[str, np.ndarray]  # [R, C] model P(a)
    observed: dict[str, np.ndarray]  # [R, C] what the user did (0 for items they were not shown)
    oracle: dict[str, np.ndarray] | None  # [R, C] E[a | user chose item] from the simulator
    choice: np.ndarray | None = None  # [R, C] the simulator's P(user chooses item | the row's candidates)
    retrieval: np.ndarray | None = None  # [R, C] the model's next-item score <query, item> (its choice logit)

    @property
    def valid(self) -> np.ndarray:
        return self.items > 0

    def rows(self, index: np.ndarray) -> "CandidateSet":
        """The subset of rows `index`, every field with it."""
        pick = lambda d: None if d is None else {a: v[index] for a, v in d.items()}  # noqa: E731
        opt = lambda v: None if v is None else v[index]  # noqa: E731
        return CandidateSet(
            self.items[index],
            self.target[index],
            pick(self.probs),
            pick(self.observed),
            pick(self.oracle),
            opt(self.choice),
            opt(self.retrieval),
        )

    def expected_observed(self) -> dict[str, np.ndarray]:
        """[R, C] E[what the log shows for a candidate] = P(chosen | the list) · E[a | chosen]: the
        truth a replay estimates (only the chosen item has actions). Without the choice model
        (older caches), E[a | chosen] alone."""
        if self.oracle is None:
            raise ValueError("no oracle values: the run's data is not synthetic")
        if self.choice is None:
            return self.oracle
        return {a: v.astype(np.float64) * self.choice for a, v in self.oracle.items()}

    def save(self, path: Path, meta: dict) -> None:
        arrays = {"items": self.items, "target": self.target}
        arrays |= {f"prob/{a}": v for a, v in self.probs.items()} | {f"obs/{a}": v for a, v in self.observed.items()}
        arrays |= {f"oracle/{a}": v for a, v in (self.oracle or {}).items()}
        arrays |= {k: v for k, v in (("choice", self.choice), ("retrieval", self.retrieval)) if v is not None}
        np.savez_compressed(path, **arrays, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> tuple["CandidateSet", dict]:
        with np.load(path) as z:
            pick = lambda prefix: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(prefix + "/")}  # noqa: E731
            oracle = pick("oracle")
            optional = {k: z[k] for k in ("choice", "retrieval") if k in z.files}
            meta = json.loads(str(z["meta"]))
            return cls(z["items"], z["target"], pick("prob"), pick("obs"), oracle or None, **optional), meta


def _next_event(r: dict, end: int, actions: list[dict], contexts: list[str]) -> tuple[Events, dict, int, dict, int]:
    """A sequence row cut at event `end`: the history before it (with its times), its context
    (known when ranking), its item, its actions' values (graded: the level) and its time."""
    items = np.asarray(r[ITEM_COL][: end + 1], dtype=np.int64)
    times = np.asarray(r[TIME_COL][: end + 1], dtype=np.int64)
    ctx = {c: np.asarray(r[ctx_col(c)][: end + 1], dtype=np.int64) for c in contexts}
    feedback, values = {}, {}
    for a in actions:
        vals = np.asarray(r[act_col(a["name"])][: end + 1], dtype=np.float32)
        feedback[a["name"]] = target_code(a["kind"], a["num_codes"], vals[:-1])
        values[a["name"]] = _natural(a, vals[-1:])[0]
    hist = Events(items[:-1], {c: v[:-1] for c, v in ctx.items()}, feedback, times=times[:-1])
    return hist, {c: int(v[-1]) for c, v in ctx.items()}, int(items[-1]), values, int(times[-1])


def _natural(action: dict, values: np.ndarray) -> np.ndarray:
    """Stored targets in the action's own units (a graded action's level index → its level)."""
    if action["kind"] == "graded":
        return np.asarray(action["levels"], dtype=np.float32)[values.astype(np.int64)]
    return values.astype(np.float32)


class _Scorer:
    """Ray Data actor: rows → candidates → P(a), observed, oracle. `source` retrieval: the retrieval
    top-N plus the actual next item; impressions: the slate shown at the row's request."""

    def __init__(
        self,
        checkpoint: str,
        source: str,
        width: int,
        actions: list[dict],
        contexts: list[str],
        truth: dict[str, np.ndarray] | None,
    ) -> None:
        torch.set_num_threads(1)
        self.model = load_inference_model(checkpoint)
        self.vectors = item_vectors(self.model)
        self.index = ExactIndex(self.vectors) if source == "retrieval" else None
        self.source, self.width, self.actions, self.contexts = source, width, actions, contexts
        self.truth = truth

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        rows = batch.to_pylist()
        if self.source == "retrieval":
            events = [_next_event(r, len(r[ITEM_COL]) - 1, self.actions, self.contexts) for r in rows]
        else:  # one request per held-out event: the row's last
            events = [_next_event(r, int(r[REQ_POS][-1]), self.actions, self.contexts) for r in rows]
        hist, ctx, at = [e[0] for e in events], [e[1] for e in events], [e[4] for e in events]
        head_in, query = encode_next(self.model, hist, ctx, at)
        if self.source == "retrieval":
            targets = np.asarray([e[2] for e in events])
            ids, _ = self.index.search(query, self.width, [np.unique(h.items) for h in hist])
            ids = np.pad(ids, ((0, 0), (0, self.width - ids.shape[1])))
            target = ids == targets[:, None]
            missing = ~target.any(axis=1)
            ids[missing, -1] = targets[missing]
            target[missing, -1] = True
            observed = {
                a["name"]: np.where(target, np.asarray([e[3][a["name"]] for e in events])[:, None], 0.0)
                for a in self.actions
            }
        else:
            ids = np.zeros((len(rows), self.width), np.int64)
            target = np.zeros(ids.shape, bool)
            observed = {a["name"]: np.zeros(ids.shape, np.float32) for a in self.actions}
            for i, r in enumerate(rows):
                shown = np.asarray(r[REQ_ITEMS][-1], dtype=np.int64)[: self.width]
                ids[i, : len(shown)] = shown
                target[i, : len(shown)] = np.asarray(r[REQ_CLICKED][-1])[: self.width] > 0
                for a in self.actions:
                    values = _natural(a, np.asarray(r[req_act(a["name"])][-1], dtype=np.float32)[: self.width])
                    observed[a["name"]][i, : len(shown)] = values
        probs = action_probabilities(self.model, head_in, torch.from_numpy(ids), hist, ctx, at)
        out = {"items": ids, "target": target, SPLIT_COL: np.asarray([r[SPLIT_COL] for r in rows], dtype=np.int8)}
        out["retrieval"] = torch.einsum("rd,rcd->rc", query, self.vectors[torch.from_numpy(ids)]).numpy()
        for a in self.actions:
            name = a["name"]
            out[f"prob/{name}"] = probs[name].numpy().astype(np.float32)
            out[f"obs/{name}"] = np.where(ids > 0, observed[name], 0.0).astype(np.float32)
        if self.truth is not None:
            sources = np.asarray([c.get("source", 0) for c in ctx], dtype=np.int64)
            out |= oracle_values(self.truth, np.asarray([r[USER_IDX] for r in rows]), ids, sources)
        return out


def oracle_values(t: dict[str, np.ndarray], users: np.ndarray, ids: np.ndarray, sources: np.ndarray) -> dict:
    """`oracle/<a>`: E[a | chosen] and `choice`: P(chosen | the row's candidates), from the
    simulator's truth (`_truth`) for rows of users, candidates ids [R, C] (0 = none) and the
    request's `source` code."""
    affinity = np.einsum("rk,rck->rc", t["user_factors"][users], t["item_factors"][ids])
    bait = t["item_bait"][ids]
    logits = np.where(ids > 0, choice_logits(affinity, bait, t["temperature"][sources][:, None]), -np.inf)
    peak = logits.max(axis=1, keepdims=True)
    choice = np.exp(logits - np.where(np.isfinite(peak), peak, 0.0))  # a row without candidates: all 0
    out = {"choice": (choice / np.maximum(choice.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)}
    for name, value in expected_actions(affinity, bait).items():
        out[f"oracle/{name}"] = value.astype(np.float32)
    return out


def _truth(prepared: PreparedRun, run_dir: Path) -> dict[str, np.ndarray] | None:
    """The simulator's world in the run's index space (None for real data): user factors (after
    their last event), item factors and clickbait, and each `source` code's choice temperature."""
    directory = run_dir / "data" / "synthetic"
    truth = load_ground_truth(directory)
    if truth is None or prepared.summary["data_config"]["source"] != "synthetic":
        return None
    temperature = json.loads((directory / "ground_truth.json").read_text())["config"]["affinity_temperature"]
    vocab = prepared.vocab
    users = np.searchsorted(truth["user_raw_ids"], vocab.users.astype(np.int64))
    items = np.searchsorted(truth["item_raw_ids"], vocab.items.astype(np.int64))
    item_factors = np.zeros((vocab.num_items + 1, truth["item_factors"].shape[1]))
    item_factors[1:] = truth["item_factors"][items]
    bait = np.zeros(vocab.num_items + 1)
    bait[1:] = truth.get("item_bait", np.zeros(len(truth["item_raw_ids"])))[items]
    sources = list(vocab.contexts.get("source", SOURCES))
    per_code = np.ones(len(sources) + 1)  # code 0: padding, unseen value
    per_code[1:] = [SOURCE_TEMPERATURE[list(SOURCES).index(s)] if s in SOURCES else 1.0 for s in sources]
    return {
        "user_factors": truth["user_final_factors"][users],
        "item_factors": item_factors,
        "item_bait": bait,
        "temperature": temperature * per_code,
    }


def candidate_source(cfg: CandidateConfig, run_dir: Path) -> tuple[str, Path | None]:
    """(source, impressions file): impressions when asked for or, with `auto`, when the run has them."""
    path = absolute(cfg.impressions) if cfg.impressions else default_impressions(run_dir)
    if cfg.source == "retrieval" or (cfg.source == "auto" and not path.is_file()):
        return "retrieval", None
    if not path.is_file():
        raise FileNotFoundError(
            f"candidates.source=impressions but there are no impressions at {path}: set candidates.impressions to a "
            "file (user_id, timestamp, item_id, clicked and the actions) or use candidates.source=retrieval"
        )
    return "impressions", path


def build_candidates(
    checkpoint: Path, run_dir: Path, prepared: PreparedRun, splits: list[str], cfg: CandidateConfig, cache_dir: Path
) -> tuple[dict[str, CandidateSet], dict]:
    """Score (or reuse the cached) candidates of each split; returns them and what they are (source,
    impressions file and how many impressions were usable). The splits to score go through one Ray
    Data pipeline, so one actor pool loads the checkpoint once for all of them."""
    source, impressions = candidate_source(cfg, run_dir)
    about = {"source": source, "impressions": str(impressions) if impressions else None}
    if source == "retrieval":
        about["bias"] = RETRIEVAL_BIAS
    width = cfg.retrieve_n + 1 if source == "retrieval" else cfg.slate_size
    sets, metas, todo = {}, {}, []
    for split in splits:
        metas[split] = {
            "version": CACHE_VERSION,
            "checkpoint": str(checkpoint),
            "split": split,
            "max_rows": cfg.max_rows,
            "source": source,
            "width": width,
            "impressions": about["impressions"],
        }
        cache = cache_dir / f"{split}.npz"
        if cache.is_file():
            cached, cached_meta = CandidateSet.load(cache)
            if cached_meta == metas[split]:
                log.info("reusing cached %s candidates %s", split, cache)
                sets[split] = cached
                continue
        todo.append(split)
    if source == "impressions" and todo:
        requests = build_requests(prepared, run_dir, impressions, cfg.slate_size, cache_dir / "requests", tuple(todo))
        about["skipped_impressions"] = requests["skipped"]
        inputs = requests["paths"]
    else:
        inputs = {s: prepared.paths[s] for s in splits}
    if source == "impressions":
        print(f"[tune] candidates: the slate shown at each held-out event ({impressions})", flush=True)
    else:
        print(f"[tune] candidates: retrieval top-{cfg.retrieve_n} + the next item (no impressions). {RETRIEVAL_BIAS}")
    if not todo:
        about["requests"] = {s: int(sets[s].items.shape[0]) for s in splits}
        return sets, about
    started = time.time()
    truth = _truth(prepared, run_dir)
    actions = [
        {"name": a.name, "kind": a.kind, "num_codes": a.num_codes(), "levels": list(a.levels)}
        for a in prepared.spec.actions
    ]
    # each scorer actor holds a CPU; leave one for the read tasks that feed them, or the pool waits forever
    actors = max(1, min(cfg.concurrency, int(ray.cluster_resources().get("CPU", 1)) - 1))
    parts_in = []
    for code, split in enumerate(todo):
        ds = ray.data.read_parquet(inputs[split])
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
            "source": source,
            "width": width,
            "actions": actions,
            "contexts": list(prepared.vocab.contexts),
            "truth": truth,
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
            raise ValueError(f"the {split} split of {run_dir} has no rows to rank ({source} candidates)")
        mine = {k: v[rows] for k, v in arr.items()}
        pick = lambda prefix: {k.split("/", 1)[1]: v for k, v in mine.items() if k.startswith(prefix + "/")}  # noqa: E731
        result = CandidateSet(
            mine["items"],
            mine["target"].astype(bool),
            pick("prob"),
            pick("obs"),
            pick("oracle") or None,
            mine.get("choice"),
            mine["retrieval"].astype(np.float32),
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
    about["requests"] = {s: int(sets[s].items.shape[0]) for s in splits}
    if about.get("skipped_impressions"):
        print(f"[tune] impressions not used: {about['skipped_impressions']}", flush=True)
    return {split: sets[split] for split in splits}, about
