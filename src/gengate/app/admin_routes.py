"""The admin plane: keys, request logs, spend, metrics. Needs an admin key or a JWT with an admin role.

Served under `/admin` on the main port, or only on `server.admin_port` when that is set.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gengate.app.errors import error_response, json_response
from gengate.app.gateway import Gateway
from gengate.app.requests import parse_object
from gengate.auth.keys import KeySpec, create_key
from gengate.errors import ConfigError, GengateError, NotFound, PermissionDenied, RequestError
from gengate.outer.experiment_analysis import to_data as analysis_data
from gengate.outer.experiment_service import change_status, load_analysis, record_data
from gengate.policy.engine import period_start
from gengate.store.db import KeyRecord
from gengate.store.experiments import ExperimentStore
from gengate.telemetry.trace_steps import from_row

Handler = Callable[[Request, Gateway], Awaitable[Response]]


def admin_only(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate the caller and require the admin role before running the handler."""

    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        try:
            principal, _ = await gateway.authenticate(request.headers.get("authorization"))
            if not principal.is_admin:
                raise PermissionDenied("the admin API needs an admin key or an admin role")
            return await handler(request, gateway)
        except GengateError as exc:
            return error_response(exc)

    return endpoint


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API shows it (never its hash)."""
    return {
        "id": record.id,
        "name": record.name,
        "team": record.team,
        "user": record.user,
        "models": list(record.models) if record.models is not None else None,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": record.budget_usd,
        "budget_period": record.budget_period,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
    }


def _typed(body: dict[str, Any], name: str, kinds: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise RequestError(f"{name} has the wrong type", param=name)
    return value


async def _create_key(request: Request, gateway: Gateway) -> Response:
    body = parse_object(await request.body())
    unknown = set(body) - {"team", "user", "name", "models", "rpm", "tpm", "budget_usd", "budget_period",
                           "expires_in_seconds"}  # fmt: skip
    if unknown:
        raise RequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    models = _typed(body, "models", list)
    if models is not None and not all(isinstance(m, str) for m in models):
        raise RequestError("models must be an array of strings", param="models")
    spec = KeySpec(
        team=_typed(body, "team", str) or "",
        user=_typed(body, "user", str),
        name=_typed(body, "name", str) or "",
        models=models,
        rpm=_typed(body, "rpm", int),
        tpm=_typed(body, "tpm", int),
        budget_usd=_typed(body, "budget_usd", (int, float)),
        budget_period=_typed(body, "budget_period", str),
        expires_in_seconds=_typed(body, "expires_in_seconds", (int, float)),
    )
    new = await create_key(gateway.store, spec)
    return json_response({**key_view(new.record), "key": new.secret}, 201)


async def _list_keys(request: Request, gateway: Gateway) -> Response:
    team = request.query_params.get("team")
    include = request.query_params.get("include_revoked") in ("1", "true")
    keys = await gateway.store.list_keys(team=team, include_revoked=include)
    return json_response({"object": "list", "data": [key_view(k) for k in keys]})


async def _revoke_key(request: Request, gateway: Gateway) -> Response:
    key_id = request.path_params["key_id"]
    if not await gateway.store.revoke_key(key_id):
        return error_response(NotFound(f"no active key {key_id!r}"))
    gateway.keys.forget(key_id)
    return json_response({"id": key_id, "revoked": True})


def _int_param(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= most:
        raise RequestError(f"{name} must be an integer between 1 and {most}", param=name)
    return int(raw)


async def _requests(request: Request, gateway: Gateway) -> Response:
    limit = _int_param(request, "limit", 50, 1000)
    rows = await gateway.store.recent_requests(limit=limit, team=request.query_params.get("team"))
    return json_response({"object": "list", "data": rows})


async def _request(request: Request, gateway: Gateway) -> Response:
    row = await gateway.store.get_request(request.path_params["request_id"])
    if row is None:
        return error_response(NotFound("no such request"))
    row["guard_findings"] = await gateway.store.findings_for(row["id"])
    row["steps"] = [from_row(s) for s in await gateway.store.steps_for(row["id"])]
    return json_response(row)


async def _spend(request: Request, gateway: Gateway) -> Response:
    by = request.query_params.get("by", "team")
    if by not in ("team", "key_id", "model"):
        raise RequestError("by must be team, key_id or model", param="by")
    period = request.query_params.get("period", "month")
    if period not in ("day", "month", "total"):
        raise RequestError("period must be day, month or total", param="period")
    label, since, _ = period_start(period, time.time())
    rows = await gateway.store.spend_by(by, since=since)
    data = [{by: group, "usd": spent, "requests": count} for group, spent, count in rows]
    return json_response({"object": "list", "period": label, "data": data})


async def _forget_subject(request: Request, gateway: Gateway) -> Response:
    """Delete one person's answers, feedback, guard findings and trace steps; anonymise their request-log rows."""
    if gateway.feedback is None:
        raise NotFound("the outer loop is not enabled on this gateway")
    subject = request.path_params["subject"]
    counts = await gateway.feedback.forget(subject)
    return json_response(
        {"subject": subject, "deleted": {"responses": counts.responses, "feedback": counts.feedback,
                                         "guard_findings": counts.guard_findings, "trace_steps": counts.trace_steps},
         "anonymised": {"requests": counts.requests_anonymised}}
    )  # fmt: skip


async def _list_experiments(request: Request, gateway: Gateway) -> Response:
    status = request.query_params.get("status")
    records = await ExperimentStore(gateway.store.engine).list(
        statuses=[status] if status else None, app=request.query_params.get("app")
    )
    return json_response({"object": "list", "data": [record_data(r) for r in records]})


async def _get_experiment(request: Request, gateway: Gateway) -> Response:
    """One experiment with its analysis (per-variant estimates, comparisons, guardrails, decision)."""
    store = ExperimentStore(gateway.store.engine)
    record = await store.get(request.path_params["name"])
    analysis = await load_analysis(store, record)
    return json_response({**record_data(record), "analysis": analysis_data(analysis)})


async def _experiment_action(request: Request, gateway: Gateway) -> Response:
    action = request.path_params["action"]
    if action not in ("start", "pause", "stop"):
        raise NotFound(f"no route for POST {request.url.path}")
    try:
        record = await change_status(
            ExperimentStore(gateway.store.engine), gateway.settings, request.path_params["name"], action
        )
    except ConfigError as exc:
        raise RequestError(exc.message) from None
    if gateway.experiments is not None:
        await gateway.experiments.refresh()  # this process at once; the others within experiments.refresh_seconds
    return json_response(record_data(record))


async def _metrics(request: Request, gateway: Gateway) -> Response:
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")


create_key_endpoint = admin_only(_create_key)
list_keys_endpoint = admin_only(_list_keys)
revoke_key_endpoint = admin_only(_revoke_key)
requests_endpoint = admin_only(_requests)
request_endpoint = admin_only(_request)
spend_endpoint = admin_only(_spend)
metrics_endpoint = admin_only(_metrics)
forget_subject_endpoint = admin_only(_forget_subject)
list_experiments_endpoint = admin_only(_list_experiments)
get_experiment_endpoint = admin_only(_get_experiment)
experiment_action_endpoint = admin_only(_experiment_action)
