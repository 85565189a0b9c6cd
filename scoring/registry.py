"""Versioned model artifacts on disk and the `current` pointer the consumer polls.

Layout: `<data_dir>/models/<version>/{bundle.joblib, manifest.json}` and `<data_dir>/models/
current` (one line: the version). Every file is written to a temporary name and renamed, so a
reader never sees half a bundle or half a pointer. Bundles are pickles: load only from a
data_dir you trust (it is the project's own output directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from engage.settings import Settings
from features.aggregates import FeatureParams
from features.vector import feature_hash
from scoring.drift import DriftReference, reference_of
from scoring.model import ModelBundle

BUNDLE_FILE = "bundle.joblib"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "current"


class FeatureHashMismatch(RuntimeError):
    """The model was trained on other feature definitions than the running code computes."""

    def __init__(self, version: str, model_hash: str, code_hash: str) -> None:
        super().__init__(
            f"model {version} was trained on feature hash {model_hash}, but the running code "
            f"computes feature hash {code_hash}: retrain (`engage train`) before serving it"
        )
        self.version, self.model_hash, self.code_hash = version, model_hash, code_hash


class ModelNotFound(LookupError):
    pass


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def manifest_domains(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The domains a registered model scores (`ModelBundle.domains`; empty: every domain).

    Manifests written before domains were recorded have no `domains`: the domain is inferred
    from the training source, MovieLens CSVs meaning "movielens". A model trained on a topic or
    a snapshot may have seen either domain, and the models registered until then were all
    trained on MovieLens, so it is taken as "movielens" too: a funnel user then gets "no model
    for this domain" rather than a MovieLens model's meaningless probability. Retrain (the
    manifest then records the domains) to serve another domain."""
    if "domains" in manifest:
        return tuple(manifest["domains"] or ())
    return ("movielens",)


class ModelRegistry:
    def __init__(self, settings: Settings, params: FeatureParams | None = None) -> None:
        self.root = settings.data_dir / "models"
        self.compiled_trees = settings.model_compiled_trees
        self.code_hash = feature_hash(params or settings.feature_params)

    def _new_version(self, bundle: ModelBundle) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        base = f"v{stamp}-{bundle.feature_hash[:8]}"
        version, n = base, 1
        while (self.root / version).exists():
            n += 1
            version = f"{base}.{n}"
        return version

    def register(self, bundle: ModelBundle, make_current: bool = True) -> str:
        """Store `bundle` under a new version (set on the bundle) and optionally point to it."""
        self.root.mkdir(parents=True, exist_ok=True)
        bundle.version = self._new_version(bundle)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        joblib.dump(bundle, staging / BUNDLE_FILE)
        manifest = {
            "version": bundle.version,
            "feature_hash": bundle.feature_hash,
            "created_at": datetime.now(UTC).isoformat(),
            "models": {
                role: {"name": m.name, "kind": m.kind, "features": m.features,
                       "calibration": m.calibrator.method}
                for role, m in (("interaction", bundle.interaction),
                                ("propensity", bundle.propensity))
            },
            "metrics": bundle.metrics,
            "log_range": bundle.log_range,
            "domains": list(bundle.domains),
        }  # fmt: skip
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        os.rename(staging, self.root / bundle.version)  # the version appears complete or not
        if make_current:
            self.set_current(bundle.version)
        return bundle.version

    def set_current(self, version: str) -> None:
        if not (self.root / version / BUNDLE_FILE).exists():
            raise ModelNotFound(f"no model version {version!r} under {self.root}")
        _atomic_write(self.root / CURRENT_FILE, f"{version}\n".encode())

    def current_version(self) -> str | None:
        """One small file read: cheap enough to poll every few seconds."""
        try:
            return (self.root / CURRENT_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.root / version / MANIFEST_FILE
        if not path.exists():
            raise ModelNotFound(f"no model version {version!r} under {self.root}")
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest

    def drift_reference(self, version: str) -> DriftReference | None:
        """The training distribution `engage train` stored with `version` (its manifest's
        `metrics["drift_reference"]`, scoring.drift), read without unpickling the bundle;
        None for a model registered before references were stored."""
        return reference_of(self.manifest(version).get("metrics"))

    def load(self, version: str | None = None) -> ModelBundle:
        """The bundle (default: current); refuses one trained on other feature definitions."""
        version = version or self.current_version()
        if version is None:
            raise ModelNotFound(f"no current model under {self.root}: run `engage train`")
        manifest = self.manifest(version)
        declared = manifest["feature_hash"]
        if declared != self.code_hash:  # checked before unpickling anything
            raise FeatureHashMismatch(version, declared, self.code_hash)
        bundle: ModelBundle = joblib.load(self.root / version / BUNDLE_FILE)
        if bundle.feature_hash != self.code_hash:
            raise FeatureHashMismatch(version, bundle.feature_hash, self.code_hash)
        bundle.domains = manifest_domains(manifest)
        for model in (bundle.interaction, bundle.propensity):
            model.compiled = self.compiled_trees
        return bundle

    def list(self) -> list[dict[str, Any]]:
        """Manifests of all versions, oldest first, with `current` marked."""
        if not self.root.exists():
            return []
        current = self.current_version()
        out = []
        for path in sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            if (path / MANIFEST_FILE).exists():
                manifest = json.loads((path / MANIFEST_FILE).read_text())
                manifest["current"] = path.name == current
                out.append(manifest)
        return out
