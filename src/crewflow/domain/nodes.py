"""Pure evaluation of the node kinds that need no runtime: input, output and router."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from crewflow.domain.errors import ExpressionError, NodeExecutionError, TemplateError
from crewflow.domain.expressions import Expression, compile_expression
from crewflow.domain.flow import Flow, Node
from crewflow.domain.templates import render_value

__all__ = ["choose_branch", "input_output", "output_value"]


def input_output(flow: Flow, run_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """An input node's output: the run's inputs (declared ones with their defaults applied)."""
    return flow.resolve_inputs(run_inputs)


def output_value(node: Node, parents: Mapping[str, Any], context: Mapping[str, Any]) -> Any:
    """An output node's value: its ``value`` template, else its single parent's output, else all parents'."""
    if node.value is not None:
        try:
            return render_value(node.value, context)
        except TemplateError as exc:
            raise NodeExecutionError(str(exc), retryable=False) from None
    live = {k: v for k, v in parents.items() if v is not None}
    if len(live) == 1:
        return next(iter(live.values()))
    return live


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Expression:
    return compile_expression(source)


def choose_branch(node: Node, context: Mapping[str, Any]) -> str:
    """The first route whose condition holds, else the default."""
    for index, route in enumerate(node.routes):
        try:
            if _compiled(route.when).evaluate(context):
                return route.to
        except ExpressionError as exc:
            raise NodeExecutionError(f"routes[{index}].when: {exc}", retryable=False) from None
    if node.default is None:
        raise NodeExecutionError("no route matched and the router has no default", retryable=False)
    return node.default
