from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crewflow.domain.agents import Agent, Crew, CrewTask, Process, ToolRef
from crewflow.domain.codec import flow_from_dict, flow_to_dict
from crewflow.domain.errors import FlowFormatError
from crewflow.domain.flow import Edge, Flow, InputSpec, Node, NodeKind, RetryPolicy, Route

pytestmark = pytest.mark.unit


def rich_flow() -> Flow:
    return Flow(
        id="research",
        name="Research and write",
        description="two agents and a crew",
        version=3,
        inputs=(
            InputSpec("topic", "what to research", required=True),
            InputSpec("tone", default="plain"),
            InputSpec("limits", default={"words": 300, "tags": ["a"]}),
        ),
        agents={
            "researcher": Agent(
                id="researcher",
                role="Researcher",
                goal="Find facts",
                backstory="curious",
                provider="openai",
                model="gpt-4o-mini",
                tools=("search",),
                allow_delegation=True,
                max_iter=5,
                temperature=0.3,
                cache=False,
            ),
            "writer": Agent(id="writer", role="Writer", goal="Write"),
        },
        crews={
            "editors": Crew(
                id="editors",
                agents=("writer", "researcher"),
                process=Process.HIERARCHICAL,
                description="d",
                manager_provider="anthropic",
                tasks=(
                    CrewTask("check", "Check facts", "a list", "researcher"),
                    CrewTask("polish", "Polish", context=("check",)),
                ),
            )
        },
        tools={"search": ToolRef(id="search", description="web", input_schema={"type": "object"}, image="img:1")},
        nodes=(
            Node(id="in", kind=NodeKind.INPUT, position=(0.0, 10.5)),
            Node(
                id="research",
                kind=NodeKind.AGENT,
                label="Research",
                agent="researcher",
                task="Research {{ inputs.topic }}",
                expected_output="facts",
                inputs={"t": "{{ inputs.topic }}"},
                retry=RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=3.0, max_delay=9.0, jitter=0.0),
                timeout=30.0,
            ),
            Node(
                id="route",
                kind=NodeKind.ROUTER,
                routes=(Route("len(nodes.research.output) > 100", "edit"),),
                default="out",
            ),
            Node(id="edit", kind=NodeKind.CREW, crew="editors"),
            Node(id="tool", kind=NodeKind.TOOL, tool="search"),
            Node(id="out", kind=NodeKind.OUTPUT, value="{{ nodes.research.output }}"),
        ),
        edges=(
            Edge("in", "research"),
            Edge("research", "route"),
            Edge("route", "edit"),
            Edge("route", "out"),
            Edge("in", "tool"),
        ),
        max_parallel=4,
        timeout=600.0,
    )


def test_round_trip_of_a_flow_using_every_field() -> None:
    flow = rich_flow()
    assert flow_from_dict(flow_to_dict(flow)) == flow


def test_round_trip_of_a_minimal_flow_with_empty_name_and_empty_optional_strings() -> None:
    # regression: "" name came back as the id, and value="" / default="" came back as None
    flow = Flow(
        id="f",
        nodes=(Node(id="a", kind=NodeKind.OUTPUT, value=""), Node(id="r", kind=NodeKind.ROUTER, default="")),
        edges=(),
    )
    assert flow_from_dict(flow_to_dict(flow)) == flow


