"""Building blocks of typed configuration shared by `settings` and the models it embeds (tool settings).

Owns: `env:NAME` secret references and the strict, frozen base model. Must not: import other gengate modules
(settings imports its parts, so this sits below all of them).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationInfo

_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")


def resolve_env(value: object, info: ValidationInfo) -> object:
    """Turn `env:NAME` into the value of environment variable NAME (missing → a clear error)."""
    if isinstance(value, str):
        match = _ENV_REF.match(value)
        if match:
            name = match.group(1)
            environ = (info.context or {}).get("environ", os.environ)
            if name not in environ:
                raise ValueError(f"environment variable {name} is not set")
            return environ[name]
    return value


Secret = Annotated[SecretStr, BeforeValidator(resolve_env)]
EnvStr = Annotated[str, BeforeValidator(resolve_env)]


class StrictModel(BaseModel):
    """Configuration sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
