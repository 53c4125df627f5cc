"""The guard pipeline: built once from configuration, run at the input, context and output stages.

Each profile is an ordered list of rules per stage; each rule is a detector plus the action its findings
trigger. `explain()` prints the pipeline exactly as built (`gengate guard explain`).

Owns: building detectors, running them with the fail-open/closed policy, turning findings into one decision,
redaction and pseudonymisation. Must not: do I/O (judge calls for `escalate` rules are the caller's).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gengate.guard.base import Detector, Finding, ScanRequest, Stage
from gengate.guard.registry import DetectorRegistry
from gengate.guard.templates import check_template, render
from gengate.settings import GuardProfile, GuardRule, GuardSettings

log = logging.getLogger("gengate.guard")


@dataclass(frozen=True, slots=True)
class RuleFinding:
    """A finding together with the rule (and so the action) it fell under."""

    finding: Finding
    rule: GuardRule
    index: int  # position of the rule in its stage

    @property
    def action(self) -> str:
        """block | redact | flag | escalate."""
        return self.rule.action


@dataclass
class StageResult:
    """What a stage decided for one text."""

    stage: Stage
    text: str  # the text to use from here on (redacted when a redact rule fired)
    findings: list[RuleFinding] = field(default_factory=list)
    blocked_by: RuleFinding | None = None
    escalations: list[RuleFinding] = field(default_factory=list)  # for the judge (the caller does the I/O)
    errors: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        """True when the text must not go on (the caller answers with the template)."""
        return self.blocked_by is not None

    @property
    def reason(self) -> str | None:
        """Machine-readable reason code of the block, e.g. `input.pii.email`."""
        if self.blocked_by is None:
            return None
        return f"{self.stage.value}.{self.blocked_by.finding.label}"


class Pseudonyms:
    """Per-request mapping of sensitive values to stable placeholders, and back."""

    def __init__(self) -> None:
        self._forward: dict[str, str] = {}
        self._counts: dict[str, int] = {}

    def token(self, label: str, value: str) -> str:
        """The placeholder for a value (the same value always gets the same placeholder)."""
        if value not in self._forward:
            kind = label.rsplit(".", 1)[-1].upper()
            self._counts[kind] = self._counts.get(kind, 0) + 1
            self._forward[value] = f"<{kind}_{self._counts[kind]}>"
        return self._forward[value]

    def restore(self, text: str) -> str:
        """Put the original values back (for the same caller's answer)."""
        for value, placeholder in self._forward.items():
            text = text.replace(placeholder, value)
        return text


def _merge_spans(findings: Sequence[RuleFinding]) -> list[RuleFinding]:
    spans = sorted((f for f in findings if not f.finding.whole_text), key=lambda f: (f.finding.start, -f.finding.end))
    merged: list[RuleFinding] = []
    for item in spans:
        if merged and item.finding.start < merged[-1].finding.end:
            continue  # overlapping: the earlier, longer span wins
        merged.append(item)
    return merged


class GuardPipeline:
    """One profile's rules, with their detectors built."""

    def __init__(
        self, name: str, profile: GuardProfile, detectors: Mapping[Stage, list[tuple[GuardRule, Detector]]],
        *, hash_key: bytes, max_scan_chars: int,
    ) -> None:  # fmt: skip
        self.name = name
        self.profile = profile
        self._stages = dict(detectors)
        self._hash_key = hash_key
        self._max_chars = max_scan_chars
        self.detector_versions = {d.name: str(d.version) for rules in self._stages.values() for _, d in rules}

    def has(self, stage: Stage) -> bool:
        """Whether any rule runs at this stage."""
        return bool(self._stages.get(stage))

    def fingerprint(self, value: str) -> str:
        """A keyed hash of a sensitive value: lets records correlate findings without storing the value."""
        return hmac.new(self._hash_key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]

    def scan(
        self, stage: Stage, text: str, *, system_prompt: str = "", canaries: Sequence[str] = (),
        pseudonyms: Pseudonyms | None = None,
    ) -> StageResult:  # fmt: skip
        """Run the stage's rules over one text and decide."""
        result = StageResult(stage=stage, text=text)
        rules = self._stages.get(stage, [])
        if not rules or not text:
            return result
        scanned = text[: self._max_chars]
        request = ScanRequest(text=scanned, stage=stage, system_prompt=system_prompt, canaries=tuple(canaries))
        redactions: list[RuleFinding] = []
        for index, (rule, detector) in enumerate(rules):
            try:
                found = detector.scan(request)
            except Exception as exc:  # a detector must never take the gateway down
                log.warning("detector %s failed at %s: %s", detector.name, stage.value, type(exc).__name__)
                result.errors.append(f"{detector.name}: {type(exc).__name__}")
                if self.profile.on_error == "closed":
                    failure = Finding(f"error.{detector.name}", 0, 0, 1.0, detector.name, "detector failed")
                    result.blocked_by = result.blocked_by or RuleFinding(
                        failure, GuardRule(detector=detector.name, action="block"), index
                    )
                continue
            for finding in found:
                if finding.score < rule.min_score:
                    continue
                if rule.labels is not None and not any(finding.label.startswith(p) for p in rule.labels):
                    continue
                item = RuleFinding(finding, rule, index)
                result.findings.append(item)
                if rule.action == "block" and result.blocked_by is None:
                    result.blocked_by = item
                elif rule.action == "redact":
                    redactions.append(item)
                elif rule.action == "escalate":
                    result.escalations.append(item)
        if redactions and not result.blocked:
            result.text = self._redact(text, redactions, pseudonyms)
        return result

    def timed_out(self, stage: Stage, text: str) -> StageResult:
        """The result of a scan that took longer than the profile's `scan_timeout`: the fail-open/closed policy."""
        result = StageResult(stage=stage, text=text, errors=[f"scan: timed out after {self.profile.scan_timeout} s"])
        if self.profile.on_error == "closed":
            failure = Finding("error.timeout", 0, 0, 1.0, "guard", "the stage's checks timed out")
            result.blocked_by = RuleFinding(failure, GuardRule(detector="guard", action="block"), 0)
        return result

    def _redact(self, text: str, items: Sequence[RuleFinding], pseudonyms: Pseudonyms | None) -> str:
        out: list[str] = []
        cursor = 0
        for item in _merge_spans(items):
            f = item.finding
            out.append(text[cursor : f.start])
            if item.rule.redaction == "pseudonymise" and pseudonyms is not None:
                out.append(pseudonyms.token(f.label, text[f.start : f.end]))
            else:
                out.append(f"[{f.label.upper().replace('.', '_')}]")
            cursor = f.end
        out.append(text[cursor:])
        return "".join(out)

    def explain(self) -> str:
        """The pipeline as built, one line per rule."""
        lines = [f"profile {self.name}: block template {self.profile.block_template!r}, "
                 f"on detector error: fail {self.profile.on_error}"]  # fmt: skip
        for stage in Stage:
            rules = self._stages.get(stage, [])
            lines.append(f"  {stage.value}:" + ("" if rules else " (no checks)"))
            for i, (rule, detector) in enumerate(rules, 1):
                labels = f" labels={','.join(rule.labels)}" if rule.labels else ""
                extra = f" redaction={rule.redaction}" if rule.action == "redact" else ""
                lines.append(
                    f"    {i}. {detector.name} v{detector.version} → {rule.action}"
                    f"{labels}{extra} min_score={rule.min_score:g}"
                )
        return "\n".join(lines)


class Guard:
    """Every configured profile, built once at start-up."""

    def __init__(
        self, settings: GuardSettings, registry: DetectorRegistry | None = None, *, hash_key: bytes | None = None
    ) -> None:
        self.settings = settings
        registry = registry or DetectorRegistry()
        for name, template in settings.templates.items():
            check_template(name, template)
        # Configured key, else the caller's (the gateway keeps one in its data directory), else one per process.
        key = settings.hash_key.get_secret_value().encode() if settings.hash_key else hash_key
        key = key or secrets.token_bytes(32)
        cache: dict[str, Detector] = {}
        self.pipelines: dict[str, GuardPipeline] = {}
        for pname, profile in settings.profiles.items():
            stages: dict[Stage, list[tuple[GuardRule, Detector]]] = {}
            for stage in Stage:
                built = []
                for i, rule in enumerate(getattr(profile, stage.value)):
                    ident = f"{rule.detector}:{sorted(rule.options.items())!r}"
                    if ident not in cache:
                        try:
                            cache[ident] = registry.build(rule.detector, rule.options)
                        except ValueError as exc:
                            raise ValueError(f"guard.profiles.{pname}.{stage.value}.{i}: {exc}") from None
                    built.append((rule, cache[ident]))
                stages[stage] = built
            self.pipelines[pname] = GuardPipeline(
                pname, profile, stages, hash_key=key, max_scan_chars=settings.max_scan_chars
            )

    def for_team(self, team: str) -> GuardPipeline | None:
        """The team's profile, else the default profile, else none."""
        name = self.settings.teams.get(team, self.settings.default_profile)
        return self.pipelines.get(name) if name else None

    def block_text(self, pipeline: GuardPipeline, result: StageResult, request_id: str) -> str:
        """The approved response for a blocked request."""
        rule_template = result.blocked_by.rule.template if result.blocked_by is not None else None
        name = rule_template or pipeline.profile.block_template
        template = self.settings.templates[name]
        values = {"request_id": request_id} if "request_id" in template.slots else {}
        return render(name, template, values)

    def explain(self) -> str:
        """Every profile, as built."""
        if not self.pipelines:
            return "no guard profiles configured"
        assigned = [f"team {t} → {p}" for t, p in sorted(self.settings.teams.items())]
        head = [f"default profile: {self.settings.default_profile or '(none)'}", *assigned]
        return "\n".join(head + [p.explain() for p in self.pipelines.values()])