# The codec copies strings and numbers through unchanged; what a round trip can get wrong is presence,
# absence, emptiness and int/float typing, so small pools of values cover it. Strategies are built once at
# module level: hypothesis validates every new strategy object, which dominated the run time.
_ids = st.sampled_from(["a", "b", "in", "out", "r_1", "x-y", "node9"])
_text = st.sampled_from(["", "x", " spaced ", "Research {{ inputs.topic }}", "é ü 漢字", "0"])
_maybe_text = st.none() | _text
_floats = st.sampled_from([0.0, 0.5, 1.0, 2.0, 99.5])
_kinds = st.sampled_from(list(NodeKind))
_node_inputs = st.dictionaries(_ids, _text, max_size=2)
_routes = st.lists(st.builds(Route, _text.filter(bool), _ids), max_size=2).map(tuple)
_retries = st.just(RetryPolicy()) | st.builds(
    RetryPolicy,
    st.integers(1, 100),
    _floats,
    st.sampled_from([1.0, 1.5, 10.0]),
    _floats,
    st.sampled_from([0.0, 0.2, 1.0]),
)
_timeouts = st.none() | st.sampled_from([0.001, 1, 3600.0])
_positions = st.none() | st.tuples(_floats, st.sampled_from([-10.0, 0.0, 1e6]))
_json = st.none() | st.booleans() | st.integers() | _text | st.lists(st.integers(), max_size=3)
_specs = st.lists(st.builds(InputSpec, _ids, _text, _json, st.booleans()), max_size=3, unique_by=lambda s: s.name)
_node_ids = st.lists(_ids, min_size=1, max_size=4, unique=True)


@st.composite
def _nodes(draw: st.DrawFn, ident: str) -> Node:
    return Node(
        id=ident,
        kind=draw(_kinds),
        label=draw(_text),
        agent=draw(_maybe_text),
        crew=draw(_maybe_text),
        tool=draw(_maybe_text),
        task=draw(_text),
        expected_output=draw(_text),
        inputs=draw(_node_inputs),
        routes=draw(_routes),
        default=draw(_maybe_text),
        value=draw(_maybe_text),
        retry=draw(_retries),
        timeout=draw(_timeouts),
        position=draw(_positions),
    )


@st.composite
def _flows(draw: st.DrawFn) -> Flow:
    ids = draw(_node_ids)
    nodes = tuple(draw(_nodes(i)) for i in ids)
    ends = st.sampled_from(ids)
    edge_list = draw(st.lists(st.tuples(ends, ends), max_size=6))
    return Flow(
        id=draw(_ids),
        name=draw(_text),
        description=draw(_text),
        version=draw(st.integers(1, 1000)),
        inputs=tuple(draw(_specs)),
        nodes=nodes,
        edges=tuple(Edge(a, b) for a, b in edge_list),
        max_parallel=draw(st.integers(1, 256)),
        timeout=draw(_timeouts),
    )


@given(_flows())
def test_round_trip_of_generated_flows(flow: Flow) -> None:
    assert flow_from_dict(flow_to_dict(flow)) == flow


def problems_of(doc: Any) -> dict[str, str]:
    with pytest.raises(FlowFormatError) as caught:
        flow_from_dict(doc)
    return {p.where: p.message for p in caught.value.problems}


def node_doc(**fields: Any) -> dict[str, Any]:
    return {"id": "a", "kind": "agent", **fields}


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of(["nodes"]) == {"": "a flow document must be a mapping at the top level"}


def test_missing_nodes_and_unknown_top_level_keys_are_located() -> None:
    assert problems_of({"nodez": []}) == {"nodez": "is not a flow field", "nodes": "is required"}


