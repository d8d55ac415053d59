"""HTTP request and response bodies of the recommend API (they are also the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Raw ids are strings in the vocabulary; JSON numbers are accepted and read as their text.
RawId = Annotated[
    str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else v)
]
ContextValue = Annotated[
    str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else v)
]

HARD_MAX_EVENTS = 100_000  # schema bound; the deployment's own (smaller) limit is checked in the handler


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: RawId = Field(description="raw item id, as in the training data")
    actions: dict[str, float] = Field(
        default_factory=dict, description="feedback of the event; missing actions count as 0"
    )
    context: dict[str, ContextValue] = Field(default_factory=dict, description="context values of the event")
    timestamp: float | None = Field(
        None,
        ge=0,
        description="event time (seconds since 1970); a model with HSTU's time-gap bias needs it in `history` "
        "(POST /v1/events: default the time it arrives); events are kept in the order sent",
    )


class RecommendRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "17", "k": 10},
                {"history": [{"item_id": "42", "actions": {"like": 1}}], "k": 5, "debug": True},
            ]
        },
    )
    user_id: RawId | None = Field(None, description="a user of the training run; their stored history is used")
    history: list[HistoryEvent] = Field(
        default_factory=list,
        max_length=HARD_MAX_EVENTS,
        description="events oldest first; appended after the stored history of a known user",
    )
    context: dict[str, ContextValue] = Field(
        default_factory=dict, description="context of the request (default: that of the last event)"
    )
    exclude: list[RawId] = Field(
        default_factory=list, max_length=HARD_MAX_EVENTS, description="item ids never to return"
    )
    k: int = Field(10, ge=1, description="items to return (at most the deployment's max_k)")
    debug: bool = Field(False, description="add per-stage timings and item groups")


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="Σ_a w_a · P(a) (the retrieval score when the model has no action heads)")
    retrieval_score: float = Field(description="<query, item> of the retrieval stage")
    probabilities: dict[str, float] = Field(description="P(a) per action head")
    group: int | None = Field(None, description="item-side group used by the diversity rule (debug only)")
    explored: bool | None = Field(
        None,
        description="with ranker exploration: the slot was filled by a Thompson-sampled payoff, not the posterior "
        "mean (its `score` is the sampled one); absent when exploration is off",
    )


class RecommendResponse(BaseModel):
    user_id: str | None
    items: list[RecommendedItem]
    history_events: int = Field(description="events of the history the model read (before truncation to max_seq_len)")
    history_source: str = Field(description="store, request or store+request")
    model_version: dict[str, str]
    weights_version: str
    warnings: dict[str, list[str]] = Field(
        default_factory=dict,
        description="ids outside the vocabulary: skipped (unknown_*) or, with multi-hash tables, "
        "embedded from their hash rows (hashed_history_items)",
    )
    timings_ms: dict[str, float] | None = None
    state_source: str = Field(
        "encoder",
        description="where the query came from: `encoder` (run for this request), `stored` (the user's latest "
        "state from the state refresher) or `stored_mean2` (the mean of the two latest)",
    )
    state_age_s: float | None = Field(None, description="age of the stored state used")
    state_lag_events: int | None = Field(None, description="events ingested after the stored state's last one")


class IngestEvent(HistoryEvent):
    """An event to store: `history`'s fields (item_id, actions, context, timestamp) and whose it is."""

    event_id: RawId | None = Field(
        None,
        description="idempotency key: an event whose id the user's history already has is not appended again "
        "(default: derived from the event's fields, so a retried POST of the same event is a duplicate)",
    )
    user_id: RawId = Field(description="raw user id; a user outside the training run starts with an empty history")


class EventsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"events": [{"user_id": "17", "item_id": "42", "timestamp": 1733450000, "actions": {"like": 1}}]}
            ]
        },
    )
    events: list[IngestEvent] = Field(min_length=1, max_length=HARD_MAX_EVENTS, description="events, oldest first")


class QuarantinedEvent(BaseModel):
    index: int = Field(description="position of the event in the request")
    event_id: str
    user_id: str
    item_id: str
    reason: str


class EventsResponse(BaseModel):
    received: int
    appended: int = Field(description="events added to users' histories")
    duplicates: int = Field(description="events whose id was already stored (a retried POST): not added again")
    quarantined: list[QuarantinedEvent] = Field(
        default_factory=list, description="events that cannot be stored (kept in the store's quarantine stream)"
    )
    history_events: dict[str, int] = Field(description="per user: the stored history's length afterwards")
    warnings: dict[str, list[str]] = Field(
        default_factory=dict, description="unknown context values (stored as unknown) and hashed items"
    )
