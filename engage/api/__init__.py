"""The HTTP API and live dashboard over the scores the consumer keeps in Redis."""

from engage.api.app import create_app

__all__ = ["create_app"]
