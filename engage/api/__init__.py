"""The HTTP API and live dashboard over the scores the consumer keeps in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engage.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: `engage` imports this package for `engage serve`'s command; FastAPI (about a
    # second to import) is loaded only when an app is actually made.
    if name == "create_app":
        from engage.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
