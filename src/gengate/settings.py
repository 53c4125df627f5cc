"""The one typed settings object, built once from `gengate.yaml` plus `GENGATE_*` environment variables.

Owns: the configuration schema, embedded defaults, `env:NAME` secret references and error messages that name
the offending key and its line. Must not: read configuration anywhere else, or log secret values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gengate.apps.tool_settings import ToolLimits, ToolSpec
from gengate.config_types import EnvStr, Secret, StrictModel
from gengate.errors import ConfigError
from gengate.rag.chunk import ChunkingSettings
from gengate.rag.index import RetrievalSettings


class _Model(StrictModel):
    """A configuration section of this module."""


class ServerSettings(_Model):
    """Listening sockets and request limits."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # When set, the admin API is served only on this port (and not on `port`).
    admin_port: int | None = Field(None, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_messages: int = Field(1000, ge=1)
    workers: int = Field(1, ge=1)


class StorageSettings(_Model):
    """Where state lives: SQLite in `data_dir` by default, PostgreSQL by URL."""

    data_dir: str = "data"
    url: EnvStr | None = None
    log_batch_size: int = Field(200, ge=1)
    log_flush_seconds: float = Field(0.5, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return v


class RedisSettings(_Model):
    """Shared limits and budget reservations across gateway processes."""

    url: EnvStr | None = None
    prefix: str = "gengate"


class ClaimMapping(_Model):
    """Where the Principal's fields come from in a JWT's claims (dotted paths)."""

    subject: str = "sub"
    team: str = "team"
    groups: str = "groups"
    roles: str = "roles"
    default_team: str | None = None


class JwtIssuer(_Model):
    """One trusted token issuer. The algorithm is pinned: tokens with any other `alg` are rejected."""

    issuer: str
    audience: str | list[str] | None = None
    algorithm: Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
    secret: Secret | None = None
    jwks_url: str | None = None
    jwks_file: str | None = None
    leeway_seconds: float = Field(30, ge=0)
    jwks_cache_seconds: float = Field(300, gt=0)
    claims: ClaimMapping = ClaimMapping()

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        sources = [s for s in (self.secret, self.jwks_url, self.jwks_file) if s]
        if len(sources) != 1:
            raise ValueError("exactly one of secret, jwks_url, jwks_file is required")
        if self.algorithm.startswith("HS") != (self.secret is not None):
            raise ValueError(f"{self.algorithm} needs {'a secret' if self.algorithm.startswith('HS') else 'a JWKS'}")
        return self


class AuthSettings(_Model):
    """Who may call: virtual keys (always), JWT issuers, admin credentials."""

    admin_keys: list[Secret] = []
    admin_roles: list[str] = ["admin"]
    jwt_issuers: list[JwtIssuer] = []
    key_cache_seconds: float = Field(5.0, ge=0)


class ProviderSettings(_Model):
    """An upstream: an OpenAI-compatible server (OpenAI, Azure, Ollama, vLLM, llama.cpp) or a built-in one."""

    type: Literal["openai", "azure", "offline", "local"] = "openai"
    base_url: str | None = None
    api_key: Secret | None = None
    api_version: str | None = None  # Azure
    headers: dict[str, EnvStr] = {}
    timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_connections: int = Field(256, ge=1)
    # `local`: the model server is started by gengate (llama-cpp-python); these tune it.
    model_path: str | None = None
    context_size: int = Field(2048, ge=128)
    threads: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderSettings:
        if self.type in ("openai", "azure") and not self.base_url:
            raise ValueError(f"base_url is required for type {self.type}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        return self


class Deployment(_Model):
    """One place an alias can be served: a provider and the model name it knows."""

    provider: str
    model: str
    weight: float = Field(1.0, gt=0)
    priority: int = 0
    timeout: float | None = Field(None, gt=0)
    max_retries: int | None = Field(None, ge=0)


class ModelAlias(_Model):
    """A name clients use; routed to ordered deployments (lowest priority first, weights within a tier)."""

    deployments: list[Deployment] = Field(min_length=1)
    kind: Literal["chat", "embedding"] = "chat"


class RoutingSettings(_Model):
    """Retries, backoff and the circuit breaker, for every deployment unless it overrides them."""

    max_retries: int = Field(1, ge=0)
    backoff_seconds: float = Field(0.2, ge=0)
    backoff_max_seconds: float = Field(2.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_seconds: float = Field(30.0, gt=0)


class Price(_Model):
    """USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)


class Budget(_Model):
    """A spending cap for a period."""

    usd: float = Field(ge=0)
    period: Literal["day", "month", "total"] = "month"


class Limits(_Model):
    """What a team or key may do. Unset fields mean no limit of that kind at that level."""

    models: list[str] | None = None
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    budget: Budget | None = None


class PolicySettings(_Model):
    """Policy defaults applying to every team, and per-team overrides."""

    default: Limits = Limits()
    teams: dict[str, Limits] = {}
    # When a budget applies and the request sets no max_tokens, gengate sets this cap so the reservation is
    # a true upper bound and concurrent requests cannot overspend.
    default_max_output_tokens: int = Field(1024, ge=1)


class OtelSettings(_Model):
    """OpenTelemetry export (GenAI semantic conventions); needs the `otel` extra."""

    endpoint: str | None = None
    service_name: str = "gengate"


class TelemetrySettings(_Model):
    """Logs, metrics, traces."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    metrics: bool = True
    otel: OtelSettings = OtelSettings()


class GuardRule(_Model):
    """One check: a detector (with its options), which of its findings count, and what to do about them."""

    detector: str
    options: dict[str, Any] = {}
    action: Literal["block", "redact", "flag", "escalate"] = "flag"
    labels: list[str] | None = None  # label prefixes that count (None: all of the detector's)
    min_score: float = Field(0.0, ge=0, le=1)
    template: str | None = None  # for block (default: the profile's block template)
    redaction: Literal["mask", "pseudonymise"] = "mask"


class JudgeSettings(_Model):
    """A second-opinion model for `escalate` rules: one extra call per escalated text, opt-in."""

    model: str  # a model alias from `models`
    timeout: float = Field(10.0, gt=0)
    max_tokens: int = Field(8, ge=1)


class GuardProfile(_Model):
    """The checks an app or team runs at each stage."""

    input: list[GuardRule] = []
    context: list[GuardRule] = []
    output: list[GuardRule] = []
    block_template: str = "blocked"
    on_error: Literal["open", "closed"] = "closed"  # a detector that fails: allow (open) or block (closed)
    # A stage's scan of a long text (see guard.offload_chars) that takes longer than this follows on_error.
    scan_timeout: float = Field(2.0, gt=0, le=60)
    restore_pseudonyms: bool = True  # put pseudonymised values back into the answer for the same caller
    judge: JudgeSettings | None = None
    # Template-only answers: the model only fills this template's slots (structured output, validated by
    # gengate); users never see free model text.
    answer_template: str | None = None

    @model_validator(mode="after")
    def _judge_for_escalation(self) -> GuardProfile:
        escalates = any(r.action == "escalate" for r in (*self.input, *self.context, *self.output))
        if escalates and self.judge is None:
            raise ValueError("rules with action 'escalate' need a judge (judge.model)")
        return self


class TemplateSlot(_Model):
    """A typed value a template may show."""

    type: Literal["str", "int", "enum"] = "str"
    max_length: int = Field(200, ge=1)
    pattern: str | None = None
    values: list[str] | None = None  # for enum


class ResponseTemplate(_Model):
    """An approved response. `{{ name }}` placeholders are filled from validated slots, never evaluated."""

    text: str
    slots: dict[str, TemplateSlot] = {}


class GuardSettings(_Model):
    """Guard profiles, their assignment to teams, approved templates, streaming hold-back."""

    profiles: dict[str, GuardProfile] = {}
    teams: dict[str, str] = {}  # team -> profile name
    default_profile: str | None = None
    templates: dict[str, ResponseTemplate] = {
        "blocked": ResponseTemplate(
            text="I'm sorry, but I can't help with that request. (reference: {{ request_id }})",
            slots={"request_id": TemplateSlot(max_length=64, pattern=r"[A-Za-z0-9._:-]+")},
        )
    }
    hold_back_chars: int = Field(160, ge=0, le=100_000)
    hash_key: Secret | None = None  # keys the hashes recorded for findings; else a key kept in storage.data_dir
    max_scan_chars: int = Field(200_000, ge=1000)
    # Texts at least this long are scanned in a worker thread, so the event loop keeps serving other requests
    # while detectors work (shorter ones cost less than the hand-off).
    offload_chars: int = Field(2048, ge=0)

    @model_validator(mode="after")
    def _references_exist(self) -> GuardSettings:
        for name in [self.default_profile, *self.teams.values()]:
            if name is not None and name not in self.profiles:
                raise ValueError(f"unknown guard profile {name!r}")
        for pname, profile in self.profiles.items():
            names = [profile.block_template] + [r.template for s in (profile.input, profile.context, profile.output)
                                               for r in s if r.template]  # fmt: skip
            if profile.answer_template:
                names.append(profile.answer_template)
            for t in names:
                if t not in self.templates:
                    raise ValueError(f"profiles.{pname}: unknown template {t!r}")
        return self


class RagSettings(_Model):
    """Knowledge bases: embeddings, where vectors live, ingestion limits."""

    # auto: all-MiniLM-L6-v2 when its package is installed, otherwise lexical retrieval only (with a warning)
    embeddings: Literal["auto", "minilm", "none"] = "auto"
    vector_backend: Literal["memory", "pgvector"] = "memory"
    max_file_mb: float = Field(50, gt=0)
    # Documents the injection classifier flags at ingestion: quarantined (kept out of retrieval) or only marked.
    on_suspicious: Literal["quarantine", "mark"] = "quarantine"
    chunking: ChunkingSettings = ChunkingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()


class AppSettings(_Model):
    """A RAG app: exposed as model `app/<name>` and at `POST /v1/apps/<name>/ask`."""

    description: str = ""
    system_prompt: str = (
        "You answer questions for the user using only the numbered sources below. Cite the sources you use "
        "like [1]. If the sources do not contain the answer, say that you do not know."
    )
    knowledge_bases: list[str] = []
    top_k: int = Field(5, ge=1, le=50)
    model: str = "offline"  # a chat model alias; with the offline provider the app answers extractively
    guard_profile: str | None = None  # default: the caller's team profile
    no_answer: str = "I could not find anything about that in the documents you have access to."
    answer_sentences: int = Field(3, ge=1, le=10)
    # The offline answerer's relevance check with MiniLM: answers paraphrases, but costs ~0.5 s per answer here.
    extractive_encoder: bool = True
    where: dict[str, str] = {}  # a fixed metadata filter on every retrieval
    retrieval: RetrievalSettings | None = None  # overrides rag.retrieval
    tools: list[ToolSpec] = []
    tool_limits: ToolLimits = ToolLimits()
    # What is kept of each question and answer for the outer loop (feedback, traces to datasets, drift):
    # `redacted` masks PII and secrets first; `none` keeps only the outcome, cost and latency.
    payloads: Literal["full", "redacted", "none"] = "redacted"
    retention_days: float | None = Field(90, gt=0)  # answers and their feedback older than this are deleted

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[ToolSpec]) -> list[ToolSpec]:
        names = [t.name for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate tool names: {', '.join(duplicates)}")
        return tools


_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


class FeedbackSettings(_Model):
    """`POST /v1/feedback` and the browser snippet."""

    rate_per_minute: int = Field(600, ge=1)  # events one caller may send per minute
    max_comment_chars: int = Field(2000, ge=0, le=100_000)
    accept_days: float = Field(30, gt=0)  # feedback on answers older than this is refused
    snippet: bool = True  # serve /v1/feedback.js
    score_min: float = 1  # the range a `score` event's value must fall in
    score_max: float = 5
    # Pages on these origins may POST /v1/feedback from the browser (CORS); none by default.
    cors_origins: list[str] = []

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] exactly (no '*', no path)")
        return [origin.lower() for origin in v]

    @model_validator(mode="after")
    def _score_range(self) -> FeedbackSettings:
        if self.score_min >= self.score_max:
            raise ValueError("score_min must be below score_max")
        return self


class ExperimentSettings(_Model):
    """A/B experiments on apps."""

    refresh_seconds: float = Field(5.0, gt=0)  # how often a gateway process re-reads experiments from the store
    guardrail_check_seconds: float = Field(60.0, gt=0)  # how often running experiments' guardrails are checked


class DriftRerun(_Model):
    """The evaluation `gengate drift watch` runs when an app's knowledge changed since its last run."""

    dataset: str
    variant: str = "default"
    trials: int = Field(1, ge=1, le=100)
    overrides: dict[str, Any] = {}  # passed as `--set key=value`


class DriftSettings(_Model):
    """Drift monitoring: question drift against an evaluation dataset, knowledge changes since the last run."""

    enabled: bool = True  # the gateway's background task refreshing the drift gauges
    interval_seconds: float = Field(3600, gt=0)
    window_days: float = Field(7, gt=0)  # recent production questions: this far back
    min_recent: int = Field(30, ge=2)  # fewer recent questions: no verdict
    datasets: dict[str, str] = {}  # app -> the evaluation dataset its questions are compared with
    rerun_on_knowledge_change: dict[str, DriftRerun] = {}  # app -> evaluation to run (opt-in)


class UiSettings(_Model):
    """The browser dashboard under `/ui` (see docs/dashboard.md)."""

    enabled: bool = True
    # Secure cookies are sent over HTTPS only: turn off only for plain-HTTP localhost.
    cookie_secure: bool = True
    session_hours: float = Field(8.0, gt=0, le=24 * 30)


_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Settings(_Model):
    """Everything gengate is configured with. Built once; passed down; never re-read."""

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelAlias] = {}
    routing: RoutingSettings = RoutingSettings()
    pricing: dict[str, Price] = {}
    policy: PolicySettings = PolicySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    guard: GuardSettings = GuardSettings()
    rag: RagSettings = RagSettings()
    apps: dict[str, AppSettings] = {}
    feedback: FeedbackSettings = FeedbackSettings()
    experiments: ExperimentSettings = ExperimentSettings()
    drift: DriftSettings = DriftSettings()
    ui: UiSettings = UiSettings()

    @model_validator(mode="after")
    def _references_exist(self) -> Settings:
        for name, app in self.apps.items():
            if not _APP_NAME.match(name):
                raise ValueError(f"apps.{name}: app names are letters, digits, '_', '.', '-' (at most 64)")
            target = self.models.get(app.model)
            if target is None or target.kind != "chat":
                raise ValueError(f"apps.{name}.model: {app.model!r} is not a chat model in `models`")
            if app.guard_profile is not None and app.guard_profile not in self.guard.profiles:
                raise ValueError(f"apps.{name}.guard_profile: unknown guard profile {app.guard_profile!r}")
        for app_name in [*self.drift.datasets, *self.drift.rerun_on_knowledge_change]:
            if app_name not in self.apps:
                raise ValueError(f"drift: unknown app {app_name!r}")
        for pname, profile in self.guard.profiles.items():
            if profile.judge is not None and profile.judge.model not in self.models:
                raise ValueError(f"guard.profiles.{pname}.judge.model: unknown model {profile.judge.model!r}")
        for alias, spec in self.models.items():
            for i, dep in enumerate(spec.deployments):
                if dep.provider not in self.providers:
                    raise ValueError(f"models.{alias}.deployments.{i}.provider: unknown provider {dep.provider!r}")
        return self

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the store (SQLite in data_dir unless a URL is set)."""
        url = self.storage.url
        if url is None:
            return f"sqlite+aiosqlite:///{Path(self.storage.data_dir) / 'gengate.db'}"
        if url.startswith("sqlite://") and "+aiosqlite" not in url:
            return url.replace("sqlite://", "sqlite+aiosqlite://", 1)
        if url.startswith(("postgresql://", "postgres://")):
            return "postgresql+asyncpg://" + url.split("://", 1)[1]
        return url


def embedded_defaults() -> dict[str, Any]:
    """The configuration used with no file at all: offline providers only, no network needed."""
    return {
        "providers": {"offline": {"type": "offline"}, "local": {"type": "local"}},
        "models": {
            "offline": {"deployments": [{"provider": "offline", "model": "offline"}]},
            "offline-embed": {
                "kind": "embedding",
                "deployments": [{"provider": "offline", "model": "hash-256"}],
            },
            "local": {"deployments": [{"provider": "local", "model": "SmolLM2-135M-Instruct"}]},
        },
        "pricing": {
            "offline": {"input": 0, "output": 0},
            "hash-256": {"input": 0, "output": 0},
            "SmolLM2-135M-Instruct": {"input": 0, "output": 0},
            "local": {"input": 0, "output": 0},
            "offline-embed": {"input": 0, "output": 0},
        },
    }


@dataclass(frozen=True)
class _Located:
    """Line numbers of every key path in a YAML document."""

    lines: dict[tuple[str, ...], int]

    def line_of(self, loc: tuple[str | int, ...]) -> int | None:
        path = tuple(str(p) for p in loc)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def _index_lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out[sub] = key.start_mark.line + 1
            _index_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, str(i))
            out[sub] = item.start_mark.line + 1
            _index_lines(item, sub, out)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`GENGATE_SERVER__PORT=9000` → {"server": {"port": "9000"}} (section and key split on `__`)."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith("GENGATE_") or "__" not in name:
            continue
        parts = [p.lower() for p in name[len("GENGATE_") :].split("__")]
        cursor = out
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: ValidationError, where: str, located: _Located | None) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = located.line_of(loc) if located else None
        at = f"{where}:{line}" if line else where
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{at}: {key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the Settings from a YAML file (or embedded defaults when there is none) and the environment.

    With no file, the embedded defaults (offline providers) apply. A file replaces the providers, models and
    pricing sections wholesale when it has them, so what it says is what runs.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get("GENGATE_CONFIG"):
        path = environ["GENGATE_CONFIG"]
    data: dict[str, Any] = embedded_defaults()
    located: _Located | None = None
    where = "embedded defaults"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        try:
            node = yaml.compose(text)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}:1: the top level must be a mapping of sections")
        lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _index_lines(node, (), lines)
        located = _Located(lines)
        for section in ("providers", "models", "pricing"):
            if section in loaded:
                data.pop(section, None)
        data = _merge(data, loaded)
    data = _merge(data, _env_overrides(environ))
    try:
        return Settings.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where, located)) from None
