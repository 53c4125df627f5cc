"""The OpenAI SDK, unchanged, against gengate: plain and streamed chats, tool calls, embeddings, models."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import RunningGateway
from fake_upstream import FakeUpstream, Step

TOOL_CALL = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    }
]


@pytest.fixture
def client(sdk):
    return sdk


def test_chat_completion_through_fake_upstream(gateway: RunningGateway, upstream: FakeUpstream, client) -> None:
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(content="Bonjour", usage={"prompt_tokens": 7, "completion_tokens": 3}))
    resp = client(gateway, key).chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Bonjour"
    assert resp.usage is not None and resp.usage.total_tokens == 10
    sent = upstream.requests[-1]
    assert sent["model"] == "fake-model"
    assert upstream.headers[-1]["authorization"] == "Bearer upstream-secret"


def test_streamed_chat_with_usage(gateway: RunningGateway, upstream: FakeUpstream, client) -> None:
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(content="one two three", usage={"prompt_tokens": 4, "completion_tokens": 3}))
    stream = client(gateway, key).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["one", "two", "three"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_stream_without_include_usage_hides_usage_chunk(
    gateway: RunningGateway, upstream: FakeUpstream, client
) -> None:
    key = gateway.create_key("team-a")
    chunks = list(
        client(gateway, key).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    # gengate still asked the upstream for usage, to account the cost
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through_intact(gateway: RunningGateway, upstream: FakeUpstream, stream: bool, client) -> None:
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(tool_calls=TOOL_CALL))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    c = client(gateway, key)
    messages = [{"role": "user", "content": "weather?"}]
    if not stream:
        resp = c.chat.completions.create(model="gpt-test", messages=messages, tools=tools)
        calls = resp.choices[0].message.tool_calls
        assert calls is not None
        assert (calls[0].id, calls[0].function.name, json.loads(calls[0].function.arguments)) == (
            "call_1", "get_weather", {"city": "Paris"},
        )  # fmt: skip
    else:
        args = ""
        names = []
        finish = None
        for chunk in c.chat.completions.create(model="gpt-test", messages=messages, tools=tools, stream=True):
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or []:
                    args += tc.function.arguments or "" if tc.function else ""
                    if tc.function and tc.function.name:
                        names.append(tc.function.name)
                finish = choice.finish_reason or finish
        assert names == ["get_weather"] and json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    assert upstream.requests[-1]["tools"] == tools


def test_offline_model_answers_without_network(gateway: RunningGateway, client) -> None:
    key = gateway.create_key("team-a")
    resp = client(gateway, key).chat.completions.create(
        model="offline", messages=[{"role": "user", "content": "what is our refund policy"}]
    )
    text = resp.choices[0].message.content or ""
    assert "offline provider" in text and "what is our refund policy" in text


def test_embeddings_offline_float_and_base64(gateway: RunningGateway, client) -> None:
    key = gateway.create_key("team-a")
    c = client(gateway, key)
    resp = c.embeddings.create(model="offline-embed", input=["red apple", "red apple", "bond yields"])
    vectors = [d.embedding for d in resp.data]
    assert len(vectors) == 3 and len(vectors[0]) == 256
    assert vectors[0] == pytest.approx(vectors[1])
    same = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    other = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert same == pytest.approx(1.0) and other < 0.5
    raw = c.embeddings.create(model="offline-embed", input="red apple", encoding_format="float")
    assert raw.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)


def test_models_lists_only_what_the_caller_may_use(make_gateway, upstream: FakeUpstream, client) -> None:
    gw = make_gateway({"policy": {"teams": {"narrow": {"models": ["offline*"]}}}})
    wide = {m.id for m in client(gw, gw.create_key("team-a")).models.list()}
    narrow = {m.id for m in client(gw, gw.create_key("narrow")).models.list()}
    assert {"gpt-test", "offline", "offline-embed"} <= wide
    assert narrow == {"offline", "offline-embed"}
    with pytest.raises(openai.NotFoundError):
        client(gw, gw.create_key("narrow")).models.retrieve("gpt-test")
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(gw, gw.create_key("narrow")).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "model_not_allowed"
