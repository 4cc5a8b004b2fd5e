from __future__ import annotations

from typing import Any

import pytest

from crewflow.domain.errors import ExpressionError
from crewflow.domain.expressions import MAX_DEPTH, MAX_LENGTH, compile_expression

pytestmark = pytest.mark.unit

CONTEXT: dict[str, Any] = {
    "nodes": {
        "classify": {"output": {"label": "Urgent", "score": 0.9, "tags": ["billing", "vip"]}},
        "draft": {"output": "  Hello World  "},
        "n": {"output": 7},
    },
    "inputs": {"topic": "bees", "limit": 3, "words": ["a", "bb", "ccc"]},
}


def evaluate(source: str) -> Any:
    return compile_expression(source).evaluate(CONTEXT)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("nodes.classify.output.label == 'Urgent'", True),
        ("nodes.classify.output.score > 0.5 and nodes.n.output >= 7", True),
        ("nodes.classify.output.score < 0.5 or inputs.limit != 3", False),
        ("not nodes.classify.output.score", False),
        ("1 < nodes.n.output < 10", True),
        ("'vip' in nodes.classify.output.tags", True),
        ("'gold' not in nodes.classify.output.tags", True),
        ("nodes['classify']['output']['tags'][0]", "billing"),
        ("nodes.classify.output.tags[-1]", "vip"),
        ("nodes.classify.output.tags[5]", None),
        ("nodes.classify.output.missing", None),
        ("nodes.nobody.output", None),
        ("inputs.limit + 2 * 3 - 1", 8),
        ("nodes.n.output / 2", 3.5),
        ("nodes.n.output // 2", 3),
        ("nodes.n.output % 4", 3),
        ("-inputs.limit", -3),
        ("'big' if nodes.n.output > 5 else 'small'", "big"),
        ("[1, 2] + [3]", [1, 2, 3]),
        ("(1, 2)", [1, 2]),
        ("inputs.topic + '!'", "bees!"),
        ("true and not false and null == None", True),
        ("len(inputs.words)", 3),
        ("lower(nodes.classify.output.label)", "urgent"),
        ("upper(inputs.topic)", "BEES"),
        ("strip(nodes.draft.output)", "Hello World"),
        ("startswith(strip(nodes.draft.output), 'Hello')", True),
        ("endswith(inputs.topic, 'es')", True),
        ("contains(nodes.draft.output, 'World')", True),
        ("contains(nodes.classify.output.tags, 'vip')", True),
        ("str(inputs.limit) + '4'", "34"),
        ("int('4') + float('0.5') + abs(-1) + round(2.4)", 7.5),
        ("min(3, 1, 2) + max([4, 5])", 6),
        ("bool(inputs.words)", True),
    ],
)
def test_allowed_operations_evaluate(source: str, expected: Any) -> None:
    assert evaluate(source) == expected


def test_and_or_short_circuit_and_return_the_deciding_operand() -> None:
    assert evaluate("inputs.limit and inputs.topic") == "bees"
    assert evaluate("0 or '' or inputs.limit") == 3
    # the right side would fail (division by zero) if it were evaluated
    assert evaluate("false and 1 / 0") is False
    assert evaluate("true or 1 / 0") is True


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("nodes.__class__", "cannot be read"),
        ("nodes.classify._private", "cannot be read"),
        ("inputs.topic.__len__", "cannot be read"),
        ("open('/etc/passwd')", "only these functions"),
        ("eval('1')", "only these functions"),
        ("__import__('os')", "only these functions"),
        ("inputs.topic.upper()", "only these functions"),
        ("(lambda: 1)", "Lambda"),
        ("[x for x in inputs.words]", "ListComp"),
        ("{x for x in inputs.words}", "SetComp"),
        ("(x for x in inputs.words)", "GeneratorExp"),
        ("{'a': 1}", "Dict"),
        ("2 ** 10", "Pow"),
        ("inputs.limit << 2", "LShift"),
        ("inputs.words[0:2]", "Slice"),
        ("f'{inputs.topic}'", "JoinedStr"),
        ("(y := 1)", "NamedExpr"),
        ("inputs is None", "Is"),
        ("len(inputs.words, key=1)", "keyword"),
        ("len(*inputs.words)", "Starred"),
        ("os", "unknown name"),
        ("len", "unknown name"),
        ("", "empty"),
        ("   ", "empty"),
        ("nodes.a ==", "syntax error"),
        ("x = 1", "syntax error"),
    ],
)
def test_forbidden_constructs_are_rejected_when_compiled(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        compile_expression(source)


@pytest.mark.parametrize(
    "source",
    [
        "'ab' * 1000000",
        "inputs.words * 1000000",
        "1000000 * inputs.topic",
        "'%0999999999d' % 1",  # printf-style padding would allocate a gigabyte before any size check
        "inputs.topic % inputs.limit",
    ],
)
def test_string_and_list_repetition_or_formatting_is_refused_at_evaluation(source: str) -> None:
    expression = compile_expression(source)
    with pytest.raises(ExpressionError, match="only works on numbers"):
        expression.evaluate(CONTEXT)


def test_concatenation_results_are_bounded_in_size() -> None:
    context = {"inputs": {"big": "x" * 60_000}}
    with pytest.raises(ExpressionError, match="too large"):
        compile_expression("inputs.big + inputs.big").evaluate(context)


@pytest.mark.parametrize(
    "source",
    [
        "-" * (MAX_DEPTH + 5) + "1",
        "not " * (MAX_DEPTH + 5) + "true",
        "(" * 150 + "1" + ")" * 150 + " + 1" * 40,
        "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5),
        "len(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5),
        " + ".join(["1"] * (MAX_DEPTH + 5)),
        "(" * 300 + "1" + ")" * 300,
        "-" * (MAX_LENGTH - 1) + "1",
    ],
)
def test_deep_nesting_is_rejected(source: str) -> None:
    assert len(source) <= MAX_LENGTH
    with pytest.raises(ExpressionError, match=r"nested too deeply|too many nested"):
        compile_expression(source)


def test_moderate_nesting_is_accepted() -> None:
    assert compile_expression(" + ".join(["1"] * 10)).evaluate({}) == 10


def test_overlong_input_is_rejected_before_parsing() -> None:
    source = "1 + " * (MAX_LENGTH // 4) + "1"
    assert len(source) > MAX_LENGTH
    with pytest.raises(ExpressionError, match=f"longer than {MAX_LENGTH}"):
        compile_expression(source)


@pytest.mark.parametrize(
    "source",
    [
        "inputs.topic < 3",
        "len(inputs.limit)",
        "lower(inputs.limit)",
        "contains(inputs.limit, 1)",
        "nodes.n.output / 0",
        "int('not a number')",
        "int(float('inf'))",
        "min()",
        "-inputs.topic",
    ],
)
def test_runtime_errors_become_expression_errors(source: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(source)


def test_node_references_lists_nodes_read_by_attribute_and_by_key() -> None:
    expression = compile_expression(
        "nodes.a.output == 1 and nodes['b'].output and len(nodes.c.output.items) > inputs.limit and nodes.a.output.x"
    )
    assert expression.node_references() == {"a", "b", "c"}


def test_node_references_ignores_inputs_and_constants() -> None:
    assert compile_expression("inputs.nodes == 'nodes' and true").node_references() == set()


def test_input_references_lists_inputs_read_by_attribute_and_by_key() -> None:
    expression = compile_expression("inputs.topic == 'x' or inputs['limit'] > 2 or nodes.inputs.output")
    assert expression.input_references() == {"topic", "limit"}
