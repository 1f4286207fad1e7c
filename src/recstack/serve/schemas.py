"""Request and response bodies of the HTTP API (pydantic): what the OpenAPI schema documents and
what a bad request is told about (422 naming the field)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_K = 1000
MAX_ITEMS = 1000  # items in an ad-hoc history, ids in an exclusion list, events in one post

# numeric ids are 64-bit like the data's id columns: a larger number can name no user or item, and
# answers echo the id back (JSON encoders stop at 64 bits), so it is a 422, not a 500
ExternalId = Annotated[Union[Annotated[int, Field(ge=-2**63, le=2**63 - 1)],
                             Annotated[str, Field(min_length=1, max_length=200)]],
                       Field(description="an id as in the data (a 64-bit integer or text)")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not silently ignored


class Filters(_Body):
    """Keep only items with one of `genres` and a year in [year_min, year_max]."""

    genres: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=100)
    year_min: Optional[int] = Field(None, ge=0, le=9999)
    year_max: Optional[int] = Field(None, ge=0, le=9999)


class _Ranking(_Body):
    model: Optional[str] = Field(None, min_length=1, max_length=200,
                                 description="a served model label (GET /v1/models); default: the run's best")
    k: int = Field(10, ge=1, le=MAX_K)
    filters: Filters = Field(default_factory=Filters)
    exclude: list[ExternalId] = Field(default_factory=list, max_length=MAX_ITEMS,
                                      description="items never to recommend")
    explain: bool = Field(True, description="add a 'because you liked X' reason to each item")


class UserRequest(_Ranking):
    user_id: ExternalId
    include_seen: bool = Field(False, description="rank the items the user already has too")


class HistoryRequest(_Ranking):
    items: list[ExternalId] = Field(..., max_length=MAX_ITEMS, description="the items the user interacted with, "
                                                                           "oldest first")
    include_seen: bool = Field(False, description="rank the items of the history too")


class Reason(BaseModel):
    item_id: Any
    title: Optional[str] = None
    similarity: float


class Item(BaseModel):
    item_id: Any
    title: Optional[str] = None
    year: Optional[int] = None
    genres: Optional[str] = None
    n_interactions: int = 0


class RankedItem(Item):
    rank: int
    score: float
    because: Optional[Reason] = None


class Recommendations(BaseModel):
    run: str
    model: str
    model_version: str
    user_id: Any = None
    k: int
    history_length: int
    known_user: bool = Field(description="the server has events of this user (the run's or posted ones)")
    fallback: bool = Field(description="true when the run's fallback model answered instead of `model`")
    fallback_model: Optional[str] = None
    fallback_reason: Optional[str] = None
    retrieval: Literal["exact", "ann"] = Field(
        "exact", description="'ann': the model's HNSW index found the candidates (their scores are still exact)")
    items: list[RankedItem]


class SimilarItems(BaseModel):
    run: str
    item: Item
    items: list[RankedItem]


class UserInfo(BaseModel):
    user_id: Any
    known_user: bool = Field(description="the user has events in the run")
    history_length: int
    new_events: int = Field(description="events posted since the run")
    recent: list[Item]


class ModelInfo(BaseModel):
    label: str
    name: str
    version: str
    default: bool
    scores_new_users: Optional[bool] = Field(description="can score a user outside the run from the history sent "
                                                         "(POST /v1/recommend/history); null: not declared")


class ModelList(BaseModel):
    run: str
    fallback: str
    models: list[ModelInfo]


class EventIn(_Body):
    event_id: str = Field(..., min_length=1, max_length=200, description="unique id: a repeat is ignored")
    user_id: ExternalId
    item_id: ExternalId
    type: str = Field("interaction", min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$")
    timestamp: Optional[int] = Field(None, ge=0, le=2**53, description="epoch seconds; default: when received")
    value: Optional[float] = Field(None, description="e.g. a rating")

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


class EventBatch(_Body):
    events: list[EventIn] = Field(..., min_length=1, max_length=MAX_ITEMS)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored now")
    duplicates: int = Field(description="events whose id was already stored (ignored)")


class ReloadRequest(_Body):
    run_dir: str = Field(..., min_length=1, max_length=4096)
    models: Optional[list[Annotated[str, Field(min_length=1, max_length=200)]]] = Field(None, max_length=1000)


class ReloadDone(BaseModel):
    run: str
    models: list[str]
    seconds: float


class Status(BaseModel):
    status: str
    run: Optional[str] = None
