"""A/B experiments on apps: the spec, its validation against the configuration, and the lifecycle.

An experiment splits an app's traffic between variants. A variant is an overlay on the app's configuration with the
same vocabulary as evaluation variants (`gengate.eval.runner.APP_KEYS`: system_prompt, model, top_k,
knowledge_bases, retrieval, guard_profile, answer_sentences, …, and the request parameters temperature, top_p,
max_tokens). The variant named `control` — or else the first — is the control. Each unit (the caller's subject by
default) is assigned to one variant for the life of the experiment (`sequential.assign`).

Lifecycle: `draft` → `running` ⇄ `paused` → `stopped`; `running`/`paused`/`stopped` → `shipped` (a winner is
marked and keeps being served over the configuration until the configuration changes); `shipped` → `stopped`.

Owns: the spec models, parsing of the CLI's compact forms, overlay validation with messages that name the variant
and key, status transitions and the YAML a shipped winner turns into. Must not: touch the store, the gateway or
compute statistics (see `experiment_analysis`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gengate.config_types import StrictModel
from gengate.errors import ConfigError, Conflict
from gengate.settings import AppSettings, Settings

Status = Literal["draft", "running", "paused", "stopped", "shipped"]
Action = Literal["start", "pause", "stop", "ship"]
PrimaryMetric = Literal["thumbs_up_rate", "copy_rate", "mean_score"]
GuardrailMetric = Literal["cost_per_answer", "latency_ms", "block_rate", "no_answer_rate"]

RATE_METRICS = frozenset({"thumbs_up_rate", "copy_rate", "block_rate", "no_answer_rate"})
REQUEST_TYPES: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "max_tokens": (int, 1, 1_000_000),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LIMIT = re.compile(r"^\+?\s*(\d+(?:\.\d+)?)\s*(%|pt|pts|points?)$")

# Which actions each status allows, and the status they lead to.
_TRANSITIONS: dict[str, dict[str, Status]] = {
    "draft": {"start": "running", "stop": "stopped"},
    "running": {"pause": "paused", "stop": "stopped", "ship": "shipped"},
    "paused": {"start": "running", "stop": "stopped", "ship": "shipped"},
    "stopped": {"ship": "shipped"},
    "shipped": {"stop": "stopped"},
}


def app_keys() -> frozenset[str]:
    """The app-setting overlay keys (the evaluation runner's vocabulary)."""
    # Imported here, not at the top: the runner imports the gateway, which builds the experiment service.
    from gengate.eval.runner import APP_KEYS

    return frozenset(APP_KEYS)


def request_keys() -> frozenset[str]:
    """The request-parameter overlay keys (applied to each request's body)."""
    from gengate.eval.runner import REQUEST_KEYS

    return frozenset(REQUEST_KEYS)


class VariantSpec(StrictModel):
    """One arm: a name, a share of the traffic and an overlay on the app's configuration."""

    name: str
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    overrides: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"variant name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
        return name


class Guardrail(StrictModel):
    """A metric that must not get worse than a bound: relative (`+20%`) or, for rates, in points (`+2pt`)."""

    metric: GuardrailMetric
    max_increase: float = Field(ge=0, allow_inf_nan=False)  # a fraction: 0.2 is +20% or, in points, +20 points
    unit: Literal["relative", "points"] = "relative"
    action: Literal["flag", "stop"] = "flag"

    @model_validator(mode="before")
    @classmethod
    def _parse_limit(cls, data: Any) -> Any:
        """`max_increase: "+20%"` → 0.2 relative; `"+2pt"` (or `2 points`) → 0.02 in points."""
        if isinstance(data, Mapping) and isinstance(data.get("max_increase"), str):
            match = _LIMIT.match(data["max_increase"].strip().lower())
            if match is None:
                raise ValueError(f"max_increase {data['max_increase']!r}: write it like '+20%' or '+2pt'")
            unit = "relative" if match.group(2) == "%" else "points"
            data = {**data, "max_increase": float(match.group(1)) / 100, "unit": unit}
        return data

    @model_validator(mode="after")
    def _points_for_rates(self) -> Guardrail:
        if self.unit == "points" and self.metric not in RATE_METRICS:
            raise ValueError(f"{self.metric}: points apply to rates only; write the bound in % (e.g. '+20%')")
        return self

    def label(self) -> str:
        """The bound as people write it: `+20%` or `+2pt`."""
        return f"+{self.max_increase * 100:g}{'%' if self.unit == 'relative' else 'pt'}"


DEFAULT_GUARDRAILS = (
    Guardrail(metric="cost_per_answer", max_increase=0.2),
    Guardrail(metric="latency_ms", max_increase=0.3),
    Guardrail(metric="block_rate", max_increase=0.02, unit="points"),
)


class ExperimentSpec(StrictModel):
    """What an experiment compares, on which app, by which metric, and what must not get worse."""

    name: str
    app: str
    variants: list[VariantSpec] = Field(min_length=2)
    metric: PrimaryMetric = "thumbs_up_rate"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    guardrails: list[Guardrail] = list(DEFAULT_GUARDRAILS)
    unit: Literal["subject", "team"] = "subject"
    min_units: int = Field(100, ge=1)  # units per arm before any evidence counts (the normal approximation)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"experiment name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
        return name

    @model_validator(mode="after")
    def _distinct(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variants: duplicate names {', '.join(duplicates)}")
        metrics = [g.metric for g in self.guardrails]
        if len(set(metrics)) != len(metrics):
            raise ValueError("guardrails: one bound per metric")
        return self

    @property
    def control(self) -> VariantSpec:
        """The variant named `control`, or else the first."""
        return next((v for v in self.variants if v.name == "control"), self.variants[0])

    @property
    def treatments(self) -> list[VariantSpec]:
        """Every variant but the control."""
        control = self.control.name
        return [v for v in self.variants if v.name != control]

    def variant(self, name: str) -> VariantSpec:
        """The variant with this name (ConfigError naming the known ones otherwise)."""
        for v in self.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.variants)
        raise ConfigError(f"experiment {self.name!r} has no variant {name!r} (variants: {known})")

    def weights(self) -> dict[str, float]:
        """Variant name → weight, for `sequential.assign`."""
        return {v.name: v.weight for v in self.variants}


def _format(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{key}: {e['msg'].removeprefix('Value error, ')}")
    return f"{where}:\n  " + "\n  ".join(lines)


def spec_from_data(data: Any, where: str = "experiment spec") -> ExperimentSpec:
    """Validate a spec from parsed YAML/JSON; errors name each key (ConfigError)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping (name, app, variants, …)")
    try:
        return ExperimentSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format(exc, f"invalid {where}")) from None


def load_spec_text(text: str, where: str) -> dict[str, Any]:
    """Parse a YAML (or JSON) spec file's text into a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping (name, app, variants, …)")
    return data


def parse_variant(text: str) -> dict[str, Any]:
    """`terse:top_k=1,answer_sentences=1` (or just `control`) → a variant mapping; values are YAML scalars."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    # Split on commas that start a new `key=`, so a system prompt may itself contain commas.
    for item in re.split(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)", rest) if rest.strip() else []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--variant {text!r}: overrides are key=value, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            overrides[key.strip()] = raw
    return {"name": name.strip(), "overrides": overrides}


def parse_guardrail(text: str) -> dict[str, Any]:
    """`cost_per_answer:+20%:stop` (action optional, `flag` by default) → a guardrail mapping."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"--guardrail {text!r}: write METRIC:BOUND[:ACTION], e.g. block_rate:+2pt:stop")
    data: dict[str, Any] = {"metric": parts[0], "max_increase": parts[1]}
    if len(parts) == 3:
        data["action"] = parts[2]
    return data


# -- overlays -----------------------------------------------------------------------------------------------------


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(app-setting overrides, request-parameter overrides)."""
    keys = request_keys()
    return {k: v for k, v in overrides.items() if k not in keys}, {k: v for k, v in overrides.items() if k in keys}


def _check_request(variant: str, key: str, value: Any) -> None:
    kind, low, high = REQUEST_TYPES[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or isinstance(value, int))
    if not ok or not low <= value <= high:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"variant {variant!r}: {key} must be {what} from {low:g} to {high:g}, got {value!r}")


def overlay_app(settings: Settings, base: AppSettings, variant: str, overrides: Mapping[str, Any]) -> AppSettings:
    """`base` with a variant's app-setting overrides, validated with messages that name the variant and key."""
    from gengate.eval.runner import Variant

    Variant(variant, dict(overrides)).check()
    app_part, request_part = split_overrides(overrides)
    for key, value in request_part.items():
        _check_request(variant, key, value)
    if not app_part:
        return base
    data = base.model_dump()
    data.update(app_part)
    try:
        app = AppSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, f"variant {variant!r}")) from None
    target = settings.models.get(app.model)
    if target is None or target.kind != "chat":
        chat = ", ".join(sorted(n for n, m in settings.models.items() if m.kind == "chat")) or "none"
        raise ConfigError(f"variant {variant!r}: model {app.model!r} is not a chat model in `models` (chat: {chat})")
    if app.guard_profile is not None and app.guard_profile not in settings.guard.profiles:
        known = ", ".join(sorted(settings.guard.profiles)) or "none"
        raise ConfigError(f"variant {variant!r}: unknown guard profile {app.guard_profile!r} (profiles: {known})")
    return app


