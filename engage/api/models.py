"""Request and response bodies: the API's contract, as shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from features.events import Id


def _encodable(value: str) -> str:
    """Ids become Redis keys as UTF-8: lone surrogates (legal in JSON) cannot be stored."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from exc
    return value


TextId = Annotated[Id, AfterValidator(_encodable)]
ContextKey = Annotated[str, Field(max_length=64), AfterValidator(_encodable)]
# As on events, but numbers bounded: the features take float() and log1p() of them.
ContextValue = (
    Annotated[str, Field(max_length=256)]
    | bool
    | Annotated[int, Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Field(allow_inf_nan=False)]
)


class RuleReason(BaseModel):
    signal: str
    points: float
    text: str


class ModelReason(BaseModel):
    """One feature that moved the model's probability, as a rule reason reads: in words."""

    feature: str = Field(description="the feature's name, as the model and `engage explain` use it")
    contribution: float = Field(
        description="its contribution to the model's log-odds: positive raises the probability, "
        "negative lowers it"
    )
    text: str = Field(
        description="the feature in words, e.g. 'engaged on 62% of events so far'; with the "
        "feature's value when this answer computed it (POST /score with an item), else without "
        "a number, e.g. 'how often engaged so far'"
    )


# The fields of scoring.score_record.ServedScore, described (tests/test_score_record.py).
class UserScore(BaseModel):
    """A user's current scores, exactly as the consumer last wrote them."""

    user_id: str
    rule_score: float
    label: str
    reasons: list[RuleReason]
    propensity: float | None = Field(
        description="model propensity; null without a model, or when the model does not score "
        "this user's domain (see model_status)"
    )
    model_reasons: list[ModelReason]
    model_version: str | None
    model_status: str | None = Field(
        default=None,
        description="why there is no propensity although a model is served: 'no model for this "
        "domain' when the user's latest event is of a domain (MovieLens ratings or a product "
        "funnel) the model was not trained on; null otherwise",
    )
    domain: str | None = Field(
        default=None,
        description="the domain of the user's latest event ('movielens' or 'funnel'), as the "
        "consumer recorded it when a model was served; null otherwise",
    )
    event_id: str = Field(description="the event that produced this score")
    event_ts: int = Field(description="that event's time, epoch ms")
    updated_at: float = Field(description="when the consumer wrote it, epoch ms")


class TopUser(BaseModel):
    rank: int
    user_id: str
    score: float = Field(description="the ranking value: rule score or model propensity")
    rule_score: float
    label: str
    propensity: float | None


#: The example body shown in the OpenAPI docs (and the README): MovieLens user 414 and film 318.
SCORE_EXAMPLE: JsonDict = {"user_id": "414", "item_id": "318", "context": {"device": "mobile"}}


class ScoreRequest(BaseModel):
    """Score a user now; with `item_id`, the probability that this user engages with it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SCORE_EXAMPLE]})

    user_id: TextId = Field(description="the user, as on their events")
    item_id: TextId | None = Field(
        default=None, description="an item (a film, a product); omit it for the current score"
    )
    context: dict[ContextKey, ContextValue] | None = Field(
        default=None, max_length=32, description="request context, as on events (device, ...)"
    )


class ItemScore(BaseModel):
    user_id: str
    item_id: str
    probability: float | None = Field(
        description="P(the user engages with the item); null when the model does not score "
        "this user's domain (see model_status)"
    )
    model_version: str
    reasons: list[ModelReason]
    model_status: str | None = Field(
        default=None,
        description="'no model for this domain' when the user's latest event is of a domain "
        "the model was not trained on (a funnel user and a MovieLens model, or the reverse); "
        "null when there is a probability",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="what makes the probability less than it seems: e.g. an unknown item "
        "(no events, no metadata) is scored with its item features at their prior",
    )


class ScorePoint(BaseModel):
    """One past score of a user, as the consumer wrote it to the scores topic."""

    event_id: str = Field(description="the event that produced this score")
    event_ts: int = Field(description="that event's time, epoch ms")
    rule_score: float
    label: str
    propensity: float | None = Field(description="model propensity; null without a model")
    scored_at: float = Field(description="when the consumer scored it, epoch ms")


class Health(BaseModel):
    kafka: bool
    redis: bool


class Problem(BaseModel):
    detail: str
