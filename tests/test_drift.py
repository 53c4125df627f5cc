"""Drift, as an operator watches it: documents that changed since the last evaluation run (in `gengate drift
knowledge`, in /metrics, and re-evaluated by `gengate drift watch`), and production questions moving to a topic
the evaluation dataset does not cover (`gengate drift questions`, /metrics) — with real answers over HTTP, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from conftest import RunningGateway, base_config, merge, require
from gengate.cli.main import main
from gengate.embed import minilm
from gengate.errors import ConfigError
from gengate.outer.drift_service import knowledge_drift
from gengate.outer.knowledge_drift import knowledge_changes
from gengate.rag.kb import KnowledgeBases
from gengate.rag.sources import scan_source
from gengate.settings import Settings, load_settings
from gengate.store.db import open_store
from gengate.store.knowledge import KnowledgeStore, NewDocument
from gengate.store.outer_runs import OuterRunsStore
from rag_corpus import JWT_AUTH, token, write_corpus

BOB = token("bob", ["staff"], team="staff-team")
APPS = {
    "hr": {"knowledge_bases": ["handbook"], "payloads": "full", "extractive_encoder": False},
    "desk": {"knowledge_bases": ["handbook"], "payloads": "redacted", "extractive_encoder": False},
}
STAFF = {"subject": "bob", "team": "staff-team", "groups": ["staff"]}
NOTE = "---\ntitle: A note\naccess:\n  groups: [staff]\n---\n# A note\n\nNotes are kept for a year.\n"

# What the evaluation dataset covers: leave, expenses and pay.
HR_QUESTIONS = [
    "How many days of annual leave do I get?", "Can unused leave be carried over to next year?",
    "How many leave days can I carry over?", "Does sick leave count against my annual leave?",
    "When do I need a doctor's note for sick leave?", "Is annual leave paid?",
    "How much annual leave do part-time employees receive?", "Can I take leave during my probation period?",
    "Who approves my holiday request?", "How do I book a day of annual leave?",
    "Is train travel reimbursed in first class?", "How much is a hotel night reimbursed?",
    "What is the hotel limit per night on business trips?", "Are taxi rides reimbursed as travel expenses?",
    "How do I claim my travel expenses?", "Are meals on business trips reimbursed?",
    "Can I expense a rental car?", "What receipts do I need for an expense claim?",
    "When are expense claims paid out?", "Is my salary ever paid as an expense?",
    "When is the salary paid each month?", "How are salary bands reviewed?",
    "Do I get paid extra for overtime?", "How is holiday pay calculated?",
    "Can I carry over sick days?", "What happens to my leave when I resign?",
    "Is parental leave paid?", "How many days of compassionate leave are there?",
    "Can I buy extra days of annual leave?", "Who do I ask about my payslip?",
]  # fmt: skip
# A topic the dataset never asks about; a few carry an email address.
IT_QUESTIONS = [
    "How do I connect to the VPN from home?", "The VPN keeps disconnecting, what should I do?",
    "How do I reset my VPN password?", "Which VPN client do I install on my laptop?",
    "My VPN token expired, reach me at jane.doe@example.com", "Why is the VPN so slow in the evening?",
    "Can I use the VPN on my phone?", "Is the VPN required to reach the intranet?",
    "How do I get VPN access as a contractor?", "The VPN says my certificate is invalid, help",
    "How do I reset my laptop password?", "My laptop will not connect to the office wifi",
    "How do I install software on my laptop?", "Who replaces a broken laptop screen?",
    "Send the VPN setup guide to jane.doe@example.com please", "How do I set up two-factor login for the VPN?",
    "Can I print from the VPN at home?", "Which laptop models does IT support?",
    "How do I encrypt my laptop disk?", "The VPN blocks my video calls, why?",
]  # fmt: skip


@pytest.fixture
def project(storage: dict[str, Any], tmp_path: Path) -> Path:
    """A config file, on SQLite or PostgreSQL: the handbook knowledge base, JWT users, drift checked every half
    second."""
    config = merge(base_config(None, tmp_path / "data"), {**JWT_AUTH, "apps": APPS, **storage})
    config["drift"] = {
        "interval_seconds": 0.5,
        "min_recent": 20,
        "datasets": {"hr": "hr-questions", "desk": "hr-questions"},
        "rerun_on_knowledge_change": {"hr": {"dataset": "facts", "trials": 1}},
    }
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    corpus = write_corpus(tmp_path / "corpus")
    assert cli(path, "kb", "create", "handbook").exit_code == 0
    ingested = cli(path, "kb", "ingest", "handbook", str(corpus))
    assert ingested.exit_code == 0, ingested.output
    return path


@pytest.fixture
def gateway(project: Path) -> Iterator[RunningGateway]:
    gw = RunningGateway(load_settings(project, environ={})).start()
    yield gw
    gw.stop()


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--config", str(config)], catch_exceptions=False)


def import_dataset(config: Path, name: str, rows: list[dict[str, Any]]) -> None:
    path = config.parent / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli(config, "dataset", "import", name, str(path))
    assert result.exit_code == 0, result.output


def gauge(gw: RunningGateway, name: str, app: str) -> float | None:
    with gw.admin() as client:
        text = client.get("/metrics").text
    match = re.search(rf'^{name}{{app="{app}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for_gauge(gw: RunningGateway, name: str, app: str, value: float) -> None:
    """Until the drift task has refreshed the gauge to `value`."""
    deadline = time.monotonic() + 60
    while gauge(gw, name, app) != value:
        assert time.monotonic() < deadline, f"{name}{{app={app}}} is {gauge(gw, name, app)}, expected {value}"
        time.sleep(0.1)


def ask(gw: RunningGateway, app: str, question: str) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        resp = client.post(f"/v1/apps/{app}/ask", json={"question": question},
                           headers={"authorization": f"Bearer {BOB}"})  # fmt: skip
    assert resp.status_code == 200, resp.text


def test_knowledge_changes_since_the_last_run_show_everywhere_and_trigger_a_rerun(
    project: Path, gateway: RunningGateway
) -> None:
    import_dataset(project, "facts", [
        {"id": "leave", "question": "How many days of annual leave do I get?", "identity": STAFF},
        {"id": "hotel", "question": "How much is a hotel night reimbursed?", "identity": STAFF},
    ])  # fmt: skip
    never = cli(project, "drift", "knowledge", "--app", "hr")
    assert never.exit_code == 0 and "has no finished evaluation run" in never.output
    assert cli(project, "drift", "knowledge", "--app", "hr", "--fail-on-drift").exit_code == 1

    run = cli(project, "eval", "run", "facts", "--app", "hr", "--trials", "1")
    assert run.exit_code == 0, run.output
    quiet = cli(project, "drift", "knowledge", "--app", "hr", "--fail-on-drift")
    assert quiet.exit_code == 0 and "0 documents changed" in quiet.output and "drift: none" in quiet.output
    wait_for_gauge(gateway, "gengate_knowledge_changes_since_eval", "hr", 0.0)

    corpus = project.parent / "corpus"
    leave = corpus / "handbook" / "leave.md"
    leave.write_text(leave.read_text().replace("25 days", "30 days"))
    (corpus / "handbook" / "expenses.md").unlink()
    salaries = corpus / "hr" / "salaries.md"
    salaries.write_text(salaries.read_text().replace("groups: [hr]", "groups: [hr, board]"))
    (corpus / "handbook" / "remote.md").write_text(
        "---\ntitle: Remote work\naccess:\n  groups: [staff]\n---\n# Remote work\n\n"
        "Staff may work remotely two days a week.\n"
    )
    ingested = json.loads(cli(project, "kb", "ingest", "handbook", str(corpus), "--json").stdout)
    assert ingested["access_changed"] == ["hr/salaries.md"] and ingested["retired"] == ["handbook/expenses.md"]

    drifted = cli(project, "drift", "knowledge", "--app", "hr")
    assert drifted.exit_code == 0, drifted.output  # informational unless --fail-on-drift
    assert "4 documents changed: 1 added, 1 changed, 1 retired, 1 access changed" in drifted.output
    listed = [line.split() for line in drifted.output.splitlines() if line.startswith("  ") and "handbook" in line]
    assert [(row[0], row[-1]) for row in listed] == [
        ("added", "handbook/remote.md"), ("changed", "handbook/leave.md"), ("retired", "handbook/expenses.md"),
        ("access_changed", "hr/salaries.md"),
    ]  # fmt: skip
    as_json = json.loads(cli(project, "drift", "knowledge", "--app", "hr", "--json").stdout)
    assert as_json["drifted"] and as_json["total"] == 4 and as_json["run_id"] in run.output
    assert cli(project, "drift", "knowledge", "--app", "hr", "--fail-on-drift").exit_code == 1
    wait_for_gauge(gateway, "gengate_knowledge_changes_since_eval", "hr", 4.0)

    # The opt-in trigger: `gengate eval run` in its own process, recorded with the knowledge it evaluated.
    watched = cli(project, "drift", "watch", "--once")
    assert watched.exit_code == 0, watched.output
    assert "hr: 4 knowledge changes since run" in watched.output
    assert cli(project, "drift", "knowledge", "--app", "hr", "--fail-on-drift").exit_code == 0
    wait_for_gauge(gateway, "gengate_knowledge_changes_since_eval", "hr", 0.0)
    again = cli(project, "drift", "watch", "--once")
    assert again.exit_code == 0 and "hr: no knowledge change since run facts-default-" in again.output


# The embedding model makes this one slow: it runs on SQLite, and the store's part of it (`recent_questions`) is
# covered on both databases by tests/test_traces_to_datasets.py.
@pytest.mark.parametrize("storage", ["sqlite"], indirect=True)
def test_questions_on_a_new_topic_are_detected_and_listed(project: Path, gateway: RunningGateway) -> None:
    if not minilm.available():
        require("the MiniLM model", minilm.INSTALL_HINT)
    import_dataset(project, "hr-questions", [{"question": q, "identity": STAFF} for q in HR_QUESTIONS])
    for question in HR_QUESTIONS[:10] + IT_QUESTIONS:
        ask(gateway, "hr", question)
    for question in HR_QUESTIONS[5:29]:
        ask(gateway, "desk", question)

    wait_for_gauge(gateway, "gengate_question_drift_drifted", "hr", 1.0)
    wait_for_gauge(gateway, "gengate_question_drift_drifted", "desk", 0.0)
    score = gauge(gateway, "gengate_question_drift_score", "hr")
    assert score is not None and score > 0.01

    shown = cli(project, "drift", "questions", "--app", "hr", "--dataset", "hr-questions", "--since", "1h")
    assert shown.exit_code == 0, shown.output
    assert "app hr: 30 questions since" in shown.output and "(30 questions)" in shown.output
    assert "decision: DRIFTED" in shown.output and "p-value" in shown.output and "effect (H)" in shown.output
    topics = shown.output[shown.output.index("new topics") :]
    assert "vpn" in topics.lower()
    assert "jane.doe@example.com" not in shown.output  # stored in full, shown redacted

    report = json.loads(cli(project, "drift", "questions", "--app", "hr", "--json").stdout)
    assert report["drifted"] and report["result"]["p_value"] < 0.05
    assert "vpn" in report["result"]["topics"][0]["keywords"]
    assert cli(project, "drift", "questions", "--app", "hr", "--fail-on-drift").exit_code == 1

    same = cli(project, "drift", "questions", "--app", "desk", "--fail-on-drift")
    assert same.exit_code == 0 and "decision: no drift" in same.output
    few = cli(project, "drift", "questions", "--app", "desk", "--min-recent", "100")
    assert few.exit_code == 0 and "no verdict" in few.output and "24 recent questions, need at least 100" in few.output


async def test_drift_is_what_changed_after_the_newest_finished_run(storage: dict[str, Any], tmp_path: Path) -> None:
    apps = {"hr": {"knowledge_bases": ["handbook", "extra"]}}
    raw = merge(base_config(None, tmp_path / "data"), {"rag": {"embeddings": "none"}, "apps": apps, **storage})
    settings = Settings.model_validate(raw)
    corpus, extra = write_corpus(tmp_path / "corpus"), write_corpus(tmp_path / "extra", {"notes/a.md": NOTE})
    store = await open_store(settings.database_url)
    try:
        kbs = KnowledgeBases(KnowledgeStore(store.engine), settings.rag)
        runs = OuterRunsStore(store.engine)

        async def ingest(name: str, folder: Path) -> None:
            if await kbs.store.get(name) is None:
                await kbs.create(name)
            await kbs.ingest(name, scan_source(folder), source=str(folder))

        await ingest("handbook", corpus)
        never = await knowledge_drift(store, settings, "hr")
        assert never.run_id is None and never.counts["added"] == 4  # never evaluated: all of it is new
        await runs.start_run("old", target="app/hr", dataset="d", dataset_version="1", variant="v",
                             kbs=["handbook", "extra"], now=10.0)  # fmt: skip
        await runs.finish_run("old", now=20.0)
        assert not (await knowledge_drift(store, settings, "hr")).drifted
        await runs.start_run("unfinished", target="app/hr", dataset="d", dataset_version="1", variant="v",
                             kbs=["handbook", "extra"], now=30.0)  # fmt: skip

        leave = corpus / "handbook" / "leave.md"
        leave.write_text(leave.read_text().replace("25 days", "30 days"))
        (corpus / "handbook" / "expenses.md").unlink()
        await ingest("handbook", corpus)
        await ingest("extra", extra)  # created after the run, which recorded it with no history
        drift = await knowledge_drift(store, settings, "hr")
        assert drift.run_id == "old" and drift.run_finished_at == 20.0 and drift.new_kbs == ()
        assert [(d.kb, d.doc_id, d.change, d.version) for d in drift.documents] == [
            ("extra", "notes/a.md", "added", 1), ("handbook", "handbook/leave.md", "changed", 2),
            ("handbook", "handbook/expenses.md", "retired", 1),
        ]  # fmt: skip

        await runs.finish_run("unfinished", now=40.0)  # the newest finished run evaluated none of those changes
        since_unfinished = await knowledge_drift(store, settings, "hr")
        assert since_unfinished.run_id == "unfinished" and since_unfinished.total == 3
        await runs.start_run("now", target="app/hr", dataset="d", dataset_version="1", variant="v",
                             kbs=["handbook", "extra"], now=50.0)  # fmt: skip
        await runs.finish_run("now", now=60.0)
        latest = await knowledge_drift(store, settings, "hr")
        assert latest.run_id == "now" and not latest.drifted
        assert (await runs.get_run("now")).knowledge == await runs.knowledge_state(["handbook", "extra"])
    finally:
        await store.close()


async def test_concurrent_writers_to_one_knowledge_base_commit_in_event_order(
    storage: dict[str, Any], tmp_path: Path
) -> None:
    """Eight writers store the same document at once (as overlapping ingests would, each having seen no active
    version): every one lands with its own version, one version stays active, and the event ids follow the
    versions, so "events after the id a run saw" cannot miss one that committed late."""
    raw = merge(base_config(None, tmp_path / "data"), {"rag": {"embeddings": "none"}, **storage})
    settings = Settings.model_validate(raw)
    store = await open_store(settings.database_url)
    try:
        kbs = KnowledgeStore(store.engine)
        await kbs.create("kb", description="", chunking={}, default_access=None, embeddings="none")

        async def write(i: int) -> int:
            doc = NewDocument(
                doc_id="a.md", title="A", content_hash=f"{i:064d}", text=f"text {i}", format="md",
                access=frozenset({"group:all"}), metadata={}, source="s", suspicious=False,
            )  # fmt: skip
            version, _ = await kbs.put_document("kb", doc, [], None)
            return version

        versions = await asyncio.gather(*(write(i) for i in range(8)))
        assert sorted(versions) == list(range(1, 9))
        active = await kbs.active_documents("kb")
        assert list(active) == ["a.md"] and active["a.md"].version == 8
        events = [e for e in reversed(await kbs.history("kb")) if e["doc_id"] == "a.md"]
        assert [e["version"] for e in events] == list(range(1, 9))  # ids ascend with the versions
        assert [e["action"] for e in events] == ["added"] + ["changed"] * 7
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (["added"], "added"),
        (["added", "changed", "access_changed"], "added"),
        (["added", "retired"], None),  # came and went since the run: nothing the run saw changed
        (["changed"], "changed"),
        (["access_changed", "changed"], "changed"),
        (["retired", "added"], "changed"),  # retired and brought back as a new version
        (["access_changed"], "access_changed"),
        (["changed", "retired"], "retired"),
    ],
)
def test_each_document_counts_once_with_its_net_change(actions: list[str], expected: str | None) -> None:
    events = [{"id": i, "kb": "handbook", "ts": float(i), "action": a, "doc_id": "a.md", "version": i}
              for i, a in enumerate(actions, 1)]  # fmt: skip
    events.append({"id": 99, "kb": "handbook", "ts": 99.0, "action": "refused", "doc_id": "b.pdf", "version": None})
    drift = knowledge_changes("hr", events, run_id="r1")
    assert [d.change for d in drift.documents] == ([expected] if expected else [])
    assert drift.total == (1 if expected else 0) and drift.drifted == bool(expected)


def test_rechunking_counts_as_a_change_of_the_whole_knowledge_base() -> None:
    drift = knowledge_changes("hr", [{"id": 5, "kb": "handbook", "ts": 1.0, "action": "rechunked", "doc_id": None}])
    assert drift.rechunked == ("handbook",) and drift.documents == () and drift.total == 1


def test_documented_drift_settings_are_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "outer-loop.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL) if b.startswith("drift:"))
    config = {**yaml.safe_load(block), "apps": {"hr": {"knowledge_bases": ["handbook"]}}}
    path = tmp_path / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path, environ={})
    assert settings.drift.datasets == {"hr": "faq"} and settings.drift.rerun_on_knowledge_change["hr"].trials == 1
    config["drift"]["datasets"] = {"payroll": "faq"}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="drift: unknown app 'payroll'"):
        load_settings(path, environ={})