def check_spec(spec: ExperimentSpec, settings: Settings) -> dict[str, AppSettings]:
    """Validate the spec against the configuration; return each variant's app settings."""
    base = settings.apps.get(spec.app)
    if base is None:
        known = ", ".join(sorted(settings.apps)) or "none"
        raise ConfigError(f"experiment {spec.name!r}: no app {spec.app!r} in the configuration (apps: {known})")
    return {v.name: overlay_app(settings, base, v.name, v.overrides) for v in spec.variants}


def knowledge_bases_of(spec: ExperimentSpec) -> set[str]:
    """Every knowledge base a variant's overlay names (to check they exist)."""
    out: set[str] = set()
    for v in spec.variants:
        kbs = v.overrides.get("knowledge_bases")
        if isinstance(kbs, list):
            out.update(str(k) for k in kbs)
    return out


# -- lifecycle ----------------------------------------------------------------------------------------------------


def next_status(name: str, current: str, action: str) -> Status:
    """The status an action leads to (Conflict saying what is allowed otherwise)."""
    allowed = _TRANSITIONS.get(current, {})
    if action not in allowed:
        can = ", ".join(sorted(allowed)) or "nothing"
        raise Conflict(f"experiment {name!r} is {current}: cannot {action} it (allowed: {can})")
    return allowed[action]


