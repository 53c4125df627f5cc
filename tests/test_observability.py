"""Every request is traced (id, principal, tokens, cost, latency), counted in Prometheus, and logged without secrets."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest

from conftest import ADMIN_KEY
from fake_upstream import FakeUpstream, Step
from gengate.telemetry.logs import JsonFormatter

MSG = [{"role": "user", "content": "hi"}]


def test_request_id_is_echoed_and_trace_recorded(gateway, upstream: FakeUpstream) -> None:
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    resp = httpx.post(
        f"{gateway.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG},
        headers={"authorization": f"Bearer {key}", "x-request-id": "client-req-42"},
    )  # fmt: skip
    assert resp.headers["x-request-id"] == "client-req-42"
    generated = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "offline", "messages": MSG},
                           headers={"authorization": f"Bearer {key}"}).headers["x-request-id"]  # fmt: skip
    assert len(generated) == 32 and generated != "client-req-42"
    time.sleep(0.3)
    with gateway.admin() as admin:
        record = admin.get("/admin/requests/client-req-42").json()
    assert record["team"] == "team-a" and record["key_id"] == key.split("-")[2]
    assert record["deployment"] == "fake/fake-model" and record["status"] == 200
    assert (record["prompt_tokens"], record["completion_tokens"]) == (1000, 500)
    assert record["cost_usd"] == 0.002  # 1000 × $1/M + 500 × $2/M
    assert record["latency_ms"] > 0


def test_streams_record_time_to_first_token(gateway, upstream: FakeUpstream) -> None:
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(content="a b c", chunk_delay=0.05))
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions",
        headers={"authorization": f"Bearer {key}", "x-request-id": "s-1"},
        json={"model": "gpt-test", "messages": MSG, "stream": True},
    ) as resp:  # fmt: skip
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    time.sleep(0.3)
    with gateway.admin() as admin:
        record = admin.get("/admin/requests/s-1").json()
    assert record["stream"] is True and record["ttft_ms"] is not None
    assert 0 < record["ttft_ms"] <= record["latency_ms"]
    assert record["completion_tokens"] == 5


def test_prometheus_metrics_count_requests_tokens_cost_and_rejections(make_gateway) -> None:
    gw = make_gateway()
    key = gw.create_key("team-a", rpm=1)
    headers = {"authorization": f"Bearer {key}"}
    httpx.post(f"{gw.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG}, headers=headers)
    httpx.post(f"{gw.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG}, headers=headers)
    text = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'gengate_requests_total{endpoint="chat.completions",model="gpt-test",status="200",team="team-a"} 1.0' in text
    assert 'status="429"' in text
    assert 'gengate_limit_rejections_total{reason="requests_per_minute_exceeded",team="team-a"} 1.0' in text
    assert 'gengate_tokens_total{kind="prompt",model="gpt-test",team="team-a"} 10.0' in text
    assert "gengate_cost_usd_total" in text and "gengate_request_latency_seconds_bucket" in text


def test_json_logs_carry_fields_and_no_secrets() -> None:
    record = logging.LogRecord("gengate.http", logging.INFO, __file__, 1, "request done", (), None)
    record.team = "team-a"
    line = JsonFormatter().format(record)
    assert '"team":"team-a"' in line and '"msg":"request done"' in line


def test_upstream_key_and_client_key_never_reach_logs(gateway, upstream: FakeUpstream, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    key = gateway.create_key("team-a")
    upstream.queue("fake-model", Step(status=500), Step(status=500), Step(status=400))
    for _ in range(2):
        httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG},
                   headers={"authorization": f"Bearer {key}"})  # fmt: skip
    httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG},
               headers={"authorization": f"Bearer {key}-tampered"})  # fmt: skip
    assert "request failed" in caplog.text  # the failure was logged, and without secrets:
    assert key not in caplog.text and "upstream-secret" not in caplog.text and ADMIN_KEY not in caplog.text


def test_opentelemetry_export_uses_genai_conventions(make_gateway) -> None:
    from aiohttp import web

    from fake_upstream import ServerThread

    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    collector = ServerThread(app)
    collector.start()
    try:
        gw = make_gateway({"telemetry": {"otel": {"endpoint": f"http://127.0.0.1:{collector.port}/v1/traces"}}})
        key = gw.create_key("team-a")
        httpx.post(f"{gw.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG},
                   headers={"authorization": f"Bearer {key}"})  # fmt: skip
        gw.stop()  # shutdown flushes the span processor
        payload = b"".join(received)
        for needle in (b"gen_ai.request.model", b"gpt-test", b"gen_ai.usage.input_tokens", b"gen_ai.operation.name"):
            assert needle in payload
    finally:
        collector.stop()


def test_a_reused_request_id_keeps_every_request_in_the_log(storage, make_gateway, upstream: FakeUpstream) -> None:
    # A client may send the same x-request-id again (by mistake, or to hide a request from the log and from the
    # spend it records): the repeat is kept under a fresh id that no client can send, and counted.
    gateway = make_gateway(storage)
    key = gateway.create_key("team-a")
    headers = {"authorization": f"Bearer {key}", "x-request-id": "reused-id-1"}
    started = time.time()
    for pause in (0.3, 0.0, 0.3):  # separate batches, and two requests in one batch
        upstream.queue("fake-model", Step(usage={"prompt_tokens": 1000, "completion_tokens": 500}))
        resp = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": "gpt-test", "messages": MSG},
                          headers=headers)  # fmt: skip
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "reused-id-1"
        time.sleep(pause)
    gateway.run(gateway.gateway.traces.flush())
    store = gateway.gateway.store
    ids = sorted(r["id"] for r in gateway.run(store.recent_requests(team="team-a")))
    assert ids[0] == "reused-id-1" and len(ids) == 3
    assert all(re.fullmatch(r"reused-id-1~[0-9a-f]{16}", i) for i in ids[1:]) and ids[1] != ids[2]
    assert gateway.run(store.spend_since(since=started - 1, team="team-a")) == pytest.approx(0.006)  # all three
    with gateway.admin() as admin:
        assert admin.get("/admin/requests/reused-id-1").status_code == 200
        assert admin.get(f"/admin/requests/{ids[1]}").json()["prompt_tokens"] == 1000
    text = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert "gengate_log_reused_request_ids_total 2.0" in text and "gengate_log_dropped_total 0.0" in text
