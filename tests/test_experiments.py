"""A/B experiments end to end: simulated users call a real gateway over HTTP, each stays in one variant (also after
a restart), sends thumbs through `POST /v1/feedback`, and `experiment status` names the better variant; a variant
that breaks a guardrail is stopped on its own; pausing and stopping route everyone to the control; bad specs get
clear CLI errors."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from conftest import RunningGateway, base_config, merge
from gengate.cli.main import main
from gengate.errors import ConfigError
from gengate.outer.experiment_analysis import UnitTotals, analyse
from gengate.outer.experiment_service import load_analysis, looks
from gengate.outer.experiments import check_spec, parse_variant, shipped_yaml, spec_from_data
from gengate.rag.sources import scan_source
from gengate.settings import Settings, load_settings
from gengate.store.db import Store, open_store
from gengate.store.experiments import ExperimentStore
from gengate.store.feedback import FeedbackStore
from rag_corpus import JWT_AUTH, token, write_corpus

QUESTIONS = ("How many days of annual leave do I get?", "Is unused annual leave carried over to the next year?")
CONFIG = {
    **JWT_AUTH,
    "rag": {"embeddings": "none"},
    "apps": {"help": {"knowledge_bases": ["handbook"], "top_k": 4, "extractive_encoder": False}},
    "guard": {
        "profiles": {
            # Blocks every question about leave: a variant on this profile has a far higher block rate.
            "strict": {
                "input": [{"detector": "competitors", "options": {"competitors": ["leave"]}, "action": "block"}]
            },
        }
    },
    "experiments": {"refresh_seconds": 0.1, "guardrail_check_seconds": 0.2},
}


def eventually(check: Callable[[], Any], what: str, deadline: float = 30.0) -> Any:
    """Poll until `check` returns something truthy (the gateway's background tasks run on their own clock)."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Lab:
    """A gateway with the handbook knowledge base, its config file for the CLI, and simulated users."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "gengate.yaml"
        self.config.write_text(yaml.safe_dump(merge(base_config(None, tmp_path / "data"), CONFIG)))
        self.settings = load_settings(self.config, environ={})
        self.gw = RunningGateway(self.settings).start()
        self.http = httpx.Client(base_url=self.gw.url, timeout=30)
        self.tokens: dict[str, str] = {}
        folder = write_corpus(tmp_path / "corpus")

        async def ingest() -> None:
            await self.gw.gateway.kbs.create("handbook")
            await self.gw.gateway.kbs.ingest("handbook", scan_source(folder), source=str(folder))

        self.gw.run(ingest())

    def restart(self) -> None:
        """Stop the gateway process's server and start a new one on the same store."""
        self.gw.stop()
        self.gw = RunningGateway(self.settings).start()

    def close(self) -> None:
        self.http.close()
        self.gw.stop()

    def token(self, user: str) -> str:
        if user not in self.tokens:
            self.tokens[user] = token(user, ["staff"])
        return self.tokens[user]

    def _auth(self, user: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(user)}"}

    def ask(self, user: str, question: str = QUESTIONS[0]) -> dict[str, Any]:
        resp = self.http.post("/v1/apps/help/ask", json={"question": question}, headers=self._auth(user))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def thumbs(self, user: str, response_id: str, up: bool) -> None:
        event = {"response_id": response_id, "event_id": f"{response_id}-thumbs", "kind": "thumbs",
                 "value": "up" if up else "down"}  # fmt: skip
        resp = self.http.post("/v1/feedback", json=event, headers=self._auth(user))
        assert resp.status_code == 200, resp.text

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["experiment", *args, "--config", str(self.config)])

    def store(self) -> ExperimentStore:
        return ExperimentStore(self.gw.gateway.store.engine)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    running = Lab(tmp_path)
    yield running
    running.close()


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One gateway for the tests that only create drafts that fail validation."""
    running = Lab(tmp_path_factory.mktemp("experiments"))
    yield running
    running.close()


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _wait_until_served(lab: Lab, experiment: str | None, user: str = "probe") -> None:
    eventually(lambda: lab.ask(user).get("experiment") == experiment, f"experiment {experiment} to be served")


USERS = [f"user-{i:03d}" for i in range(120)]
THUMBS_UP = {"control": 0.25, "terse": 0.9}


def test_simulated_users_are_sticky_and_the_better_variant_wins(lab: Lab, sdk: Any, tmp_path: Path) -> None:
    _ok(lab.cli("create", "terse-answers", "--app", "help", "--variant", "control",
                "--variant", "terse:answer_sentences=1,top_k=1", "--weights", "50,50", "--alpha", "0.05",
                "--min-units", "30", "--guardrail", "block_rate:+2pt:stop"))  # fmt: skip
    _ok(lab.cli("start", "terse-answers"))
    _wait_until_served(lab, "terse-answers")

    rng = random.Random(7)
    seen: dict[str, str] = {}
    for user in USERS:
        for question in QUESTIONS:
            answer = lab.ask(user, question)
            assert answer["experiment"] == "terse-answers" and answer["outcome"] == "answered"
            variant = answer["variant"]
            assert seen.setdefault(user, variant) == variant, f"{user} switched variants"
            if variant == "terse":  # the overlay is what was served: one passage retrieved, one sentence
                assert answer["retrieval"]["retrieved"] == 1
            lab.thumbs(user, answer["id"], rng.random() < THUMBS_UP[variant])
    assert set(seen.values()) == {"control", "terse"}
    counts = {v: sum(1 for s in seen.values() if s == v) for v in THUMBS_UP}
    assert min(counts.values()) >= 40  # a 50/50 split of 120 users

    # After a restart the same users get the same variants, on the OpenAI API too (in the `gengate` extension).
    lab.restart()
    for user in USERS[:20]:
        assert lab.ask(user)["variant"] == seen[user]
        completion = sdk(lab.gw, lab.token(user)).chat.completions.create(
            model="app/help", messages=[{"role": "user", "content": QUESTIONS[1]}]
        )
        assert completion.model_extra["gengate"]["variant"] == seen[user]

    def settled() -> Any:
        record = lab.gw.run(lab.store().get("terse-answers"))
        analysis = lab.gw.run(load_analysis(lab.store(), record))
        rated = sum(v.rated for v in analysis.variants.values())
        return analysis if rated == len(USERS) * len(QUESTIONS) else None

    analysis = eventually(settled, "every thumbs to be stored")
    # The per-user totals agree with the feedback store's per-variant totals.
    stats = lab.gw.run(FeedbackStore(lab.gw.gateway.store.engine).variant_stats("terse-answers"))
    for name, v in analysis.variants.items():
        assert (v.thumbs_up, v.rated, v.units) == (stats[name].thumbs_up, stats[name].thumbs_up +
                                                   stats[name].thumbs_down, stats[name].users)  # fmt: skip

    status = _ok(lab.cli("status", "terse-answers"))
    assert "winner: terse" in status and "next: gengate experiment ship terse-answers terse" in status
    comparison = analysis.comparisons["terse"]
    assert comparison.decision == "b_better" and comparison.p_value <= 0.05 and analysis.winner == "terse"

    report = tmp_path / "report.html"
    data = tmp_path / "report.json"
    _ok(lab.cli("report", "terse-answers", "--html", str(report), "--json", str(data), "--buckets", "5"))
    html = report.read_text()
    assert html.count("<svg") >= 3 and "Winner: terse" in html and "<script" not in html
    assert "confidence sequence of Δ thumbs_up_rate over time" in html
    exported = json.loads(data.read_text())
    assert exported["analysis"]["winner"] == "terse" and len(exported["analysis"]["history"]) == 5

    with lab.gw.admin() as admin:
        listed = admin.get("/admin/experiments").json()["data"]
        assert [(e["name"], e["status"]) for e in listed] == [("terse-answers", "running")]
        detail = admin.get("/admin/experiments/terse-answers").json()
        assert detail["analysis"]["winner"] == "terse"
        # Pausing through the admin API: everyone gets the control, untagged (paused traffic does not count).
        assert admin.post("/admin/experiments/terse-answers/pause").json()["status"] == "paused"
    terse_user = next(u for u in USERS if seen[u] == "terse")
    paused = lab.ask(terse_user)
    assert "experiment" not in paused and paused["retrieval"]["retrieved"] > 1

    _ok(lab.cli("start", "terse-answers"))  # resumed: the same users are back in their variants
    _wait_until_served(lab, "terse-answers", terse_user)
    assert lab.ask(terse_user)["variant"] == "terse"

    shipped = _ok(lab.cli("ship", "terse-answers", "terse"))
    assert yaml.safe_load(shipped.split("restart the gateways:\n", 1)[1]) == {
        "apps": {"help": {"answer_sentences": 1, "top_k": 1}}
    }
    # Shipped: every user gets the winner's overlay, untagged, until gengate.yaml changes.
    control_user = next(u for u in USERS if seen[u] == "control")
    eventually(lambda: "experiment" not in lab.ask(control_user), "the shipped winner to be served")
    assert lab.ask(control_user)["retrieval"]["retrieved"] == 1

    _ok(lab.cli("stop", "terse-answers"))  # stop serving the shipped winner: the configuration serves everyone
    eventually(lambda: lab.ask(control_user)["retrieval"]["retrieved"] > 1, "the configuration to be served again")
    listed_text = _ok(lab.cli("list"))
    assert "terse-answers" in listed_text and "stopped" in listed_text and "terse" in listed_text


def test_variant_breaching_a_guardrail_is_stopped_automatically(lab: Lab) -> None:
    spec = {
        "name": "strict-guard", "app": "help", "min_units": 10,
        "variants": [{"name": "control"}, {"name": "strict", "overrides": {"guard_profile": "strict"}}],
        "guardrails": [{"metric": "block_rate", "max_increase": "+2pt", "action": "stop"},
                       {"metric": "latency_ms", "max_increase": "+1000%"}],
    }  # fmt: skip
    path = lab.config.parent / "strict.yaml"
    path.write_text(yaml.safe_dump(spec))
    _ok(lab.cli("create", "--file", str(path), "--start"))
    _wait_until_served(lab, "strict-guard")

    variants: dict[str, str] = {}
    for user in USERS[:60]:
        answer = lab.ask(user)
        if answer.get("experiment") is None:
            break  # the guardrail stopped the experiment while traffic was still coming in
        variants[user] = answer["variant"]
        assert answer["outcome"] == ("blocked" if answer["variant"] == "strict" else "answered")

    record = eventually(
        lambda: (r := lab.gw.run(lab.store().get("strict-guard"))).status == "stopped" and r, "the guardrail to stop it"
    )
    assert record.note.startswith("stopped by guardrail: block_rate of strict 1 vs control 0")
    # Stopped: everyone, including the users who were in the blocking variant, gets the app's configuration.
    strict_user = next(u for u, v in variants.items() if v == "strict")
    eventually(lambda: lab.ask(strict_user).get("experiment") is None, "the experiment to be no longer served")
    answer = lab.ask(strict_user)
    assert answer["outcome"] == "answered" and "variant" not in answer
    assert "BREACHED" in _ok(lab.cli("status", "strict-guard"))


SPEC_ERRORS = [
    (["--app", "nope", "--variant", "control", "--variant", "b:top_k=1"], "no app 'nope' in the configuration"),
    (["--app", "help", "--variant", "control", "--variant", "b:colour=red"], "unknown keys colour"),
    (["--app", "help", "--variant", "control", "--variant", "b:model=gpt-9"],
     "model 'gpt-9' is not a chat model in `models`"),
    (["--app", "help", "--variant", "control", "--variant", "b:top_k=0"], "variant 'b':\n  top_k: Input should be"),
    (["--app", "help", "--variant", "control", "--variant", "b:temperature=9"], "temperature must be a number"),
    (["--app", "help", "--variant", "control", "--variant", "b", "--weights", "0,1"],
     "variants.0.weight: Input should be greater than 0"),
    (["--app", "help", "--variant", "control", "--variant", "b", "--weights", "1"], "--weights has 1 values"),
    (["--app", "help", "--variant", "control"], "variants: List should have at least 2 items"),
    (["--app", "help", "--variant", "a", "--variant", "a"], "variants: duplicate names a"),
    (["--app", "help", "--variant", "a", "--variant", "b:guard_profile=lax"], "unknown guard profile 'lax'"),
    (["--app", "help", "--variant", "a", "--variant", "b", "--guardrail", "latency_ms:+2pt"],
     "points apply to rates only"),
    (["--app", "help", "--variant", "a", "--variant", "b:knowledge_bases=[wiki]"], "unknown knowledge bases wiki"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), SPEC_ERRORS)
def test_bad_spec_gets_a_clear_cli_error(shared_lab: Lab, args: list[str], message: str) -> None:
    result = shared_lab.cli("create", "bad", *args)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_lifecycle_errors_are_clear(lab: Lab) -> None:
    _ok(lab.cli("create", "one", "--app", "help", "--variant", "control", "--variant", "b:top_k=1"))
    _ok(lab.cli("create", "two", "--app", "help", "--variant", "control", "--variant", "b:top_k=2"))
    cases = [
        (("create", "one", "--app", "help", "--variant", "a", "--variant", "b"), "exists already"),
        (("pause", "one"), "experiment 'one' is draft: cannot pause it (allowed: start, stop)"),
        (("status", "missing"), "no experiment named 'missing'"),
        (("ship", "one", "nobody"), "cannot ship it"),
    ]
    for args, message in cases:
        result = lab.cli(*args)
        assert result.exit_code == 1 and message in result.output, result.output
    _ok(lab.cli("start", "one"))
    result = lab.cli("start", "two")
    assert result.exit_code == 1 and "already has a live experiment (one)" in result.output
    result = lab.cli("ship", "one", "nobody")
    assert result.exit_code == 1 and "has no variant 'nobody'" in result.output
    with lab.gw.admin() as admin:
        resp = admin.post("/admin/experiments/two/start")
        assert resp.status_code == 409 and "already has a live experiment" in resp.json()["error"]["message"]
        assert admin.post("/admin/experiments/one/launch").status_code == 404
        assert admin.get("/admin/experiments/nope").status_code == 404


def test_bad_spec_file_names_the_key_and_the_line(shared_lab: Lab) -> None:
    lab = shared_lab
    path = lab.config.parent / "spec.yaml"
    path.write_text("name: x\napp: help\nmetric: happiness\nvariants: [{name: a}, {name: b, weight: -1}]\n")
    result = lab.cli("create", "--file", str(path))
    assert result.exit_code == 1
    assert "metric: Input should be 'thumbs_up_rate', 'copy_rate' or 'mean_score'" in result.output
    assert "variants.1.weight: Input should be greater than 0" in result.output
    path.write_text("name: x\napp: [unclosed\n")
    result = lab.cli("create", "--file", str(path))
    assert result.exit_code == 1 and "spec.yaml:3: not valid YAML" in result.output


def test_documented_spec_and_settings_are_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "outer-loop.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    spec = spec_from_data(yaml.safe_load(next(b for b in blocks if b.startswith("name: terse-answers"))))
    config = {**yaml.safe_load(next(b for b in blocks if b.startswith("experiments:"))),
              "apps": {"hr": {"knowledge_bases": ["handbook"]}}}  # fmt: skip
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    assert check_spec(spec, settings)["terse"].answer_sentences == 1
    assert [g.label() for g in spec.guardrails] == ["+20%", "+30%", "+2pt"] and spec.control.name == "control"
    assert settings.experiments.guardrail_check_seconds == 60


def test_variant_overrides_parse_yaml_values_and_keep_commas_in_prompts() -> None:
    parsed = parse_variant("brief:system_prompt=Be brief, cite sources, no lists.,top_k=2,temperature=0.2")
    assert parsed == {"name": "brief", "overrides": {"system_prompt": "Be brief, cite sources, no lists.",
                                                     "top_k": 2, "temperature": 0.2}}  # fmt: skip
    spec = spec_from_data({"name": "e", "app": "hr", "variants": [{"name": "a"}, parsed]})
    text = shipped_yaml(spec, "brief")
    assert yaml.safe_load(text) == {"apps": {"hr": {"system_prompt": "Be brief, cite sources, no lists.", "top_k": 2}}}
    assert "temperature=0.2" in text  # a request parameter has no app setting: the YAML says so
    with pytest.raises(ConfigError, match=r"variants\.1\.name: variant name 'b c'"):
        spec_from_data({"name": "e", "app": "hr", "variants": [{"name": "a"}, parse_variant("b c:top_k=1")]})


def test_a_variant_that_blocks_everyone_breaches_a_block_rate_guardrail_without_spread() -> None:
    """Every user at 1.0 against every user at 0.0 has no spread at all; the rate's variance floor still decides."""
    spec = spec_from_data(
        {
            "name": "e",
            "app": "hr",
            "min_units": 20,
            "variants": [{"name": "a"}, {"name": "b"}],
            "guardrails": [{"metric": "block_rate", "max_increase": "+2pt", "action": "stop"}],
        }
    )
    rows = [UnitTotals("a", f"u{i}", responses=2, answered=2) for i in range(40)]
    rows += [UnitTotals("b", f"v{i}", responses=2, blocked=2) for i in range(40)]
    analysis = analyse(spec, [(1.0, rows)])
    assert [(g.variant, g.guardrail.metric, g.breached) for g in analysis.guardrails] == [("b", "block_rate", True)]
    assert analysis.winner is None and analysis.decision.startswith("continue")


