"""Approved response templates: sandboxed by construction.

A template is plain text with `{{ name }}` placeholders. Rendering substitutes validated slot values and nothing
else: no expressions, attribute access, filters or loops exist, so a template (or a slot value) cannot run code
or reach data it was not given. Slot values are checked against their declared type, length, pattern or enum;
undeclared or invalid values are refused with a clear error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from gengate.settings import ResponseTemplate, TemplateSlot

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """A template or one of its slot values is invalid."""


def placeholders(text: str) -> list[str]:
    """The slot names a template text uses."""
    return _PLACEHOLDER.findall(text)


def check_template(name: str, template: ResponseTemplate) -> None:
    """Every placeholder must be a declared slot (checked at start-up, so typos fail early)."""
    for slot in placeholders(template.text):
        if slot not in template.slots:
            raise TemplateError(f"template {name!r} uses undeclared slot {slot!r}")
    for slot, spec in template.slots.items():
        if spec.type == "enum" and not spec.values:
            raise TemplateError(f"template {name!r}: enum slot {slot!r} needs values")
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                raise TemplateError(f"template {name!r}: slot {slot!r} has an invalid pattern: {exc}") from None


def _valid(name: str, spec: TemplateSlot, value: object) -> str:
    if spec.type == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise TemplateError(f"slot {name!r} must be an integer")
        return str(value)
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    if text is None:
        raise TemplateError(f"slot {name!r} must be a string")
    if spec.type == "enum":
        if text not in (spec.values or []):
            raise TemplateError(f"slot {name!r} must be one of {', '.join(spec.values or [])}")
        return text
    if len(text) > spec.max_length:
        raise TemplateError(f"slot {name!r} is longer than {spec.max_length} characters")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, text):
        raise TemplateError(f"slot {name!r} does not match its pattern")
    return text


def render(name: str, template: ResponseTemplate, values: Mapping[str, object]) -> str:
    """The template's text with its slots filled; missing optional slots render empty."""
    unknown = set(values) - set(template.slots)
    if unknown:
        raise TemplateError(f"template {name!r} has no slot(s) {', '.join(sorted(unknown))}")
    checked = {k: _valid(k, template.slots[k], v) for k, v in values.items()}
    return _PLACEHOLDER.sub(lambda m: checked.get(m.group(1), ""), template.text)


# Slots gengate fills itself; the model is never asked for them.
GATEWAY_SLOTS = frozenset({"request_id"})


def slot_schema(name: str, template: ResponseTemplate) -> dict[str, object]:
    """An OpenAI `response_format` (JSON schema) asking the model for exactly the template's model-filled slots."""
    properties: dict[str, object] = {}
    for slot, spec in template.slots.items():
        if slot in GATEWAY_SLOTS:
            continue
        if spec.type == "int":
            properties[slot] = {"type": "integer"}
        elif spec.type == "enum":
            properties[slot] = {"type": "string", "enum": list(spec.values or [])}
        else:
            prop: dict[str, object] = {"type": "string", "maxLength": spec.max_length}
            if spec.pattern is not None:
                prop["pattern"] = spec.pattern
            properties[slot] = prop
    schema = {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}
    return {
        "type": "json_schema",
        "json_schema": {"name": name.replace("-", "_")[:64], "strict": True, "schema": schema},
    }


def render_model_answer(name: str, template: ResponseTemplate, answer: str, request_id: str) -> str:
    """Parse the model's JSON slot values, validate them and render; TemplateError when anything is off."""
    try:
        values = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        raise TemplateError("the model's answer is not JSON") from None
    if not isinstance(values, dict):
        raise TemplateError("the model's answer is not a JSON object")
    if GATEWAY_SLOTS & set(values):
        raise TemplateError("the model tried to fill a slot gengate owns")
    missing = [s for s in template.slots if s not in GATEWAY_SLOTS and s not in values]
    if missing:
        raise TemplateError(f"the model left slot(s) {', '.join(missing)} empty")
    if "request_id" in template.slots:
        values["request_id"] = request_id
    return render(name, template, values)
