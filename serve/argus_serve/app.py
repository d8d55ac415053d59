"""The application builder that `serve run`, `serve deploy` and the RayService name:

    import_path: argus_serve.app:build_app
    args: {checkpoint: runs/<run dir>}        # or a checkpoint dir; omitted = newest run under runs/

HTTP ──▶ Retriever (the ingress: validation, user store, retrieval) ──handle──▶ Ranker
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation at runtime
# to validate `args` into AppArgs (a string annotation would hand the builder a plain dict).
import logging

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from argus_serve.artifacts import resolve_checkpoint, wait_for_run
from argus_serve.deployments import Ranker, Retriever, StateRefresher
from argus_serve.ingress import Limits, read_token

log = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """Builder arguments (`args:` in the Serve config, or key=value after the import path)."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field("", description="run directory (its best kept checkpoint) or checkpoint directory")
    runs_root: str = Field("runs", description="where to look for the newest run when checkpoint is empty")
    wait_s: float = Field(
        0.0,
        ge=0,
        description="wait up to this long for the run `checkpoint` names to finish training "
        "(a service started beside its training job); 0 = no wait",
    )
    torch_threads: int = Field(1, ge=0, description="intra-op threads per model replica (0 = torch default)")
    retrieve_k: int = Field(Limits.retrieve_k, ge=1, description="candidates retrieved and ranked per request")
    max_k: int = Field(Limits.max_k, ge=1, description="largest k a request may ask for")
    max_history_events: int = Field(
        Limits.max_history_events, ge=1, description="largest `history` a request may carry"
    )
    max_exclude: int = Field(Limits.max_exclude, ge=0, description="largest `exclude` list")
    max_body_bytes: int = Field(Limits.max_body_bytes, ge=1024, description="larger request bodies get 413")
    events_store: str = Field(
        "",
        description="Redis URL (redis://HOST:PORT/DB) of the event store: POST /v1/events appends to users' "
        "histories there and /v1/recommend reads them (the training run's loaded once); '' = the histories "
        "frozen in the training run, no ingest",
    )
    history_cap: int = Field(0, ge=0, description="events kept per user in the event store; 0 = the model's window")
    events_prefix: str = Field("argus", min_length=1, description="key prefix of the event store in Redis")
    state_refresher: bool = Field(
        True,
        description="with events_store: deploy the StateRefresher, which re-encodes the users POST /v1/events "
        "touched off the request path, so /v1/recommend can use their stored states (Retriever state_mode)",
    )
    feedback_learner: bool = Field(
        False,
        description="with the state refresher: also fold ingested feedback into the neural-linear posterior "
        "that Ranker exploration=neural_linear samples from (one encoder pass per ingested event)",
    )
    bandit_prior_std: float = Field(0.1, gt=0, description="neural-linear prior std of each payoff weight")
    bandit_noise_std: float = Field(0.5, gt=0, description="neural-linear std of a reward around its payoff")
    auth_token_file: str = Field(
        "",
        description="a file (e.g. a mounted Secret) holding the bearer token every request but /healthz must "
        "carry (`Authorization: Bearer <token>`; 401 otherwise); '' = no check",
    )
    auth_token_env: str = Field("", description="or the environment variable holding it, in the replicas' environment")


def build_app(args: AppArgs) -> Application:
    if args.max_k > args.retrieve_k:
        raise ValueError(
            f"max_k={args.max_k} exceeds retrieve_k={args.retrieve_k}: the ranker cannot return more than it gets"
        )
    if args.wait_s and not args.checkpoint:
        raise ValueError("wait_s needs `checkpoint`: the training run to wait for")
    wait_for_run(args.checkpoint, args.wait_s)
    checkpoint = str(resolve_checkpoint(args.checkpoint, args.runs_root))
    log.info("serving checkpoint %s", checkpoint)
    limits = {
        "retrieve_k": args.retrieve_k,
        "max_k": args.max_k,
        "max_history_events": args.max_history_events,
        "max_exclude": args.max_exclude,
        "max_body_bytes": args.max_body_bytes,
    }
    if args.feedback_learner and not (args.events_store and args.state_refresher):
        raise ValueError("feedback_learner runs in the state refresher: it needs events_store and state_refresher")
    events = {"url": args.events_store, "history_cap": args.history_cap, "prefix": args.events_prefix}
    bandit = {"prior_std": args.bandit_prior_std, "noise_std": args.bandit_noise_std}
    ranker = Ranker.bind(checkpoint, args.torch_threads, events, bandit)
    refresher = None
    if args.events_store and args.state_refresher:
        learner = bandit if args.feedback_learner else None
        refresher = StateRefresher.bind(checkpoint, events, args.torch_threads, learner)
    read_token(args.auth_token_file, args.auth_token_env)  # refuse a named but missing token here already
    auth = {"token_file": args.auth_token_file, "token_env": args.auth_token_env}
    return Retriever.bind(checkpoint, ranker, args.torch_threads, limits, events, refresher, auth)
