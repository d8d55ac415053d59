"""Root config of `jobs/tune_weights.py`: which run, which candidates, which objectives, how to search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from argus_platform.configlib import ConfigError
from argus_platform.configlib import documented as _help
from argus_platform.finetune.config import IMPRESSIONS_HELP, SLATE_SIZE_HELP


@dataclass
class MetricSpec:
    """One metric of the ranking the weights produce (objectives are data, not code).

    Replay metrics, over each row's top-k (averaged over rows), from the candidates' observed
    actions — of a logged slate, the item chosen (its feedback) and those passed over (zero); of
    retrieval candidates, only the item engaged with next (so they reward ranking *that* item high):
      dcg         Σ over the top-k of Σ_a gains[a] · value_a(item) / log2(position + 1)
      utility     Σ over the top-k of Σ_a gains[a] · value_a(item)
      ndcg        NDCG@k with gain(item) = max(0, Σ_a gains[a] · value_a(item))
      rate        Σ over the top-k of value_{action}(item)  (e.g. dislikes shown per request)
    Value metric, over the engaged items of all rows:
      value_corr  Spearman correlation between an engaged item's score and the value the user got
                  from it (Σ_a gains[a] · value_a): does the score order what users valued?
    On synthetic data every metric is also judged by the truth: utility@k (dcg@k, rate@k) of the
    list with E[a | user, item] from the simulator, and its regret to the best ordering.
    """

    name: str = ""
    kind: Literal["dcg", "utility", "ndcg", "rate", "value_corr"] = "utility"
    gains: dict[str, float] = field(default_factory=dict)
    action: str = ""
    k: int = 10
    goal: Literal["max", "min"] = "max"
    max: Optional[float] = None  # constraints only: the metric must stay ≤ max
    min: Optional[float] = None  # constraints only: the metric must stay ≥ min

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("every objective/constraint needs a `name`")
        if self.kind != "rate" and not self.gains:
            raise ConfigError(f"{self.name}: kind {self.kind} needs `gains` (action -> value)")
        if self.kind == "rate" and not self.action:
            raise ConfigError(f"{self.name}: kind rate needs `action`")
        if self.k < 1:
            raise ConfigError(f"{self.name}: k must be ≥ 1, got {self.k}")

    def actions(self) -> set[str]:
        return {self.action} if self.kind == "rate" else set(self.gains)


# The embedded default (the synthetic data's actions): does the ranking put first what users engage
# with (plays, likes, no skips), and does it keep what they dislike down? Two objectives → NSGA-II,
# a Pareto front; the weights written out are the front's best engagement.
ENGAGEMENT_GAINS = {"played_ratio": 1.0, "like": 5.0, "skip": -1.0}


def _default_objectives() -> list[MetricSpec]:
    return [
        MetricSpec(name="engagement", kind="dcg", gains=dict(ENGAGEMENT_GAINS), k=10),
        MetricSpec(name="no_dislike", kind="dcg", gains={"dislike": -1.0}, k=10),
    ]


@dataclass
class CandidateConfig:
    source: Literal["auto", "impressions", "retrieval"] = _help(
        "what is ranked per held-out event: the slate shown then (impressions), or the retrieval top-N plus the "
        "next item (retrieval: biased, only that item has observed actions); auto = impressions when there are some",
        "auto",
    )
    impressions: str = _help(IMPRESSIONS_HELP, "")
    slate_size: int = _help(SLATE_SIZE_HELP, 8)
    retrieve_n: int = _help("retrieval: top-N per row; the actual next item is added when missing", 50)
    max_rows: int = _help("rows per split to score (0 = all)", 0)
    batch_size: int = _help("rows per Ray Data batch", 256)
    concurrency: int = _help("Ray Data actors scoring candidates in parallel", 2)


@dataclass
class SearchConfig:
    algorithm: Literal["auto", "tpe", "nsga2", "random"] = _help(
        "auto = TPE for one objective, NSGA-II for several (both Optuna through Tune's OptunaSearch)", "auto"
    )
    num_samples: int = _help("trials", 48)
    seed: int = _help("sampler seed (same seed, same trials)", 0)
    weight_low: float = _help("lower bound of every weight", -1.0)
    weight_high: float = _help("upper bound of every weight", 1.0)
    max_concurrent: int = _help("trials evaluated at once (1 = the same seed gives the same trials)", 1)
    signs_from_gains: bool = _help(
        "keep each weight's sign that of the objectives' gain for its action (w ∈ [0, high] or [low, 0]); "
        "false searches every weight over [low, high] (a baseline with a forbidden sign is then scored beside "
        "the search)",
        False,
    )
    engage_sharpness_high: float = _help(
        "the engagement term: search engage_sharpness over [0, this] and the weight of `engage` over [low, high] "
        "(score = P(engage | list) · (w_engage + Σ_a w_a · P(a | engaged)), P(engage | list) = softmax of "
        "engage_sharpness · retrieval score over the list; 1 = the model's own next-item probability at "
        "loss.temperature 1); 0 = search Σ_a w_a · P(a | engaged) alone",
        1.0,
    )
    select: str = _help("objective whose best feasible Pareto point is written out ('' = the first)", "")


@dataclass
class TuneWeightsConfig:
    """Root config of `jobs/tune_weights.py`."""

    run: str = _help("training run dir or checkpoint dir ('' = the newest run under runs_root)", "")
    runs_root: str = _help("where to look for the newest run", "runs")
    wait_s: float = _help(
        "wait up to this long for `run` to finish training (its metrics.json) first; 0 = no wait", 0.0
    )
    out_dir: str = _help("output directory ('' = <run>/tune)", "")
    candidates: CandidateConfig = _help("which candidates are ranked", factory=CandidateConfig)
    objectives: list[MetricSpec] = _help(
        "what the search optimises (several = multi-objective)", factory=_default_objectives
    )
    constraints: list[MetricSpec] = _help("metrics that must stay within max/min on validation", factory=list)
    default_weights: dict[str, float] = _help(
        "the hand-set baseline (serve/argus.yaml's); {} = uniform",
        factory=lambda: {"like": 1.0, "played_ratio": 0.5, "skip": -0.5, "dislike": -1.0},
    )
    baseline_weights: dict[str, dict[str, float]] = _help(
        "more named weight sets to beat (e.g. production's): trials of the search like default and uniform",
        factory=dict,
    )
    search: SearchConfig = _help("the Tune search", factory=SearchConfig)
    local_num_cpus: int = _help("logical CPUs of the local Ray started when RAY_ADDRESS is unset", 4)
    verbose: bool = _help(
        "print Ray's, Ray Tune's and Ray Data's own output on the terminal too (else it stays in "
        "<out dir>/logs/ray; the job's own lines are printed either way)",
        False,
    )

    def validate(self) -> None:
        if not self.objectives:
            raise ConfigError("at least one objective is needed")
        if self.wait_s > 0 and not self.run:
            raise ConfigError("wait_s needs `run`: the training run to wait for")
        names = [m.name for m in self.objectives + self.constraints]
        if len(set(names)) != len(names):
            raise ConfigError(f"objective/constraint names must be unique, got {names}")
        for c in self.constraints:
            if c.max is None and c.min is None:
                raise ConfigError(f"constraint {c.name} needs `max` or `min`")
        if self.search.select and self.search.select not in {o.name for o in self.objectives}:
            raise ConfigError(
                f"search.select={self.search.select!r} is not an objective: {[o.name for o in self.objectives]}"
            )
        if self.search.weight_low >= self.search.weight_high:
            raise ConfigError("search.weight_low must be below search.weight_high")
        if self.search.engage_sharpness_high < 0:
            raise ConfigError("search.engage_sharpness_high must be ≥ 0 (0 = no engagement term)")
