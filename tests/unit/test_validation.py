from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crewflow.domain.agents import Agent, Crew, CrewTask, ToolRef
from crewflow.domain.errors import FlowInvalid, Problem
from crewflow.domain.flow import Edge, Flow, FlowLimits, InputSpec, Node, NodeKind, RetryPolicy, Route
from crewflow.domain.graph import Graph, find_cycles
from crewflow.domain.validation import Catalog, ensure_valid, validate_flow

pytestmark = pytest.mark.unit

WRITER = Agent(id="writer", role="Writer", goal="Write well", provider="scripted")


def agent(node_id: str, task: str = "do the work", **kw: object) -> Node:
    return Node(id=node_id, kind=NodeKind.AGENT, agent=kw.pop("agent", "writer"), task=task, **kw)  # type: ignore[arg-type]


def edges(*pairs: str) -> tuple[Edge, ...]:
    return tuple(Edge(*pair.split(">")) for pair in pairs)


def make_flow(nodes: Iterable[Node], edge_list: Iterable[Edge], **kw: object) -> Flow:
    kw.setdefault("agents", {"writer": WRITER})
    return Flow(id="f", nodes=tuple(nodes), edges=tuple(edge_list), **kw)  # type: ignore[arg-type]


def only(problems: list[Problem], code: str) -> Problem:
    matching = [p for p in problems if p.code == code]
    assert len(matching) == 1, problems
    return matching[0]


def codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def router(node_id: str, routes: dict[str, str], default: str | None) -> Node:
    return Node(
        id=node_id,
        kind=NodeKind.ROUTER,
        routes=tuple(Route(when, to) for when, to in routes.items()),
        default=default,
    )


INPUT = Node(id="in", kind=NodeKind.INPUT)
OUTPUT = Node(id="out", kind=NodeKind.OUTPUT)


def test_a_well_formed_flow_has_no_problems_and_ensure_valid_returns_its_graph() -> None:
    flow = make_flow(
        [
            INPUT,
            agent("research", "Research {{ inputs.topic }}"),
            router("triage", {"len(nodes.research.output) > 10": "long"}, "short"),
            agent("long", "Summarise {{ nodes.research.output }}"),
            agent("short", "Expand {{ nodes.research.output }}"),
            agent("join", "Merge {{ nodes.long.output }} {{ nodes.short.output }}"),
            OUTPUT,
        ],
        edges("in>research", "research>triage", "triage>long", "triage>short", "long>join", "short>join", "join>out"),
        inputs=(InputSpec("topic", required=True),),
    )
    assert validate_flow(flow, catalog=Catalog(providers=["openai"])) == []
    graph = ensure_valid(flow)
    assert graph.order[0] == "in"
    assert graph.order[-1] == "out"


def test_empty_flow_is_a_problem() -> None:
    assert codes(validate_flow(make_flow([], []))) == {"empty"}


def test_cycle_lists_the_nodes_on_it_in_edge_order() -> None:
    flow = make_flow([INPUT, agent("a"), agent("b"), agent("c")], edges("in>a", "a>b", "b>c", "c>a"))
    problem = only(validate_flow(flow), "cycle")
    assert problem.message == "cycle: a -> b -> c -> a"
    assert set(problem.node_ids) == {"a", "b", "c"}


def test_self_loop_is_a_cycle_naming_its_edge() -> None:
    problem = only(validate_flow(make_flow([INPUT, agent("a")], edges("in>a", "a>a"))), "cycle")
    assert problem.edge == ("a", "a")
    assert "a -> a" in str(problem)


def test_every_node_on_a_cycle_is_named_even_when_dfs_back_edges_miss_it() -> None:
    # a->b->a is found first; c lies on a->c->b->a but DFS reaches b from c after b is finished
    flow = make_flow([agent("a"), agent("b"), agent("c")], edges("a>b", "b>a", "a>c", "c>b"))
    named = {n for p in validate_flow(flow) if p.code == "cycle" for n in p.node_ids}
    assert named == {"a", "b", "c"}


