from __future__ import annotations

import datetime as dt
import time

import pytest

from crewflow.domain.errors import TemplateError
from crewflow.domain.templates import Reference, lookup, references, render, render_value, to_text

pytestmark = pytest.mark.unit

CONTEXT = {
    "nodes": {
        "research": {"output": "facts about bees"},
        "score": {"output": {"value": 7, "tags": ["a", "b"], "nested": {"ok": True}}},
        "empty": {"output": None},
    },
    "inputs": {"topic": "bees", "count": 3, "flags": [True, False]},
}


def test_references_parse_nodes_and_inputs_with_their_paths() -> None:
    refs = references(
        "Write about {{ inputs.topic }} using {{nodes.research.output}} and {{ nodes.score.output.value }}"
    )
    assert [(r.root, r.path, r.node_id) for r in refs] == [
        ("inputs", ("topic",), None),
        ("nodes", ("research", "output"), "research"),
        ("nodes", ("score", "output", "value"), "score"),
    ]


def test_references_of_text_without_placeholders_is_empty() -> None:
    assert references("plain text with { single } braces") == []


def test_node_ids_with_dashes_and_numeric_segments_are_accepted() -> None:
    (ref,) = references("{{ nodes.web-search_2.output.items.0 }}")
    assert ref.node_id == "web-search_2"
    assert ref.path == ("web-search_2", "output", "items", "0")


@pytest.mark.parametrize(
    "template",
    [
        "{{ }}",
        "{{ nodes }}",
        "{{ nodes.research }}",
        "{{ nodes.research.result }}",
        "{{ inputs }}",
        "{{ secrets.key }}",
        "{{ nodes.research.output.a b }}",
        "{{ inputs.topic | upper }}",
        "{{ inputs..topic }}",
        "{{ inputs.topic() }}",
    ],
)
def test_malformed_placeholders_raise_template_error(template: str) -> None:
    with pytest.raises(TemplateError):
        references(template)


def test_the_error_names_the_offending_placeholder() -> None:
    with pytest.raises(TemplateError, match=r"secrets\.key"):
        references("ok {{ inputs.a }} then {{ secrets.key }}")


def test_render_fills_text_and_serialises_structured_values_as_json() -> None:
    text = render("{{ inputs.topic }}: {{ nodes.score.output.tags }} / {{ nodes.score.output.value }}", CONTEXT)
    assert text == 'bees: ["a", "b"] / 7'


def test_render_indexes_lists_and_renders_none_as_empty_text() -> None:
    assert render("[{{ nodes.score.output.tags.1 }}][{{ nodes.empty.output }}]", CONTEXT) == "[b][]"


def test_render_leaves_text_without_placeholders_unchanged() -> None:
    assert render("no {placeholders} here", CONTEXT) == "no {placeholders} here"


@pytest.mark.parametrize(
    "template",
    [
        "{{ inputs.missing }}",
        "{{ nodes.nobody.output }}",
        "{{ nodes.score.output.missing }}",
        "{{ nodes.score.output.tags.2 }}",
        "{{ nodes.research.output.0 }}",
    ],
)
def test_render_of_a_value_missing_from_the_run_raises(template: str) -> None:
    with pytest.raises(TemplateError, match="has no value"):
        render(template, CONTEXT)


def test_render_value_of_a_single_placeholder_keeps_the_value_type() -> None:
    assert render_value("{{ nodes.score.output }}", CONTEXT) == CONTEXT["nodes"]["score"]["output"]  # type: ignore[index]
    assert render_value("  {{ inputs.count }}  ", CONTEXT) == 3
    assert render_value("{{ inputs.flags }}", CONTEXT) == [True, False]
    assert render_value("{{ nodes.empty.output }}", CONTEXT) is None


def test_render_value_of_mixed_text_returns_text() -> None:
    assert render_value("n={{ inputs.count }}", CONTEXT) == "n=3"


def test_render_value_with_two_placeholders_renders_both_as_text() -> None:
    # regression: fullmatch with a lazy group swallowed "count }} {{ inputs.topic" as one placeholder
    assert render_value("{{ inputs.count }} {{ inputs.topic }}", CONTEXT) == "3 bees"


def test_to_text_of_values_json_cannot_encode_falls_back_to_str() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5)
    assert to_text({"at": moment}) == '{"at": "2026-01-02 03:04:05"}'


def test_lookup_reads_the_path_of_a_reference() -> None:
    ref = Reference("nodes.score.output.nested.ok", "nodes", ("score", "output", "nested", "ok"))
    assert lookup(ref, CONTEXT) is True


def _best_time(text: str) -> float:
    best = float("inf")
    for _ in range(15):
        started = time.perf_counter()
        references(text)
        best = min(best, time.perf_counter() - started)
    return best


def test_scanning_an_unclosed_placeholder_grows_linearly_with_the_text() -> None:
    # regression: "{{" followed by spaces backtracked cubically (4,000 spaces took 44 s) - a denial of service
    # through any text field that validation scans. Four times the text must cost about four times as much
    # (cubic growth would be 64 times, quadratic 16).
    small = ("{{" + " " * 200 + "\n") * 50
    large = ("{{" + " " * 800 + "\n") * 50
    assert references(small + large) == []
    assert _best_time(large) / _best_time(small) < 12


def test_placeholders_hold_no_braces_and_may_span_lines() -> None:
    assert [r.text for r in references("{{{ inputs.a }}} {{\n inputs.b\n}}")] == ["inputs.a", "inputs.b"]
