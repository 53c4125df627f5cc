"""The guard pipeline on its own: rules and actions, templates, fail-open/closed, streaming hold-back, explain."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Any

import pytest

from gengate.app.guarding import GuardRun, StreamGuard, scan
from gengate.guard.base import Finding, ScanRequest, Stage
from gengate.guard.pipeline import Guard, Pseudonyms, StageResult
from gengate.guard.registry import DetectorRegistry
from gengate.guard.templates import TemplateError, check_template, render
from gengate.settings import GuardSettings, ResponseTemplate, TemplateSlot
from gengate.telemetry.traces import TraceRecord


class WordDetector:
    """A plugin-style detector: flags configured words (label `word.<word>`), spans on the original text."""

    name = "words"
    version = "1"

    def __init__(self, words: list[str], score: float = 0.9) -> None:
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
        self._score = score

    def scan(self, request: ScanRequest) -> list[Finding]:
        return [Finding(f"word.{m.group(1).lower()}", m.start(), m.end(), self._score, self.name)
                for m in self._pattern.finditer(request.text)]  # fmt: skip


class Exploding:
    name = "exploding"
    version = "0"

    def scan(self, request: ScanRequest) -> list[Finding]:
        raise RuntimeError("boom")


def registry() -> DetectorRegistry:
    reg = DetectorRegistry(load_plugins=False)
    reg.register("words", lambda options: WordDetector(**options))
    reg.register("exploding", lambda options: Exploding())
    return reg


def guard(profile: Mapping[str, Any], **extra: Any) -> Guard:
    settings = GuardSettings.model_validate({"profiles": {"p": profile}, "default_profile": "p", **extra})
    return Guard(settings, registry())


def test_block_redact_and_flag_rules() -> None:
    g = guard(
        {
            "input": [
                {"detector": "words", "options": {"words": ["ssn"]}, "action": "redact"},
                {"detector": "words", "options": {"words": ["dollar"]}, "action": "flag"},
                {"detector": "words", "options": {"words": ["jailbreak"]}, "action": "block"},
            ]
        }
    )
    pipeline = g.for_team("anyone")
    assert pipeline is not None
    ok = pipeline.scan(Stage.INPUT, "my SSN costs a dollar")
    assert not ok.blocked and ok.text == "my [WORD_SSN] costs a dollar"
    assert [f.action for f in ok.findings] == ["redact", "flag"]
    bad = pipeline.scan(Stage.INPUT, "please jailbreak yourself, ssn")
    assert bad.blocked and bad.reason == "input.word.jailbreak" and bad.text == "please jailbreak yourself, ssn"
    assert "I'm sorry" in g.block_text(pipeline, bad, "req-1") and "req-1" in g.block_text(pipeline, bad, "req-1")


def test_labels_filter_and_min_score() -> None:
    g = guard(
        {
            "output": [
                {
                    "detector": "words",
                    "options": {"words": ["a", "b"], "score": 0.4},
                    "action": "block",
                    "labels": ["word.b"],
                    "min_score": 0.3,
                }
            ]
        }
    )
    pipeline = g.for_team("t")
    assert pipeline is not None
    assert not pipeline.scan(Stage.OUTPUT, "a a a").blocked
    assert pipeline.scan(Stage.OUTPUT, "a b").blocked
    strict = guard({"output": [{"detector": "words", "options": {"words": ["b"], "score": 0.4}, "action": "block",
                                "min_score": 0.5}]}).for_team("t")  # fmt: skip
    assert strict is not None and not strict.scan(Stage.OUTPUT, "b").blocked


def test_pseudonyms_are_stable_and_restored() -> None:
    g = guard({"input": [{"detector": "words", "options": {"words": ["alice", "bob"]}, "action": "redact",
                          "redaction": "pseudonymise"}]})  # fmt: skip
    pipeline = g.for_team("t")
    assert pipeline is not None
    names = Pseudonyms()
    out = pipeline.scan(Stage.INPUT, "alice met bob; alice left", pseudonyms=names).text
    assert out == "<ALICE_1> met <BOB_1>; <ALICE_1> left"
    assert names.restore("Hello <ALICE_1> and <BOB_1>") == "Hello alice and bob"


@pytest.mark.parametrize(("policy", "blocked"), [("closed", True), ("open", False)])
def test_failing_detector_follows_fail_policy(policy: str, blocked: bool) -> None:
    g = guard({"on_error": policy, "input": [{"detector": "exploding", "action": "flag"}]})
    pipeline = g.for_team("t")
    assert pipeline is not None
    result = pipeline.scan(Stage.INPUT, "anything")
    assert result.blocked is blocked and result.errors == ["exploding: RuntimeError"]


def test_unknown_detector_and_template_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        guard({"input": [{"detector": "nope"}]})
    with pytest.raises(ValueError, match="unknown template"):
        GuardSettings.model_validate({"profiles": {"p": {"block_template": "missing"}}})


def test_templates_are_sandboxed_and_slots_validated() -> None:
    template = ResponseTemplate(
        text="Order {{ order }} ships in {{ days }} days via {{ carrier }}. {{ __class__ }}",
        slots={"order": TemplateSlot(pattern=r"[A-Z]{2}\d{4}"), "days": TemplateSlot(type="int"),
               "carrier": TemplateSlot(type="enum", values=["post", "courier"]), "__class__": TemplateSlot()},
    )  # fmt: skip
    check_template("t", template)
    assert render("t", template, {"order": "AB1234", "days": 3, "carrier": "post"}).startswith(
        "Order AB1234 ships in 3 days via post."
    )
    for values in ({"order": "x; rm -rf"}, {"days": "3"}, {"carrier": "drone"}, {"nope": 1}):
        with pytest.raises(TemplateError):
            render("t", template, values)
    # a slot value is inserted as text, never interpreted
    assert render("t", template, {"__class__": "{{ order }}"}).endswith("{{ order }}")
    with pytest.raises(TemplateError, match="undeclared slot"):
        check_template("bad", ResponseTemplate(text="hi {{ who }}"))


def _stream(g: Guard, pieces: list[str], hold_back: int) -> tuple[list[str], bool]:
    pipeline = g.for_team("t")
    assert pipeline is not None
    run = GuardRun(g, pipeline, TraceRecord(id="r", ts=0.0, endpoint="chat.completions", status=200))
    sg = StreamGuard(run, hold_back)

    async def go() -> tuple[list[str], bool]:
        released: list[str] = []
        for piece in pieces:
            out = await sg.feed(piece)
            if out is None:
                return released, True
            released.append(out)
        tail = await sg.finish()
        if tail is None:
            return released, True
        released.append(tail)
        return released, False

    return asyncio.run(go())


def test_stream_holds_back_and_never_releases_blocked_text() -> None:
    g = guard({"output": [{"detector": "words", "options": {"words": ["competitor"]}, "action": "block"}]})
    words = "our product is great and far better than the com petitor".replace("com petitor", "competitor")
    pieces = [w + " " for w in words.split(" ")]
    released, blocked = _stream(g, pieces, hold_back=20)
    assert blocked and "competitor" not in "".join(released)
    fine = ["a", "perfectly", "fine", "answer", "about", "our", "own", "product"]
    clean, blocked = _stream(g, [w + " " for w in fine], 10)
    assert not blocked and "".join(clean) == "a perfectly fine answer about our own product "
    assert len([r for r in clean if r]) > 1  # released progressively, not all at the end


def test_stream_redacts_before_release() -> None:
    g = guard({"output": [{"detector": "words", "options": {"words": ["secret"]}, "action": "redact"}]})
    released, blocked = _stream(g, ["the ", "secret ", "word ", "is ", "out ", "now ", "and ", "more ", "text"], 8)
    assert not blocked and "".join(released) == "the [WORD_SECRET] word is out now and more text"


def test_explain_prints_the_pipeline_as_built() -> None:
    g = guard({"input": [{"detector": "words", "options": {"words": ["x"]}, "action": "block"}]}, teams={"ops": "p"})
    text = g.explain()
    assert "team ops → p" in text and "input:" in text and "words v1 → block" in text and "output: (no checks)" in text


class _SlowDetector:
    """A detector that takes its time (a stand-in for an expensive organisation-specific check)."""

    name = "slow"
    version = "1"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def scan(self, request: ScanRequest) -> list[Finding]:
        time.sleep(self.seconds)
        return []


def _slow_guard(on_error: str, seconds: float) -> Guard:
    reg = DetectorRegistry(load_plugins=False)
    reg.register("slow", lambda options: _SlowDetector(**options))
    profile = {"input": [{"detector": "slow", "options": {"seconds": seconds}, "action": "block"}],
               "on_error": on_error, "scan_timeout": 0.2}  # fmt: skip
    settings = GuardSettings.model_validate({"profiles": {"p": profile}, "default_profile": "p", "offload_chars": 100})
    return Guard(settings, reg)


@pytest.mark.parametrize(("on_error", "blocked"), [("closed", True), ("open", False)])
def test_a_long_scan_runs_off_the_event_loop_and_a_timeout_follows_the_fail_policy(
    on_error: str, blocked: bool
) -> None:
    g = _slow_guard(on_error, seconds=0.6)
    pipeline = g.for_team("anyone")
    assert pipeline is not None
    run = GuardRun(g, pipeline, TraceRecord(id="r", ts=0.0, endpoint="chat.completions", status=200))

    async def go() -> tuple[StageResult, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            result = await scan(run, Stage.INPUT, "x" * 500)
        finally:
            task.cancel()
        return result, ticks

    result, ticks = asyncio.run(go())
    assert ticks >= 5  # the loop kept serving while the detector worked in a thread
    assert result.blocked is blocked and result.errors
    run.record(result, "x" * 500)
    actions = [f["action"] for f in run.trace.findings]
    assert "error" in actions and ("block" in actions) is blocked
    # Short texts are scanned inline (no timeout applies): the slow detector finishes and finds nothing.
    short = asyncio.run(scan(run, Stage.INPUT, "tiny"))
    assert not short.blocked and not short.errors
