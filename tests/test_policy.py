"""Policy through the real API: model access, RPM/TPM limits, budgets with reserve-and-reconcile, pricing."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from fake_upstream import FakeUpstream, Step

MSG = [{"role": "user", "content": "hi"}]


def test_rpm_limit_on_key_returns_429_with_retry_after(make_gateway, sdk) -> None:
    gw = make_gateway()
    key = gw.create_key("team-a", rpm=3)
    client = sdk(gw, key)
    for _ in range(3):
        client.chat.completions.create(model="offline", messages=MSG)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="offline", messages=MSG)
    assert err.value.code == "requests_per_minute_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1
    # another key of the same team is not limited by this key's RPM
    sdk(gw, gw.create_key("team-a")).chat.completions.create(model="offline", messages=MSG)


def test_team_rpm_limit_applies_across_keys(make_gateway, sdk) -> None:
    gw = make_gateway({"policy": {"teams": {"small": {"rpm": 2}}}})
    first, second = sdk(gw, gw.create_key("small")), sdk(gw, gw.create_key("small"))
    first.chat.completions.create(model="offline", messages=MSG)
    second.chat.completions.create(model="offline", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        first.chat.completions.create(model="offline", messages=MSG)


def test_tpm_limit_refuses_once_tokens_are_used(make_gateway, sdk, upstream: FakeUpstream) -> None:
    gw = make_gateway({"policy": {"teams": {"t": {"tpm": 100}}}})
    client = sdk(gw, gw.create_key("t"))
    upstream.queue("fake-model", Step(usage={"prompt_tokens": 60, "completion_tokens": 50}))
    client.chat.completions.create(model="gpt-test", messages=MSG)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-test", messages=MSG)
    assert err.value.code == "tokens_per_minute_exceeded"


def test_budget_reconciles_to_actual_cost_and_then_refuses(make_gateway, sdk, upstream: FakeUpstream) -> None:
    # fake-model costs $1/M input and $2/M output. Budget $0.001 = 1,000 µ$.
    gw = make_gateway({"policy": {"teams": {"b": {"budget": {"usd": 0.001, "period": "day"}}}}})
    client = sdk(gw, gw.create_key("b"))
    # each call really costs 100 prompt + 200 completion tokens = 100 + 400 = 500 µ$ (reservation is larger)
    upstream.default = Step(usage={"prompt_tokens": 100, "completion_tokens": 200})
    for _ in range(2):
        client.chat.completions.create(model="gpt-test", messages=MSG, max_tokens=200)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-test", messages=MSG, max_tokens=200)
    assert err.value.code == "insufficient_quota"
    time.sleep(0.3)  # batched log flush
    with gw.admin() as admin:
        spend = admin.get("/admin/spend", params={"by": "team", "period": "day"}).json()["data"]
    team = next(row for row in spend if row["team"] == "b")
    assert team["usd"] == pytest.approx(0.001)


def test_budget_sets_max_tokens_when_request_has_none(make_gateway, sdk, upstream: FakeUpstream) -> None:
    gw = make_gateway({"policy": {"default_max_output_tokens": 321, "teams": {"b": {"budget": {"usd": 5}}}}})
    sdk(gw, gw.create_key("b")).chat.completions.create(model="gpt-test", messages=MSG)
    assert upstream.requests[-1]["max_tokens"] == 321


def test_unpriced_model_is_refused_while_a_budget_applies(make_gateway, sdk, upstream: FakeUpstream) -> None:
    gw = make_gateway(
        {
            "models": {"free-lunch": {"deployments": [{"provider": "fake", "model": "unpriced-model"}]}},
            "policy": {"teams": {"b": {"budget": {"usd": 5}}}},
        }
    )
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gw, gw.create_key("b")).chat.completions.create(model="free-lunch", messages=MSG)
    assert err.value.code == "model_not_priced"
    assert upstream.requests == []
    # without a budget the same model is served
    sdk(gw, gw.create_key("no-budget")).chat.completions.create(model="free-lunch", messages=MSG)


def test_key_budget_is_enforced_separately_from_team(make_gateway, sdk, upstream: FakeUpstream) -> None:
    gw = make_gateway()
    upstream.default = Step(usage={"prompt_tokens": 1000, "completion_tokens": 1000})  # $0.003 a call
    tight = sdk(gw, gw.create_key("team-a", budget_usd=0.004, budget_period="total"))
    tight.chat.completions.create(model="gpt-test", messages=MSG, max_tokens=1000)
    with pytest.raises(openai.RateLimitError):
        tight.chat.completions.create(model="gpt-test", messages=MSG, max_tokens=1000)
    sdk(gw, gw.create_key("team-a")).chat.completions.create(model="gpt-test", messages=MSG, max_tokens=1000)


def test_client_disconnect_mid_stream_releases_reservation(make_gateway, sdk, upstream: FakeUpstream) -> None:
    # Budget fits one reservation at a time: a leaked reservation would refuse the next call.
    gw = make_gateway({"policy": {"teams": {"b": {"budget": {"usd": 0.0008, "period": "day"}}}}})
    key = gw.create_key("b")
    upstream.queue(
        "fake-model",
        Step(content="a b c d e f g h", chunk_delay=0.3, usage={"prompt_tokens": 1, "completion_tokens": 1}),
    )
    with httpx.Client(timeout=10) as http, http.stream(
        "POST", f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-test", "messages": MSG, "stream": True, "max_tokens": 300},
    ) as resp:  # fmt: skip
        assert resp.status_code == 200
        next(resp.iter_lines())
        # leaving the block closes the connection mid-stream
    time.sleep(0.8)
    upstream.default = Step(usage={"prompt_tokens": 1, "completion_tokens": 1})
    sdk(gw, key).chat.completions.create(model="gpt-test", messages=MSG, max_tokens=300)
    time.sleep(0.3)
    with gw.admin() as admin:
        rows = admin.get("/admin/requests", params={"team": "b"}).json()["data"]
    assert any(r["client_disconnected"] for r in rows)
    assert all(r["cost_usd"] < 0.0008 for r in rows)