def test_looks_are_daily_then_now_or_even_buckets() -> None:
    day = 86_400.0
    assert looks(0.0, 2.5 * day) == [day, 2 * day, 2.5 * day]
    assert looks(0.0, 10.0, buckets=4) == [2.5, 5.0, 7.5, 10.0]
    assert looks(5.0, 5.0) == [5.0]
    many = looks(0.0, 400 * day)
    assert len(many) == 60 and many[-1] == 400 * day and many == sorted(many)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'gengate.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    return Settings.model_validate({"storage": {"url": url}}).database_url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


def _answer(request_id: str, ts: float, subject: str, variant: str, outcome: str = "answered") -> dict[str, Any]:
    return {"request_id": request_id, "ts": ts, "app": "hr", "subject": subject, "experiment": "e", "variant": variant,
            "outcome": outcome, "payload": "none", "cost_usd": 0.001, "latency_ms": 10.0}  # fmt: skip


def _event(request_id: str, event_id: str, ts: float, kind: str, value: float | None = None) -> dict[str, Any]:
    return {"request_id": request_id, "event_id": event_id, "ts": ts, "subject": "x", "app": "hr", "experiment": "e",
            "variant": None, "kind": kind, "value": value}  # fmt: skip


async def test_unit_totals_count_each_answer_once_with_its_latest_thumbs(store: Store) -> None:
    await store.write_requests([], answers=[
        _answer("r1", 10.0, "ann", "a"), _answer("r2", 20.0, "ann", "a"), _answer("r3", 30.0, "bob", "b", "blocked"),
        {**_answer("r4", 40.0, "cid", "b"), "experiment": "other"},
    ])  # fmt: skip
    await FeedbackStore(store.engine).add_events([
        _event("r1", "e1", 11.0, "thumbs", 1.0), _event("r1", "e2", 25.0, "thumbs", 0.0),  # changed her mind
        _event("r1", "e3", 12.0, "copy"), _event("r1", "e4", 13.0, "copy"), _event("r2", "e5", 21.0, "score", 4.0),
        _event("r4", "e6", 41.0, "thumbs", 1.0),
    ])  # fmt: skip
    experiments = ExperimentStore(store.engine)
    now = {(t.variant, t.unit): t for t in await experiments.unit_totals("e")}
    assert now == {
        ("a", "ann"): UnitTotals("a", "ann", responses=2, answered=2, cost_usd=0.002, latency_ms=20.0, rated=1,
                                 thumbs_up=0, copied=1, scored=1, score_sum=4.0),
        ("b", "bob"): UnitTotals("b", "bob", responses=1, blocked=1, cost_usd=0.001, latency_ms=10.0),
    }  # fmt: skip
    before = {(t.variant, t.unit): t for t in await experiments.unit_totals("e", until=15.0)}
    assert before[("a", "ann")].responses == 1 and (before[("a", "ann")].rated, before[("a", "ann")].thumbs_up) == (
        1,
        1,
    )
    assert await experiments.span("e") == (10.0, 30.0)


async def test_status_changes_are_conditional(store: Store) -> None:
    experiments = ExperimentStore(store.engine)
    spec = spec_from_data({"name": "e", "app": "hr", "variants": [{"name": "a"}, {"name": "b"}]})
    await experiments.create(spec, now=1.0)
    assert await experiments.set_status("e", "running", expected="draft", now=2.0)
    assert not await experiments.set_status("e", "paused", expected="draft", now=3.0)  # someone else moved it
    assert await experiments.set_status("e", "stopped", expected="running", now=4.0, note="by guardrail")
    assert await experiments.set_status("e", "shipped", expected="stopped", now=5.0, winner="b",
                                        shipped_over={"top_k": 5})  # fmt: skip
    record = await experiments.get("e")
    assert (record.status, record.started_at, record.stopped_at, record.winner) == ("shipped", 2.0, 4.0, "b")
    assert record.shipped_over == {"top_k": 5} and record.spec == spec and record.note == "by guardrail"
    assert [r.name for r in await experiments.list(statuses=["shipped"], app="hr")] == ["e"]
    assert await experiments.list(statuses=["running"]) == []
