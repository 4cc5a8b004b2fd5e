"""A small, safe expression language for routers.

Syntax is a subset of Python expressions, parsed with ``ast`` and interpreted by walking the tree: no
``eval``, no attribute access on objects (``a.b`` reads key ``b`` of mapping ``a``), no calls except a fixed
set of pure functions, no comprehensions, lambdas or ``**``. Length and depth are bounded.

Names: ``nodes`` (``nodes.research.output``), ``inputs``, ``true``/``false``/``null`` and the functions
``len lower upper strip str int float bool contains startswith endswith abs min max round``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crewflow.domain.errors import ExpressionError

__all__ = ["Expression", "compile_expression"]

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_STRING_RESULT = 100_000


def _contains(haystack: Any, needle: Any) -> bool:
    if isinstance(haystack, str):
        return str(needle) in haystack
    if isinstance(haystack, Mapping | list | tuple):
        return needle in haystack
    raise ExpressionError("contains() needs a string, list or mapping")


def _text(fn: Callable[..., Any]) -> Callable[..., Any]:
    def apply(value: Any, *args: Any) -> Any:
        if not isinstance(value, str):
            raise ExpressionError(f"{fn.__name__}() needs a string")
        return fn(value, *args)

    return apply


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "strip": _text(str.strip),
    "startswith": _text(str.startswith),
    "endswith": _text(str.endswith),
    "contains": _contains,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
}
CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
ROOTS = ("nodes", "inputs")

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: operator.contains(b, a),
    ast.NotIn: lambda a, b: not operator.contains(b, a),
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _check(node: ast.AST, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ExpressionError("expression is nested too deeply")
    allowed = (
        ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
        ast.Compare, ast.BinOp, ast.Constant, ast.Name, ast.Load, ast.Attribute, ast.Subscript,
        ast.Call, ast.List, ast.Tuple, ast.IfExp, *_COMPARE, *_BINARY,
    )  # fmt: skip
    if not isinstance(node, allowed):
        raise ExpressionError(f"'{type(node).__name__}' is not allowed in router expressions")
    if isinstance(node, ast.Name) and node.id not in ROOTS and node.id not in CONSTANTS:
        raise ExpressionError(f"unknown name '{node.id}' (use nodes.<id>.output or inputs.<name>)")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise ExpressionError(f"'{node.attr}' cannot be read")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise ExpressionError(f"only these functions can be called: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise ExpressionError("keyword arguments are not allowed")
        for arg in node.args:
            _check(arg, depth + 1)
        return
    for child in ast.iter_child_nodes(node):
        _check(child, depth + 1)


def _path(node: ast.AST) -> tuple[str, ...] | None:
    """``nodes.a.output.x`` → ("nodes", "a", "output", "x"), or None when not a plain dotted path."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ROOTS:
        parts.append(node.id)
        return tuple(reversed(parts))
    return None


@dataclass(frozen=True, slots=True)
class Expression:
    source: str
    tree: ast.Expression

    def node_references(self) -> set[str]:
        """Ids of nodes whose output this expression reads."""
        found: set[str] = set()
        for sub in ast.walk(self.tree):
            path = _path(sub) if isinstance(sub, ast.Attribute) else None
            if path and path[0] == "nodes" and len(path) >= 2:
                found.add(path[1])
            if (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "nodes"
                and isinstance(sub.slice, ast.Constant)
                and isinstance(sub.slice.value, str)
            ):
                found.add(sub.slice.value)
        return found

    def input_references(self) -> set[str]:
        """Names of run inputs this expression reads (``inputs.x`` or ``inputs['x']``)."""
        found: set[str] = set()
        for sub in ast.walk(self.tree):
            path = _path(sub) if isinstance(sub, ast.Attribute) else None
            if path and path[0] == "inputs" and len(path) >= 2:
                found.add(path[1])
            if (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == "inputs"
                and isinstance(sub.slice, ast.Constant)
                and isinstance(sub.slice.value, str)
            ):
                found.add(sub.slice.value)
        return found

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        try:
            return _Evaluator(context).visit(self.tree.body)
        except ExpressionError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, OverflowError) as exc:
            raise ExpressionError(f"'{self.source}' failed: {exc}") from None


class _Evaluator:
    def __init__(self, context: Mapping[str, Any]) -> None:
        self.context = context

    def visit(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return CONSTANTS[node.id] if node.id in CONSTANTS else self.context.get(node.id, {})
        if isinstance(node, ast.Attribute):
            return self._member(self.visit(node.value), node.attr)
        if isinstance(node, ast.Subscript):
            return self._member(self.visit(node.value), self.visit(node.slice))
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                result: Any = True
                for value in node.values:
                    result = self.visit(value)
                    if not result:
                        return result
                return result
            result = False
            for value in node.values:
                result = self.visit(value)
                if result:
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.visit(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Mult | ast.Mod) and not (
                isinstance(left, int | float) and isinstance(right, int | float)
            ):  # str * int and "%0999999999d" % x would build huge strings before any size check
                raise ExpressionError(f"'{'*' if isinstance(node.op, ast.Mult) else '%'}' only works on numbers")
            result = _BINARY[type(node.op)](left, right)
            if isinstance(result, str | list) and len(result) > MAX_STRING_RESULT:
                raise ExpressionError("expression result is too large")
            return result
        if isinstance(node, ast.IfExp):
            return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)
        if isinstance(node, ast.List | ast.Tuple):
            return [self.visit(item) for item in node.elts]
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return FUNCTIONS[node.func.id](*(self.visit(arg) for arg in node.args))
        raise ExpressionError(f"'{type(node).__name__}' is not allowed")

    @staticmethod
    def _member(container: Any, key: Any) -> Any:
        if isinstance(container, Mapping):
            return container.get(key)
        if isinstance(container, list | tuple | str) and isinstance(key, int):
            return container[key] if -len(container) <= key < len(container) else None
        return None


def compile_expression(source: str) -> Expression:
    """Parse and check ``source``; raises ``ExpressionError`` with a readable reason."""
    if not source.strip():
        raise ExpressionError("expression is empty")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"syntax error at column {exc.offset or 0}: {exc.msg}") from None
    _check(tree, 0)
    return Expression(source, tree)
