"""The inner loop end to end, as a team runs it in CI: import a dataset, run an app with repeated trials,
set a baseline, and gate. A change that really hurts (top-k of 1) fails the gate; the same configuration re-run
with another seed passes; the HTML report shows the metric that moved; an interrupted run resumes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from gengate.cli.main import main
from gengate.errors import ConfigError
from gengate.eval.datasets import parse_dataset
from gengate.eval.results import summarise
from gengate.eval.runner import Experiment, Journal, Variant
from gengate.rag.kb import KnowledgeBases
from gengate.rag.sources import scan_source
from gengate.settings import load_settings
from gengate.store.db import open_store
from gengate.store.knowledge import KnowledgeStore

TOPICS = ["parking", "canteen", "gym", "library", "printing", "wifi", "lockers", "bicycles", "badges", "mail",
          "plants", "coffee"]  # fmt: skip


def _corpus(folder: Path) -> Path:
    """Two documents per topic (rules and hours), so a complete answer needs both."""
    for i, topic in enumerate(TOPICS):
        for kind, fact in (
            ("rules", f"{topic} permit code is R{i:02d}X"),
            ("hours", f"{topic} opens at {7 + i % 5} am"),
        ):
            path = folder / f"{topic}-{kind}.md"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"---\naccess: {{groups: [staff]}}\n---\n# {topic.title()} {kind}\n\nThe {fact}.\n")
    return folder


def _dataset(path: Path) -> Path:
    rows = [
        {"id": f"q-{topic}", "question": f"What is the {topic} permit code and when does the {topic} open?",
         "required_facts": [f"R{i:02d}X", f"{7 + i % 5} am"], "gold_ids": [f"{topic}-rules.md", f"{topic}-hours.md"],
         "tags": ["facilities"], "identity": {"subject": "bob", "team": "staff", "groups": ["staff"]}}
        for i, topic in enumerate(TOPICS)
    ]  # fmt: skip
    rows.append({"id": "q-secret", "question": "What is the CEO salary?", "expected": {"outcome": "no_answer"},
                 "identity": {"subject": "bob", "groups": ["staff"]}, "tags": ["access"]})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config = tmp_path / "gengate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "telemetry": {"log_level": "WARNING"},
                "apps": {"facilities": {"knowledge_bases": ["facilities"], "top_k": 4, "answer_sentences": 3}},
            }
        )
    )
    settings = load_settings(config, environ={})

    async def load() -> None:
        store = await open_store(settings.database_url)
        try:
            kbs = KnowledgeBases(KnowledgeStore(store.engine), settings.rag)
            await kbs.create("facilities")
            await kbs.ingest("facilities", scan_source(_corpus(tmp_path / "docs")), source="docs")
        finally:
            await store.close()

    asyncio.run(load())
    return config


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)], catch_exceptions=False)


def _run(config: Path, *args: str) -> str:
    result = cli(config, "eval", "run", "facts", "--app", "facilities", "--trials", "2", *args)
    assert result.exit_code == 0, result.output
    return _run_id(result.output)


def _run_id(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("facts-"))
    return line.split(":", 1)[0]


def test_gate_fails_a_real_regression_and_passes_a_rerun(project: Path, tmp_path: Path) -> None:
    imported = cli(project, "dataset", "import", "facts", str(_dataset(tmp_path / "facts.jsonl")))
    assert imported.exit_code == 0, imported.output

    base = _run(project, "--seed", "1")
    assert cli(project, "eval", "baseline", "set", base).exit_code == 0

    rerun = _run(project, "--seed", "2")
    ok = cli(project, "eval", "gate", rerun)
    assert ok.exit_code == 0, ok.output

    worse = _run(project, "--variant", "top1", "--set", "top_k=1")
    junit = tmp_path / "gate.xml"
    failed = cli(project, "eval", "gate", worse, "--junit", str(junit))
    assert failed.exit_code == 1, failed.output
    assert "recall@5" in failed.output and "❌" in failed.output
    assert "<failure" in junit.read_text()

    report = (tmp_path / "data" / "evals" / f"{worse}.html").read_text()
    assert "recall@5" in report and "<svg" in report and "permit code and when does the" in report
    compared = cli(project, "eval", "compare", base, worse)
    assert compared.exit_code == 0 and Path(compared.output.split(": ", 1)[1].strip()).is_file()

    run = json.loads((tmp_path / "data" / "evals" / f"{base}.json").read_text())
    secret = [t for t in run["trials"] if t["case_id"] == "q-secret"]
    assert len(secret) == 2 and all(t["outcome"] == "no_answer" and t["passed"]["guard_outcome"] for t in secret)

    # Not a run (the baselines file), or a run file damaged on disk: a clear message, not a traceback.
    evals = tmp_path / "data" / "evals"
    (evals / "torn.json").write_text((evals / f"{base}.json").read_text()[:300])
    for name in ("baselines", "torn"):
        refused = cli(project, "eval", "gate", name)
        assert refused.exit_code == 1 and "is not a readable gengate run" in refused.output, refused.output


def test_an_interrupted_run_resumes_without_redoing_finished_trials(project: Path, tmp_path: Path) -> None:
    settings = load_settings(project, environ={})
    cases = parse_dataset(_dataset(tmp_path / "facts.jsonl")).cases
    journal = Journal(tmp_path / "run.jsonl")
    experiment = Experiment(settings, "facilities", "facts", 1, cases, Variant(), trials=2, metrics=["contains"])
    first = asyncio.run(experiment.run(journal, run_id="r1"))
    assert len(first.trials) == 2 * len(cases)
    lines = journal.path.read_text().splitlines()
    journal.path.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])  # 5 trials lost, one line torn
    second = asyncio.run(experiment.run(journal, run_id="ignored"))
    assert second.run_id == "r1" and len(second.trials) == 2 * len(cases)
    assert len(journal.path.read_text().splitlines()) == len(lines) + 1  # the torn line stays, ignored
    assert {(t.case_id, t.trial): t.answer for t in second.trials} == {
        (t.case_id, t.trial): t.answer for t in first.trials
    }


def test_calibrate_reports_agreement_with_human_labels(tmp_path: Path) -> None:
    context = ["The CEO salary is 1,250,000 euros per year.", "Annual leave is 25 days per calendar year."]
    rows = [
        {"question": "CEO pay?", "answer": "The CEO salary is 1,250,000 euros per year.", "contexts": context,
         "human": 5},
        {"question": "Leave?", "answer": "Annual leave is 25 days per calendar year.", "contexts": context, "human": 5},
        {"question": "Leave?", "answer": "Annual leave is 40 days and unlimited sick pay.", "contexts": context,
         "human": 1},
        {"question": "CEO pay?", "answer": "The CEO earns 9 million dollars in stock.", "contexts": context,
         "human": 1},
        {"question": "Leave?", "answer": "Leave is 25 days; the CEO salary is secret.", "contexts": context,
         "human": 3},
    ]  # fmt: skip
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "gengate.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    result = cli(config, "eval", "calibrate", str(labels), "--metric", "faithfulness", "--threshold", "0.5",
                 "--human-threshold", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    spearman = float(result.output.split("Spearman ", 1)[1].split()[0])
    assert spearman > 0.5 and "kappa" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    refused = CliRunner().invoke(main, ["eval", "calibrate", str(bad), "--metric", "faithfulness", "--config",
                                        str(config)])  # fmt: skip
    assert refused.exit_code != 0 and "bad.jsonl:1" in refused.output


def test_judge_metrics_call_the_configured_judge_model(tmp_path: Path, upstream) -> None:
    from conftest import base_config, merge
    from fake_upstream import Step

    config = merge(base_config(upstream, tmp_path / "data"), {"apps": {"facilities": {"knowledge_bases": ["kb"]}}})
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})

    async def load() -> None:
        store = await open_store(settings.database_url)
        try:
            kbs = KnowledgeBases(KnowledgeStore(store.engine), settings.rag)
            await kbs.create("kb")
            await kbs.ingest("kb", scan_source(_corpus(tmp_path / "docs")), source="docs")
        finally:
            await store.close()

    asyncio.run(load())
    cases = parse_dataset(_dataset(tmp_path / "facts.jsonl")).cases[:3]
    upstream.queue("fake-model", *[Step(content='{"score": 5}') for _ in range(3)])
    experiment = Experiment(settings, "facilities", "facts", 1, cases, trials=1, concurrency=1,
                            metrics=["judge_faithfulness"], judge_model="gpt-test")  # fmt: skip
    run = asyncio.run(experiment.run(Journal(tmp_path / "j.jsonl"), run_id="judge"))
    assert [t.scores["judge_faithfulness"] for t in run.trials] == [1.0, 1.0, 1.0]
    # The judge's calls are priced (10 + 5 tokens at $1 / $2 per million) and kept apart from the target's cost.
    assert [t.judge_tokens for t in run.trials] == [15, 15, 15]
    assert all(t.judge_cost_usd == pytest.approx(20e-6) for t in run.trials)
    totals = summarise(run).totals
    assert totals.judge_cost_usd == pytest.approx(60e-6) and totals.cost_usd == 0.0
    judged = [r for r in upstream.requests if r.get("model") == "fake-model"]
    assert len(judged) == 3 and "faithful" in json.dumps(judged[0]["messages"]).lower()
    with pytest.raises(ConfigError, match="judge model"):
        Experiment(settings, "facilities", "facts", 1, cases, metrics=["judge_relevance"])._metrics()


def test_a_model_route_runs_through_the_team_guard_admission_and_pricing(tmp_path: Path, upstream) -> None:
    from conftest import base_config, merge
    from fake_upstream import Step

    config = merge(
        base_config(upstream, tmp_path / "data"),
        {"guard": {"profiles": {"p": {"input": [{"detector": "competitors", "options": {"competitors": ["Globex"]},
                                                 "action": "block"}]}},
                   "teams": {"eval": "p"}}},
    )  # fmt: skip
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    rows = [
        {"id": "capital", "question": "What is the capital of France?", "required_facts": ["Paris"]},
        {"id": "rival", "question": "Is Globex cheaper than you?", "expected": {"outcome": "blocked"}},
    ]
    data = tmp_path / "route.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cases = parse_dataset(data).cases
    upstream.queue("fake-model", Step(content="Paris is the capital."), Step(content="Paris, of course."))
    variant = Variant("terse", {"system_prompt": "Answer in five words.", "temperature": 0.2})
    experiment = Experiment(settings, None, "route", 1, cases, variant, trials=2, concurrency=1, model="gpt-test",
                            metrics=["contains", "guard_outcome", "cost"])  # fmt: skip
    run = asyncio.run(experiment.run(Journal(tmp_path / "route-run.jsonl"), run_id="route"))
    assert run.target == "gpt-test"
    by_case = {(t.case_id, t.trial): t for t in run.trials}
    assert [by_case[("capital", i)].scores["contains"] for i in range(2)] == [1.0, 1.0]
    assert all(by_case[("capital", i)].cost_usd == pytest.approx(20e-6) for i in range(2))
    # The team's input guard blocked the competitor question before any model call.
    assert [by_case[("rival", i)].outcome for i in range(2)] == ["blocked", "blocked"]
    assert all(by_case[("rival", i)].passed["guard_outcome"] for i in range(2))
    sent = [r for r in upstream.requests if r.get("model") == "fake-model"]
    assert len(sent) == 2 and sent[0]["messages"][0] == {"role": "system", "content": "Answer in five words."}
    assert sent[0]["temperature"] == 0.2
    with pytest.raises(ConfigError, match="unknown keys top_k for a model route"):
        Experiment(settings, None, "route", 1, cases, Variant("x", {"top_k": 1}), model="gpt-test")
    with pytest.raises(ConfigError, match="no chat model"):
        Experiment(settings, None, "route", 1, cases, model="offline-embed")