@pytest.mark.parametrize(
    ("doc", "where", "message"),
    [
        ({"nodes": {}}, "nodes", "must be a list, got dict"),
        ({"nodes": [], "version": "2"}, "version", "must be a integer, got str"),
        ({"nodes": [], "max_parallel": True}, "max_parallel", "must be a integer"),
        ({"nodes": [], "timeout": "soon"}, "timeout", "must be a float, got str"),
        ({"nodes": [], "name": 5}, "name", "must be a string, got int"),
        ({"nodes": ["a"]}, "nodes[0]", "must be a mapping"),
        ({"nodes": [node_doc(colour="red")]}, "nodes[0].colour", "is not a node field"),
        ({"nodes": [{"kind": "agent"}]}, "nodes[0].id", "is required"),
        ({"nodes": [{"id": "a"}]}, "nodes[0] 'a'.kind", "is required"),
        ({"nodes": [node_doc(kind="robot")]}, "nodes[0] 'a'.kind", "'robot' is not one of input, agent"),
        ({"nodes": [node_doc(task=["x"])]}, "nodes[0] 'a'.task", "must be a string, got list"),
        ({"nodes": [node_doc(inputs={"x": 1})]}, "nodes[0] 'a'.inputs", "must map names to template strings"),
        ({"nodes": [node_doc(routes=["x"])]}, "nodes[0] 'a'.routes[0]", "must be a mapping with 'when' and 'to'"),
        ({"nodes": [node_doc(routes=[{"to": "b"}])]}, "nodes[0] 'a'.routes[0].when", "is required"),
        ({"nodes": [node_doc(retry={"max_attempts": "3"})]}, "nodes[0] 'a'.retry.max_attempts", "must be a integer"),
        ({"nodes": [node_doc(retry={"max_attempts": 0})]}, "nodes[0] 'a'.retry", "between 1 and 100"),
        ({"nodes": [node_doc(retry={"jitter": 2})]}, "nodes[0] 'a'.retry", "retry.jitter must be between 0 and 1"),
        ({"nodes": [node_doc(timeout=0)]}, "nodes[0] 'a'.timeout", "must be positive (seconds)"),
        ({"nodes": [node_doc(position=[1])]}, "nodes[0] 'a'.position", "must be [x, y] or {x: .., y: ..}"),
        ({"nodes": [], "edges": ["a => b"]}, "edges[0]", "'a => b' is not 'source -> target'"),
        ({"nodes": [], "edges": ["a -> b -> c"]}, "edges[0]", "is not 'source -> target'"),
        ({"nodes": [], "edges": [["a", "b", "c"]]}, "edges[0]", "must be 'a -> b', [a, b] or {from: a, to: b}"),
        ({"nodes": [], "edges": [{"from": "a"}]}, "edges[0]", "must be 'a -> b', [a, b] or {from: a, to: b}"),
        ({"nodes": [], "agents": [{"role": "r"}]}, "agents[0]", "must be a mapping with a string 'id'"),
        ({"nodes": [], "agents": {"w": "writer"}}, "agents.w", "must be a mapping"),
        ({"nodes": [], "agents": "w"}, "agents", "must be a mapping of id to definition, or a list"),
        ({"nodes": [], "agents": {"w": {"goal": "g"}}}, "agents.w.role", "is required"),
        ({"nodes": [], "agents": {"w": {"role": "r", "goal": "g", "max_iter": 0}}}, "agents.w", "max_iter"),
        ({"nodes": [], "agents": {"w": {"role": "r", "goal": "g", "tools": [1]}}}, "agents.w.tools", "list of str"),
        (
            {"nodes": [], "crews": {"c": {"agents": ["w"], "tasks": [{"description": "d"}], "process": "mob"}}},
            "crews.c.process",
            "must be 'sequential' or 'hierarchical'",
        ),
        ({"nodes": [], "crews": {"c": {"agents": ["w"], "tasks": ["t"]}}}, "crews.c.tasks[0]", "must be a mapping"),
        (
            {"nodes": [], "crews": {"c": {"agents": ["w"], "tasks": [{}]}}},
            "crews.c.tasks[0].description",
            "is required",
        ),
        ({"nodes": [], "crews": {"c": {"tasks": [{"description": "d"}]}}}, "crews.c", "needs at least one agent"),
        ({"nodes": [], "tools": {"t": {"input_schema": []}}}, "tools.t.input_schema", "must be a mapping"),
        ({"nodes": [], "inputs": [5]}, "inputs[0]", "must be a name or a mapping with 'name'"),
        ({"nodes": [], "inputs": "topic"}, "inputs", "must be a list or a mapping"),
        ({"nodes": [], "inputs": [{"name": "t", "description": 1}]}, "inputs.t.description", "must be a string"),
    ],
)
def test_each_shape_error_is_reported_at_its_location(doc: dict[str, Any], where: str, message: str) -> None:
    problems = problems_of(doc)
    assert where in problems, problems
    assert message in problems[where]


