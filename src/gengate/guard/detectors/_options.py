"""Option checking shared by the built-in detectors' `from_config` constructors."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def reject_unknown(detector: str, options: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Raise ValueError naming any option the detector does not know, and the ones it does."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{detector}: unknown option(s) {unknown}; expected some of {sorted(allowed)}")
