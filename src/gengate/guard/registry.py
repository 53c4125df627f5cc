"""The detector registry: an instance (not a global) mapping names to factories.

Built-ins register through the same path as third-party plugins (the `gengate.detectors` entry-point group):
a factory takes the rule's `options` mapping and returns a Detector.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from gengate.guard.base import Detector

Factory = Callable[[Mapping[str, Any]], Detector]

# name -> "module:Class"; imported only when a profile uses the detector.
BUILTINS = {
    "injection": "gengate.guard.detectors.injection:InjectionDetector",
    "pii": "gengate.guard.detectors.pii:PiiDetector",
    "secrets": "gengate.guard.detectors.secrets:SecretsDetector",
    "competitors": "gengate.guard.detectors.competitors:CompetitorDetector",
    "leak": "gengate.guard.detectors.leak:LeakDetector",
    "commitments": "gengate.guard.detectors.commitments:CommitmentDetector",
    "topics": "gengate.guard.detectors.topics:TopicDetector",
}


def _from_path(path: str) -> Factory:
    module_name, _, attr = path.partition(":")

    def build(options: Mapping[str, Any]) -> Detector:
        cls = getattr(importlib.import_module(module_name), attr)
        from_config = getattr(cls, "from_config", None)
        detector: Detector = from_config(options) if from_config is not None else cls(**options)
        return detector

    return build


class DetectorRegistry:
    """Names → detector factories."""

    def __init__(self, *, load_plugins: bool = True) -> None:
        self._factories: dict[str, Factory] = {name: _from_path(path) for name, path in BUILTINS.items()}
        if load_plugins:
            for ep in entry_points(group="gengate.detectors"):
                self._factories.setdefault(ep.name, _from_path(ep.value))

    def register(self, name: str, factory: Factory) -> None:
        """Add (or replace) a detector factory."""
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Every detector name known."""
        return sorted(self._factories)

    def build(self, name: str, options: Mapping[str, Any]) -> Detector:
        """A detector instance; unknown names and bad options raise ValueError naming them."""
        factory = self._factories.get(name)
        if factory is None:
            raise ValueError(f"unknown detector {name!r} (known: {', '.join(self.names())})")
        try:
            return factory(options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"detector {name!r}: {exc}") from None
