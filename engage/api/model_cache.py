"""The current model bundle, loaded once per version (unpickling costs far more than a request)."""

from __future__ import annotations

import threading
from typing import Any

from engage.settings import Settings
from scoring.registry import ModelRegistry


class NoModel(LookupError):
    """No model is registered, or the registered one cannot be served."""


class ModelCache:
    def __init__(self, settings: Settings) -> None:
        self.registry = ModelRegistry(settings, settings.feature_params)
        self._lock = threading.Lock()
        self._loaded: tuple[str, Any] | None = None

    def current(self) -> Any:
        """The bundle the `current` pointer names (one small file read per call)."""
        version = self.registry.current_version()
        if version is None:
            raise NoModel("no model registered: run `engage train` first, then retry")
        with self._lock:
            if self._loaded is None or self._loaded[0] != version:
                try:
                    self._loaded = (version, self.registry.load(version))
                except Exception as exc:  # hash mismatch, missing files, bad pickle
                    raise NoModel(f"model {version} cannot be served: {exc}") from exc
            return self._loaded[1]
