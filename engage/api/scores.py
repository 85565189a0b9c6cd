"""The read endpoints: a user's current score, the leaderboard, request-time scoring."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from engage.api.model_cache import NoModel
from engage.api.models import ItemScore, Problem, ScoreRequest, TopUser, UserScore
from engage.limits import MAX_ID_CHARS, MIN_ID_CHARS, TOP_N_MAX, TOP_N_MIN
from scoring.lookup import UnknownUser, current_score, score_request, top_users

router = APIRouter(tags=["scores"])
NOT_FOUND = {404: {"model": Problem, "description": "the consumer has not scored this user"}}
REDIS_DOWN = {503: {"model": Problem, "description": "Redis is unavailable (see /healthz)"}}


@router.get("/users/top", response_model=list[TopUser], responses=REDIS_DOWN)
def get_top(
    request: Request,
    n: Annotated[int, Query(ge=TOP_N_MIN, le=TOP_N_MAX, description="how many users")] = 10,
    by: Annotated[Literal["rule", "model"], Query(description="rank by")] = "rule",
    label: Annotated[Literal["high", "medium", "low"] | None, Query()] = None,
) -> list[dict[str, Any]]:
    """The top n users by rule score or model propensity, optionally of one label."""
    return top_users(request.app.state.redis, n, by=by, label=label)


# `:path` so ids containing "/" (sent as %2F) reach the handler instead of a routing 404.
@router.get(
    "/users/{user_id:path}/score", response_model=UserScore, responses={**NOT_FOUND, **REDIS_DOWN}
)
async def get_score(
    user_id: Annotated[str, Path(min_length=MIN_ID_CHARS, max_length=MAX_ID_CHARS)],
    request: Request,
) -> dict[str, Any]:
    """The user's current scores and reasons: one HGETALL, nothing else on this hot path.

    Deliberately inline on the event loop (no threadpool hop): a loopback HGETALL takes
    ~0.1 ms, less than handing work to a thread and back, whose wake-ups dominated p99 on a
    busy 2-core machine; the client's 2 s socket timeout bounds the worst case."""
    try:
        return current_score(request.app.state.redis, user_id)
    except UnknownUser as exc:
        raise HTTPException(404, str(exc)) from exc
    except UnicodeEncodeError as exc:  # a lone surrogate cannot name a Redis key
        raise HTTPException(404, f"no score for user {user_id!r}: not a valid id") from exc


@router.post(
    "/score",
    response_model=ItemScore | UserScore,
    responses={
        **NOT_FOUND,
        503: {"model": Problem, "description": "no model to score items, or Redis unavailable"},
    },
)
async def post_score(body: ScoreRequest, request: Request) -> dict[str, Any]:
    """With `item_id`: P(user engages with the item) now, with the top model reasons.
    Without: the user's current score (as GET /users/{id}/score)."""
    state = request.app.state
    try:
        if body.item_id is None:
            return await run_in_threadpool(current_score, state.redis, body.user_id)
        bundle = await run_in_threadpool(state.models.current)
        scored = await run_in_threadpool(
            score_request, state.redis, bundle, state.settings.feature_params,
            body.user_id, body.item_id, body.context,
        )  # fmt: skip
    except UnknownUser as exc:
        raise HTTPException(404, str(exc)) from exc
    except NoModel as exc:
        raise HTTPException(503, str(exc)) from exc
    return scored.__dict__
