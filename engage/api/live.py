"""`GET /events`: score updates as Server-Sent Events, straight from the Redis pub/sub channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from engage.limits import MAX_ID_CHARS
from engage.redis_client import connect_async
from engage.settings import Settings
from features import keys

router = APIRouter(tags=["live"])
KEEPALIVE_S = 15.0  # a comment line now and then keeps proxies from closing an idle stream


def _only(data: bytes, user: str | None) -> bytes | None:
    """The message (a JSON list of updates), narrowed to one user when asked."""
    if user is None:
        return data
    mine = [u for u in orjson.loads(data) if u.get("user_id") == user]
    return orjson.dumps(mine) if mine else None


async def score_stream(settings: Settings, user: str | None) -> AsyncIterator[bytes]:
    client = connect_async(settings, socket_connect_timeout=2)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(keys.scores_channel(settings.events_topic))
        yield b"retry: 2000\nevent: hello\ndata: {}\n\n"
        idle = 0.0
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield b": keepalive\n\n"
                continue
            idle = 0.0
            data = _only(message["data"], user)
            if data is not None:
                yield b"event: scores\ndata: " + data + b"\n\n"
    finally:
        await asyncio.shield(_close(pubsub, client))


async def _close(pubsub: aioredis.client.PubSub, client: aioredis.Redis) -> None:
    await pubsub.aclose()
    await client.aclose()


@router.get("/events", response_class=StreamingResponse)
async def events(
    request: Request,
    user: Annotated[
        str | None, Query(max_length=MAX_ID_CHARS, description="only this user")
    ] = None,
) -> StreamingResponse:
    """Each `scores` event's data is a JSON list of updates {user_id, event_id, event_ts,
    rule: {score, label, reasons}, model, scored_at}, as the consumer published them."""
    return StreamingResponse(
        score_stream(request.app.state.settings, user),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
