"""Approved response templates: sandboxed by construction.

A template is plain text with `{{ name }}` placeholders. Rendering substitutes validated slot values and nothing
else: no expressions, attribute access, filters or loops exist, so a template (or a slot value) cannot run code
or reach data it was not given. Slot values are checked against their declared type, length, pattern or enum;
undeclared or invalid values are refused with a clear error.
"""

from __future__ import annotations

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