def test_every_problem_of_a_document_is_reported_not_just_the_first() -> None:
    doc = {
        "nodes": [node_doc(timeout=-1), {"id": "b", "kind": "nope"}, 7],
        "edges": [5],
        "extra": 1,
    }
    assert set(problems_of(doc)) == {"nodes[0] 'a'.timeout", "nodes[1] 'b'.kind", "nodes[2]", "edges[0]", "extra"}


@pytest.mark.parametrize(
    "edge",
    ["a -> b", "a->b", "  a  ->  b ", ["a", "b"], {"from": "a", "to": "b"}, {"source": "a", "target": "b"}],
)
def test_edge_shorthand_forms(edge: Any) -> None:
    flow = flow_from_dict({"nodes": [], "edges": [edge]})
    assert flow.edges == (Edge("a", "b"),)


def test_input_shorthands_and_defaults() -> None:
    flow = flow_from_dict({"nodes": [], "inputs": ["topic", {"name": "n", "default": 3}]})
    assert flow.inputs == (InputSpec("topic", required=True), InputSpec("n", default=3, required=False))
    flow = flow_from_dict({"nodes": [], "inputs": {"topic": None, "tone": "plain", "x": {"description": "d"}}})
    assert flow.inputs == (
        InputSpec("topic", required=True),
        InputSpec("tone", default="plain", required=False),
        InputSpec("x", "d", required=True),
    )


def test_definitions_may_be_listed_with_ids() -> None:
    flow = flow_from_dict({"nodes": [], "agents": [{"id": "w", "role": "r", "goal": "g"}]})
    assert flow.agents == {"w": Agent(id="w", role="r", goal="g")}


def test_position_as_mapping_and_integers_as_floats() -> None:
    flow = flow_from_dict({"nodes": [node_doc(position={"x": 1, "y": 2}, timeout=5)]})
    assert flow.nodes[0].position == (1.0, 2.0)
    assert flow.nodes[0].timeout == 5.0


def test_id_and_name_defaults() -> None:
    assert flow_from_dict({"nodes": [], "name": "My  Great Flow!"}).id == "my-great-flow"
    unnamed = flow_from_dict({"nodes": []})
    assert (unnamed.id, unnamed.name) == ("flow", "flow")
    assert flow_from_dict({"id": "x", "nodes": []}, flow_id="given").id == "given"


def test_input_required_must_be_a_boolean() -> None:
    # regression: bool("no") made the input required
    assert (
        "must be a bool" in problems_of({"nodes": [], "inputs": [{"name": "t", "required": "no"}]})["inputs.t.required"]
    )
    assert flow_from_dict({"nodes": [], "inputs": [{"name": "t", "required": False}]}).inputs[0].required is False


@pytest.mark.parametrize("bad", [0, -2.5, float("nan"), float("inf")])
def test_node_and_run_timeouts_must_be_positive_finite(bad: float) -> None:
    problems = problems_of({"nodes": [node_doc(timeout=bad)], "timeout": bad})
    assert problems["timeout"] == problems["nodes[0] 'a'.timeout"] == "must be positive (seconds)"


@pytest.mark.parametrize("key", ["initial_delay", "multiplier", "max_delay", "jitter"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_retry_numbers_must_be_finite(key: str, bad: float) -> None:
    # a NaN delay made a retrying node wait forever: NaN <= now is never true
    assert "finite" in problems_of({"nodes": [node_doc(retry={key: bad})]})["nodes[0] 'a'.retry"]


def test_non_string_keys_are_reported_not_crashed_on() -> None:
    # regression: sorting {1, "x"} raised TypeError (a traceback in the CLI, a 500 in the API)
    assert set(problems_of({1: 2, "nodes": [node_doc(**{"2": 3})], "x": 1})) == {"1", "x", "nodes[0].2"}
    problems = problems_of({"nodes": [{"id": "a", "kind": "agent", 7: "z"}]})
    assert problems == {"nodes[0].7": "is not a node field"}


def test_a_position_of_booleans_is_refused() -> None:
    assert "nodes[0] 'a'.position" in problems_of({"nodes": [node_doc(position={"x": True, "y": 1})]})
