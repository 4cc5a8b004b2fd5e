"""``{{ nodes.<id>.output }}`` / ``{{ inputs.<name> }}`` templates: parse references, render values."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crewflow.domain.errors import TemplateError

__all__ = ["Reference", "lookup", "references", "render", "render_value", "to_text"]

# No braces inside a placeholder and the spaces stripped in code: the former ``\{\{\s*(.*?)\s*\}\}`` backtracked
# cubically ("{{" and 4,000 spaces took 44 s), a denial of service through any text field being validated.
_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$|^[0-9]+$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed placeholder: ``root`` is ``nodes`` or ``inputs``; ``path`` the rest, split on dots."""

    text: str
    root: str
    path: tuple[str, ...]

    @property
    def node_id(self) -> str | None:
        return self.path[0] if self.root == "nodes" and self.path else None


def _parse(expression: str) -> Reference:
    parts = expression.split(".")
    if not all(_SEGMENT.match(p) for p in parts):
        raise TemplateError(f"'{{{{ {expression} }}}}' is not a reference like nodes.<id>.output or inputs.<name>")
    root, path = parts[0], tuple(parts[1:])
    if root == "nodes":
        if len(path) < 2 or path[1] != "output":
            raise TemplateError(f"'{{{{ {expression} }}}}' must read nodes.<id>.output[.<key>...]")
    elif root == "inputs":
        if not path:
            raise TemplateError(f"'{{{{ {expression} }}}}' must name an input: inputs.<name>")
    else:
        raise TemplateError(f"'{{{{ {expression} }}}}' must start with 'nodes.' or 'inputs.'")
    return Reference(expression, root, path)


def references(template: str) -> list[Reference]:
    """Every placeholder of ``template``, parsed. Raises ``TemplateError`` on the first malformed one."""
    return [_parse(m.group(1).strip()) for m in _PLACEHOLDER.finditer(template)]


def lookup(ref: Reference, context: Mapping[str, Any]) -> Any:
    """Resolve a reference in ``{"nodes": {id: {"output": ...}}, "inputs": {...}}``."""
    current: Any = context.get(ref.root)
    for segment in ref.path:
        if isinstance(current, Mapping) and segment in current:
            current = current[segment]
        elif isinstance(current, list | tuple) and segment.isdigit() and int(segment) < len(current):
            current = current[int(segment)]
        else:
            raise TemplateError(f"'{{{{ {ref.text} }}}}' has no value in this run")
    return current


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Fill every placeholder with its value as text (JSON for structured values)."""
    if "{{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: to_text(lookup(_parse(m.group(1).strip()), context)), template)


def render_value(template: str, context: Mapping[str, Any]) -> Any:
    """Like ``render``, but a template that is exactly one placeholder keeps the value's own type."""
    stripped = template.strip()
    match = _PLACEHOLDER.match(stripped)
    if match and match.end() == len(stripped):  # not fullmatch: ``.*?`` would swallow "a }} {{ b"
        return lookup(_parse(match.group(1).strip()), context)
    return render(template, context)