def shipped_baseline(base: AppSettings, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration values a shipped overlay replaces: it is served only while they are still in force."""
    app_part, _ = split_overrides(overrides)
    data = base.model_dump(mode="json")
    return {key: data.get(key) for key in sorted(app_part)}


def baseline_holds(base: AppSettings, baseline: Mapping[str, Any]) -> bool:
    """True while the configuration still has the values recorded when the winner shipped."""
    data = base.model_dump(mode="json")
    return all(data.get(key) == value for key, value in baseline.items())


def shipped_yaml(spec: ExperimentSpec, variant: str) -> str:
    """The `apps:` snippet that makes a shipped variant the configuration (request parameters are noted apart)."""
    app_part, request_part = split_overrides(spec.variant(variant).overrides)
    if not app_part and not request_part:
        return f"# {variant!r} has no overrides: the configuration of app {spec.app!r} already is this variant\n"
    text = yaml.safe_dump({"apps": {spec.app: app_part}}, sort_keys=True, allow_unicode=True) if app_part else ""
    if request_part:
        params = ", ".join(f"{k}={v}" for k, v in sorted(request_part.items()))
        text += (
            f"# request parameters ({params}) have no app setting: gengate keeps applying them while the "
            f"experiment is shipped; send them from the client to keep them after `experiment stop`\n"
        )
    return text


def describe_variants(variants: Sequence[VariantSpec]) -> list[str]:
    """One line per variant: `name (weight 50): key=value, …`."""
    lines = []
    for v in variants:
        overrides = ", ".join(f"{k}={v.overrides[k]!r}" for k in sorted(v.overrides)) or "no overrides"
        lines.append(f"{v.name} (weight {v.weight:g}): {overrides}")
    return lines
