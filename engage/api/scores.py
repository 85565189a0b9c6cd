"""The read endpoints: a user's current score, the leaderboard, request-time scoring."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from engage.api.history import KafkaUnavailable, recent_scores
from engage.api.model_cache import NoModel
from engage.api.models import ItemScore, Problem, ScorePoint, ScoreRequest, TopUser, UserScore
from engage.limits import MAX_ID_CHARS, MIN_ID_CHARS, TOP_N_MAX, TOP_N_MIN
from features import keys
from scoring.lookup import UnknownUser, current_score, score_request, top_users

router = APIRouter(tags=["scores"])
SHOWN_ID_CHARS = 64  # an error message echoes at most this much of an id
HISTORY_N_MAX = 200  # scores one history request returns at most
USER_PATH = Path(
    min_length=MIN_ID_CHARS, max_length=MAX_ID_CHARS, description="the user's id, URL-encoded"
)
NOT_FOUND = {404: {"model": Problem, "description": "the consumer has not scored this user"}}
REDIS_DOWN = {503: {"model": Problem, "description": "Redis is unavailable (see /healthz)"}}


def shown_id(user_id: str) -> str:
    """The id as an error message may echo it: at most SHOWN_ID_CHARS characters, so a
    huge or hostile id never comes back whole."""
    if len(user_id) <= SHOWN_ID_CHARS:
        return user_id
    return user_id[:SHOWN_ID_CHARS] + "…"


def not_found(user_id: str, why: str = "the consumer has not seen this user") -> HTTPException:
    """The 404 of an unknown user, its id shortened (`shown_id`)."""
    return HTTPException(404, f"no score for user {shown_id(user_id)!r}: {why}")


@router.get("/users/top", summary="Leaderboard", response_model=list[TopUser], responses=REDIS_DOWN)
def get_top(
    request: Request,
    n: Annotated[int, Query(ge=TOP_N_MIN, le=TOP_N_MAX, description="how many users")] = 10,
    by: Annotated[Literal["rule", "model"], Query(description="rank by")] = "rule",
    label: Annotated[
        Literal["high", "medium", "low"] | None, Query(description="only users of this label")
    ] = None,
) -> list[dict[str, Any]]:
    """The top n users by rule score or model propensity, optionally of one label."""
    return top_users(request.app.state.redis, n, by=by, label=label)


# `:path` so ids containing "/" (sent as %2F) reach the handler instead of a routing 404.
@router.get(
    "/users/{user_id:path}/score",
    summary="A user's current score",
    response_model=UserScore,
    responses={**NOT_FOUND, **REDIS_DOWN},
)
async def get_score(
    user_id: Annotated[str, USER_PATH],
    request: Request,
) -> dict[str, Any]:
    """The user's current rule score, label and reasons, and the model's propensity and
    reasons (each with its feature, its contribution and its text), as of the user's latest
    event; or, for an event of a domain the model was not trained on, `model_status` "no
    model for this domain" instead of a propensity."""
    # Inline on the event loop (no threadpool hop): a loopback HGETALL takes ~0.1 ms, less
    # than handing work to a thread and back, whose wake-ups dominated p99 on a busy 2-core
    # machine; the client's 2 s socket timeout bounds the worst case.
    try:
        return current_score(request.app.state.redis, user_id).as_dict()
    except UnknownUser as exc:
        raise not_found(user_id) from exc
    except UnicodeEncodeError as exc:  # a lone surrogate cannot name a Redis key
        raise not_found(user_id, "not a valid id") from exc


@router.get(
    "/users/{user_id:path}/history",
    summary="A user's recent scores",
    response_model=list[ScorePoint],
    responses={
        **NOT_FOUND,
        503: {"model": Problem, "description": "Kafka or Redis is unavailable"},
    },
)
def get_history(
    user_id: Annotated[str, USER_PATH],
    request: Request,
    n: Annotated[
        int, Query(ge=1, le=HISTORY_N_MAX, description="at most this many scores, the newest")
    ] = HISTORY_N_MAX,
) -> list[dict[str, Any]]:
    """The user's recent scores, oldest first, for a timeline in event time. They are read
    from the scores topic: only scores among its newest messages are found, so a user not
    scored for a long time may have fewer, or none."""
    state = request.app.state
    try:
        if not state.redis.exists(keys.user_score_key(user_id)):
            raise not_found(user_id)
        return recent_scores(state.settings, user_id, n)
    except UnicodeEncodeError as exc:
        raise not_found(user_id, "not a valid id") from exc
    except KafkaUnavailable as exc:
        raise HTTPException(503, f"{exc}: the score history cannot be read now") from exc


@router.post(
    "/score",
    summary="Score a user, or a user and an item",
    response_model=ItemScore | UserScore,
    responses={
        **NOT_FOUND,
        503: {"model": Problem, "description": "no model to score items, or Redis unavailable"},
    },
)
async def post_score(body: ScoreRequest, request: Request) -> dict[str, Any]:
    """With `item_id`: P(user engages with the item) now, with the top model reasons (each
    with its feature, its contribution and the feature's value in words); for a user whose
    events are of a domain the model was not trained on (MovieLens ratings or a product
    funnel), no probability: `model_status` says "no model for this domain". Without: the
    user's current score (as GET /users/{id}/score)."""
    state = request.app.state
    try:
        if body.item_id is None:
            served = await run_in_threadpool(current_score, state.redis, body.user_id)
            return served.as_dict()
        bundle = await run_in_threadpool(state.models.current)
        scored = await run_in_threadpool(
            score_request, state.redis, bundle, state.settings.feature_params,
            body.user_id, body.item_id, body.context,
        )  # fmt: skip
    except UnknownUser as exc:
        raise not_found(body.user_id) from exc
    except NoModel as exc:
        raise HTTPException(503, str(exc)) from exc
    return scored.__dict__