def _on_a_cycle(ids: list[str], pairs: list[tuple[str, str]]) -> set[str]:
    children = {i: {t for s, t in pairs if s == i} for i in ids}
    found = set()
    for start in ids:
        seen: set[str] = set()
        stack = list(children[start])
        while stack:
            current = stack.pop()
            if current == start:
                found.add(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(children[current])
    return found


@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=14))
    )
)
def test_find_cycles_reports_real_cycles_covering_every_node_on_one(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, raw = case
    ids = [f"n{i}" for i in range(n)]
    pairs = [(f"n{s}", f"n{t}") for s, t in raw]
    cycles = find_cycles(ids, pairs)
    for cycle in cycles:
        assert len(set(cycle)) == len(cycle)
        for here, there in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            assert (here, there) in pairs
    assert {node for cycle in cycles for node in cycle} == _on_a_cycle(ids, pairs)


def test_dangling_edge_names_the_edge_and_the_missing_end() -> None:
    problem = only(validate_flow(make_flow([INPUT, agent("a")], edges("in>a", "a>ghost"))), "dangling_edge")
    assert problem.edge == ("a", "ghost")
    assert problem.where == "edge 'a' -> 'ghost'"
    assert "'ghost'" in problem.message
    assert "'a'" not in problem.message


def test_duplicate_ids_name_the_id_and_count() -> None:
    problem = only(validate_flow(make_flow([INPUT, agent("a"), agent("a")], edges("in>a"))), "duplicate_id")
    assert problem.where == "node 'a'"
    assert "2 nodes" in problem.message


def test_duplicate_edge_names_the_edge() -> None:
    problem = only(validate_flow(make_flow([INPUT, agent("a")], edges("in>a", "in>a"))), "duplicate_edge")
    assert problem.edge == ("in", "a")
    assert "2 times" in problem.message


@pytest.mark.parametrize("bad", ["1abc", "has space", "x" * 65, "a.b", "a\n"])
def test_bad_node_ids_are_reported(bad: str) -> None:
    problem = only(validate_flow(make_flow([agent(bad)], [])), "bad_id")
    assert problem.node_ids == (bad,)


def test_unknown_agent_crew_and_tool_references_name_the_node() -> None:
    flow = make_flow(
        [
            INPUT,
            agent("a", agent="ghostwriter"),
            Node(id="c", kind=NodeKind.CREW, crew="nocrew"),
            Node(id="t", kind=NodeKind.TOOL, tool="notool"),
        ],
        edges("in>a", "in>c", "in>t"),
    )
    problems = validate_flow(flow)
    assert only(problems, "unknown_agent").where == "node 'a'"
    assert "'ghostwriter'" in only(problems, "unknown_agent").message
    assert only(problems, "unknown_crew").where == "node 'c'"
    assert "'nocrew'" in only(problems, "unknown_crew").message
    assert only(problems, "unknown_tool").where == "node 't'"
    assert "'notool'" in only(problems, "unknown_tool").message


def test_references_known_to_the_catalog_are_accepted() -> None:
    flow = make_flow(
        [
            INPUT,
            agent("a", agent="saved"),
            Node(id="c", kind=NodeKind.CREW, crew="team"),
            Node(id="t", kind=NodeKind.TOOL, tool="search"),
        ],
        edges("in>a", "in>c", "in>t"),
    )
    assert validate_flow(flow, catalog=Catalog(agents=["saved"], crews=["team"], tools=["search"])) == []


def test_kind_specific_fields_that_are_missing_are_reported() -> None:
    flow = make_flow(
        [
            INPUT,
            Node(id="a", kind=NodeKind.AGENT, task="x"),
            Node(id="c", kind=NodeKind.CREW),
            Node(id="t", kind=NodeKind.TOOL),
            agent("blank", task="   "),
        ],
        edges("in>a", "in>c", "in>t", "in>blank"),
    )
    problems = validate_flow(flow)
    assert only(problems, "missing_agent").where == "node 'a'"
    assert only(problems, "missing_crew").where == "node 'c'"
    assert only(problems, "missing_tool").where == "node 't'"
    assert only(problems, "missing_task").where == "node 'blank'"


def test_unknown_provider_names_the_agent_when_providers_are_checked() -> None:
    flow = make_flow(
        [INPUT, agent("a", agent="x")], edges("in>a"), agents={"x": Agent(id="x", role="r", goal="g", provider="acme")}
    )
    assert validate_flow(flow) == []  # providers unchecked by default (flow files run offline)
    problem = only(validate_flow(flow, catalog=Catalog(providers=["openai"])), "unknown_provider")
    assert "agent 'x'" in problem.message
    assert "'acme'" in problem.message
    assert validate_flow(flow, catalog=Catalog(providers=["acme"])) == []


def test_definitions_referring_to_unknown_tools_agents_and_tasks_are_named() -> None:
    flow = make_flow(
        [INPUT, Node(id="c", kind=NodeKind.CREW, crew="team")],
        edges("in>c"),
        agents={"w": Agent(id="w", role="r", goal="g", tools=("hammer",))},
        crews={
            "team": Crew(
                id="team",
                agents=("w", "ghost"),
                tasks=(
                    CrewTask("one", "d", agent="outsider"),
                    CrewTask("two", "d", context=("three",)),
                ),
            )
        },
        tools={"saw": ToolRef(id="saw")},
    )
    problems = validate_flow(flow)
    assert "agent 'w' uses unknown tool 'hammer'" in only(problems, "unknown_tool").message
    unknown_agents = sorted(p.message for p in problems if p.code == "unknown_agent")
    assert unknown_agents == [
        "crew 'team' lists unknown agent 'ghost'",
        "crew 'team' task 'one' is assigned to 'outsider', who is not in the crew",
    ]
    assert "'three', which is not an earlier task" in only(problems, "bad_context").message


def test_unreachable_node_is_named() -> None:
    flow = make_flow([INPUT, agent("a"), agent("island"), agent("after")], edges("in>a", "island>after"))
    unreachable = [p for p in validate_flow(flow) if p.code == "unreachable"]
    assert [p.where for p in unreachable] == ["node 'island'", "node 'after'"]


def test_without_input_nodes_every_root_is_a_start() -> None:
    assert validate_flow(make_flow([agent("a"), agent("b")], [])) == []


def test_router_without_branches_or_default() -> None:
    flow = make_flow([INPUT, router("r", {}, None), agent("a")], edges("in>r", "r>a"))
    problems = validate_flow(flow)
    assert only(problems, "router_without_branches").where == "node 'r'"
    assert only(problems, "router_without_default").where == "node 'r'"
    assert only(problems, "edge_not_a_branch").edge == ("r", "a")


def test_router_with_an_empty_default_has_no_default() -> None:
    flow = make_flow([INPUT, router("r", {"true": "a"}, ""), agent("a")], edges("in>r", "r>a"))
    assert only(validate_flow(flow), "router_without_default").where == "node 'r'"


def test_router_branch_without_edge_and_edge_that_is_not_a_branch() -> None:
    flow = make_flow(
        [INPUT, router("r", {"true": "a"}, "b"), agent("a"), agent("b"), agent("c")],
        edges("in>r", "r>a", "r>c", "in>b"),
    )
    problems = validate_flow(flow)
    missing = only(problems, "branch_without_edge")
    assert missing.where == "node 'r'"
    assert "'b'" in missing.message
    extra = only(problems, "edge_not_a_branch")
    assert extra.edge == ("r", "c")
    assert "'c'" in extra.message


def test_router_branch_to_a_missing_node_and_a_bad_expression() -> None:
    flow = make_flow(
        [INPUT, router("r", {"nodes.a.output ==": "a", "true": "nowhere"}, "a"), agent("a")], edges("in>r", "r>a")
    )
    problems = validate_flow(flow)
    assert "'nowhere'" in only(problems, "unknown_branch").message
    bad = only(problems, "bad_expression")
    assert bad.where == "node 'r'"
    assert bad.message.startswith("routes[0].when:")


def test_template_reference_to_a_node_that_is_not_an_ancestor() -> None:
    flow = make_flow(
        [INPUT, agent("a", "use {{ nodes.b.output }}"), agent("b", "use {{ nodes.in.output }}")],
        edges("in>a", "in>b"),
    )
    problem = only(validate_flow(flow), "not_an_ancestor")
    assert problem.where == "node 'a'"
    assert problem.node_ids == ("a", "b")
    assert problem.message.startswith("task reads node 'b'")


def test_router_expression_reading_a_non_ancestor_or_a_missing_node() -> None:
    flow = make_flow(
        [
            INPUT,
            agent("side"),
            router("r", {"nodes.side.output == 1": "a", "nodes.ghost.output": "a"}, "a"),
            agent("a"),
        ],
        edges("in>side", "in>r", "r>a"),
    )
    problems = validate_flow(flow)
    assert only(problems, "not_an_ancestor").node_ids == ("r", "side")
    assert "routes[1].when reads node 'ghost'" in only(problems, "unknown_reference").message


def test_template_reference_to_a_missing_node_and_a_malformed_template() -> None:
    flow = make_flow([INPUT, agent("a", "{{ nodes.zz.output }}", expected_output="{{ nodes.a }}")], edges("in>a"))
    problems = validate_flow(flow)
    assert "task reads node 'zz'" in only(problems, "unknown_reference").message
    assert only(problems, "bad_template").message.startswith("expected_output:")


def test_node_input_templates_are_checked_too() -> None:
    flow = make_flow([INPUT, agent("a", inputs={"ctx": "{{ nodes.b.output }}"}), agent("b")], edges("in>a", "in>b"))
    assert only(validate_flow(flow), "not_an_ancestor").message.startswith("inputs.ctx reads node 'b'")


def test_unknown_input_is_reported_only_when_the_flow_declares_inputs() -> None:
    nodes = [INPUT, agent("a", "about {{ inputs.subject }}")]
    assert validate_flow(make_flow(nodes, edges("in>a"))) == []
    problem = only(validate_flow(make_flow(nodes, edges("in>a"), inputs=(InputSpec("topic"),))), "unknown_input")
    assert problem.where == "node 'a'"
    assert "'subject'" in problem.message


def test_input_node_with_parents_and_output_node_with_children() -> None:
    flow = make_flow(
        [INPUT, agent("a"), Node(id="in2", kind=NodeKind.INPUT), OUTPUT, agent("z")],
        edges("in>a", "a>in2", "a>out", "out>z"),
    )
    problems = validate_flow(flow)
    assert only(problems, "input_has_parents").where == "node 'in2'"
    assert only(problems, "output_has_children").where == "node 'out'"


def _chain(n: int) -> tuple[list[Node], list[Edge]]:
    nodes = [INPUT] + [agent(f"n{i}") for i in range(n - 1)]
    return nodes, [Edge(a.id, b.id) for a, b in itertools.pairwise(nodes)]


def test_default_limit_of_500_nodes() -> None:
    nodes, edge_list = _chain(500)
    assert validate_flow(make_flow(nodes, edge_list)) == []
    nodes, edge_list = _chain(501)
    assert only(validate_flow(make_flow(nodes, edge_list)), "too_many_nodes").message == "501 nodes; the limit is 500"


def test_default_limit_of_2000_edges() -> None:
    # a complete 10 x 199 bipartite layer (1,990 edges) fed from one input (10 more)
    left = [agent(f"l{i}") for i in range(10)]
    right = [agent(f"r{i}") for i in range(199)]
    base = [Edge(a.id, b.id) for a in left for b in right]  # 1990
    feed = [Edge("in", a.id) for a in left]  # 10 -> 2000 in all
    assert len(base) + len(feed) == 2000
    assert validate_flow(make_flow([INPUT, *left, *right], base + feed)) == []
    extra = agent("extra")
    flow = make_flow([INPUT, *left, *right, extra], [*base, *feed, Edge("r0", "extra")])
    assert only(validate_flow(flow), "too_many_edges").message == "2001 edges; the limit is 2000"


def test_default_limit_of_32_kib_per_text_field_counts_bytes() -> None:
    at_limit = agent("a", "x" * (32 * 1024))
    assert validate_flow(make_flow([at_limit], [])) == []
    over = agent("a", "é" * (16 * 1024) + "x")  # 2 bytes per 'é'
    problem = only(validate_flow(make_flow([over], [])), "text_too_long")
    assert problem.where == "node 'a'"
    assert problem.message == "task is 32769 bytes; the limit is 32768"


def test_limits_are_configurable() -> None:
    limits = FlowLimits(max_nodes=2, max_edges=1, max_text_bytes=5)
    flow = make_flow([INPUT, agent("a", "123456"), agent("b", "ok")], edges("in>a", "in>b"))
    problems = validate_flow(flow, limits)
    assert codes(problems) == {"too_many_nodes", "too_many_edges", "text_too_long"}
    too_long = [p for p in problems if p.code == "text_too_long"]
    assert [p.where for p in too_long if p.node_ids] == ["node 'a'"]  # "ok" (2 bytes) is within the limit
    assert validate_flow(flow) == []


@pytest.mark.parametrize("value", [0, 257])
def test_max_parallel_out_of_range(value: int) -> None:
    assert codes(validate_flow(make_flow([agent("a")], [], max_parallel=value))) == {"max_parallel"}


def test_ensure_valid_raises_with_every_problem_listed() -> None:
    flow = make_flow([INPUT, agent("a", agent="nobody"), agent("a")], edges("in>a", "a>ghost"))
    with pytest.raises(FlowInvalid) as caught:
        ensure_valid(flow)
    assert {"duplicate_id", "dangling_edge", "unknown_agent"} <= {p.code for p in caught.value.problems}
    assert "edge 'a' -> 'ghost'" in str(caught.value)


def test_the_text_limit_applies_to_definitions_and_descriptions_too() -> None:
    long = "x" * 40
    flow = make_flow(
        [INPUT, Node(id="c", kind=NodeKind.CREW, crew="team")],
        edges("in>c"),
        description=long,
        inputs=(InputSpec("topic", long),),
        agents={"w": Agent(id="w", role="r", goal="g", backstory=long)},
        crews={"team": Crew(id="team", agents=("w",), tasks=(CrewTask("one", long),), description="ok")},
        tools={"saw": ToolRef(id="saw", description=long)},
    )
    messages = sorted(
        p.message for p in validate_flow(flow, FlowLimits(max_text_bytes=39)) if p.code == "text_too_long"
    )
    assert messages == [
        "agent 'w' backstory is 40 bytes; the limit is 39",
        "crew 'team' task 'one' description is 40 bytes; the limit is 39",
        "flow description is 40 bytes; the limit is 39",
        "input 'topic' description is 40 bytes; the limit is 39",
        "tool 'saw' description is 40 bytes; the limit is 39",
    ]
    assert validate_flow(flow, FlowLimits(max_text_bytes=40)) == []


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_timeouts_must_be_positive_finite_seconds(bad: float) -> None:
    flow = make_flow([INPUT, agent("a", timeout=bad)], edges("in>a"), timeout=bad)
    problems = [p for p in validate_flow(flow) if p.code == "bad_timeout"]
    assert [p.where for p in problems] == ["flow", "node 'a'"]


def test_a_router_expression_reading_an_undeclared_input_is_reported() -> None:
    flow = make_flow(
        [INPUT, router("r", {"inputs.topic == 'a'": "a", "inputs['mode'] == 'b'": "a"}, "a"), agent("a")],
        edges("in>r", "r>a"),
        inputs=(InputSpec("topic"),),
    )
    problem = only(validate_flow(flow), "unknown_input")
    assert problem.where == "node 'r'"
    assert problem.message.startswith("routes[1].when reads input 'mode'")


# -- the flow model and graph helpers validation relies on ------------------------------------------------


def test_graph_build_refuses_a_cycle_and_ignores_unknown_or_repeated_edges() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Graph.build(["a", "b"], [("a", "b"), ("b", "a")])
    graph = Graph.build(["a", "b", "c"], [("a", "b"), ("a", "b"), ("a", "ghost"), ("b", "c")])
    assert graph.children == {"a": ("b",), "b": ("c",), "c": ()}
    assert graph.order == ("a", "b", "c")
    assert graph.ancestors("c") == {"a", "b"}
    assert graph.descendants_of(["b"]) == {"b", "c"}


def test_topological_order_is_deterministic_by_position() -> None:
    graph = Graph.build(["z", "y", "x", "j"], [("z", "j"), ("y", "j"), ("x", "j")])
    assert graph.order == ("z", "y", "x", "j")
    assert [graph.index[n] for n in graph.order] == [0, 1, 2, 3]


def test_critical_path_is_the_heaviest_path() -> None:
    graph = Graph.build(["s", "a", "b", "j"], [("s", "a"), ("s", "b"), ("a", "j"), ("b", "j")])
    assert graph.critical_path_length({"s": 1.0, "a": 5.0, "b": 2.0, "j": 1.0}) == 7.0
    assert Graph.build([], []).critical_path_length({}) == 0.0


def test_declared_input_defaults_and_missing_required_inputs() -> None:
    flow = make_flow(
        [INPUT],
        [],
        inputs=(InputSpec("topic", required=True), InputSpec("tone", default="plain"), InputSpec("extra")),
    )
    assert flow.resolve_inputs({"topic": "bees", "other": 1}) == {"tone": "plain", "topic": "bees", "other": 1}
    assert flow.resolve_inputs({"tone": "dry"}) == {"tone": "dry"}
    assert flow.missing_inputs({}) == ["topic"]
    assert flow.missing_inputs({"topic": None}) == []
    assert flow.node("in") is INPUT
    with pytest.raises(KeyError):
        flow.node("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"initial_delay": -1.0}, "negative"),
        ({"max_delay": -1.0}, "negative"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"initial_delay": float("nan")}, "finite"),
    ],
)
def test_retry_policy_refuses_out_of_range_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": " "}, "role"),
        ({"goal": ""}, "goal"),
        ({"max_iter": 0}, "max_iter"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_agent_definitions_refuse_bad_values(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"id": "a", "role": "r", "goal": "g", **kwargs}
    with pytest.raises(ValueError, match=message):
        Agent(**fields)  # type: ignore[arg-type]


def test_crews_need_agents_and_tasks() -> None:
    with pytest.raises(ValueError, match="agent"):
        Crew(id="c", agents=(), tasks=(CrewTask("t", "d"),))
    with pytest.raises(ValueError, match="task"):
        Crew(id="c", agents=("a",), tasks=())
