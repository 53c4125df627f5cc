"""`POST /v1/guard/scan`: applications check arbitrary text with their team's guard profile."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gengate.app.errors import error_response, json_response
from gengate.app.gateway import Gateway
from gengate.app.guarding import scan_text
from gengate.app.requests import parse_object
from gengate.errors import GengateError, PermissionDenied, RequestError
from gengate.guard.base import Stage
from gengate.guard.pipeline import GuardPipeline, StageResult


def scan_view(pipeline: GuardPipeline, result: StageResult) -> dict[str, Any]:
    """A stage result as the API and the CLI show it (spans refer to the caller's own text)."""
    redacted = any(f.action == "redact" for f in result.findings)
    return {
        "profile": pipeline.name,
        "stage": result.stage.value,
        "action": "block" if result.blocked else ("redact" if redacted else "allow"),
        "reason": result.reason,
        "text": result.text,
        "findings": [
            {"label": f.finding.label, "detector": f.finding.detector, "action": f.action,
             "score": round(float(f.finding.score), 4), "start": f.finding.start, "end": f.finding.end,
             "explanation": f.finding.explanation}
            for f in result.findings
        ],
        "errors": result.errors,
    }  # fmt: skip


async def guard_scan(request: Request) -> Response:
    """Scan `{"text", "stage", "profile"?}`; a profile other than the team's needs the admin role."""
    gateway: Gateway = request.app.state.gateway
    try:
        principal, _ = await gateway.authenticate(request.headers.get("authorization"), request.headers.get("api-key"))
        body = parse_object(await request.body())
        text = body.get("text")
        if not isinstance(text, str):
            raise RequestError("text must be a string", param="text")
        try:
            stage = Stage(body.get("stage", "input"))
        except ValueError:
            raise RequestError("stage must be input, context or output", param="stage") from None
        name = body.get("profile")
        if name is not None:
            if not isinstance(name, str) or name not in gateway.guard.pipelines:
                raise RequestError("unknown guard profile", param="profile")
            own = gateway.guard.for_team(principal.team)
            if not principal.is_admin and (own is None or own.name != name):
                raise PermissionDenied("only admins may scan with another team's profile")
            pipeline: GuardPipeline | None = gateway.guard.pipelines[name]
        else:
            pipeline = gateway.guard.for_team(principal.team)
        if pipeline is None:
            raise RequestError("no guard profile applies to this caller", code="no_guard_profile")
        system_prompt = body.get("system_prompt", "")
        if not isinstance(system_prompt, str):
            raise RequestError("system_prompt must be a string", param="system_prompt")
        result = await scan_text(pipeline, gateway.guard.settings, stage, text, system_prompt=system_prompt)
        return json_response(scan_view(pipeline, result))
    except GengateError as exc:
        return error_response(exc)
