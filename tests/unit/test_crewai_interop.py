"""CrewAI import/export: real example projects, round trips of definitions written here, unsupported
constructs named in errors, and the CLI handlers' exit codes."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from crewflow.adapters.crewai.interop import (
    FLOW_SCHEMA,
    InteropError,
    export_crewai,
    export_crewai_flow,
    export_crewai_project,
    import_crewai_flow,
    import_crewai_path,
    import_crewai_project,
    write_export,
)
from crewflow.domain.codec import flow_from_dict
from crewflow.domain.flow import NodeKind
from crewflow.domain.validation import validate_flow
from crewflow.entrypoints import cli_crewai

pytestmark = pytest.mark.unit

EXAMPLES = Path("/work/shared/examples/crewai-examples")
EXAMPLE_DIRS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else []


# ------------------------------------------------------------------------------------ definitions we write

AGENTS = {
    "researcher": {"role": "Senior researcher on {topic}", "goal": "Find facts about {topic}",
                   "backstory": "Careful.", "llm": "openai/gpt-4o-mini", "verbose": True},
    "analyst": {"role": "Analyst", "goal": "Weigh the facts", "backstory": "Sceptical.", "max_iter": 5},
    "writer": {"role": "Writer", "goal": "Write for {audience}", "backstory": "Clear.", "allow_delegation": True},
}  # fmt: skip
TASKS = {
    "research": {"description": "Research {topic}.", "expected_output": "Facts.", "agent": "researcher"},
    "analyse": {"description": "Analyse the facts.", "expected_output": "An analysis.", "agent": "analyst",
                "context": ["research"]},
    "write": {"description": "Write an article for {audience}.", "expected_output": "An article.",
              "agent": "writer", "context": ["research", "analyse"], "output_file": "out.md"},
}  # fmt: skip

ROUTER_FLOW = textwrap.dedent("""
    schema: crewai.flow/v1
    name: triage
    description: Classify a ticket and answer it
    state:
      type: json_schema
      json_schema:
        type: object
        properties:
          ticket: {type: string, description: the customer's message}
          product: {type: string}
        required: [ticket]
      default:
        product: widgets
    methods:
      brief:
        start: true
        do:
          call: crew
          with:
            agents:
              reader:
                role: Reader of {product} tickets
                goal: Summarise {ticket}
                backstory: Patient.
              checker: {role: Checker, goal: Check the summary, backstory: Strict.}
            tasks:
              - name: read
                description: Summarise {ticket}
                expected_output: A summary
                agent: reader
              - {name: check, description: Check it, expected_output: A checked summary, agent: checker,
                 context: [read]}
          inputs:
            ticket: "${state.ticket}"
            product: "${state.product}"
      classify:
        listen: brief
        router: true
        emit: [bug, question, spam]
        do:
          call: agent
          with:
            role: Classifier
            goal: 'Return exactly one of: bug, question, spam'
            backstory: Terse.
            input: "Ticket summary: ${outputs.brief.raw}"
      fix:
        listen: bug
        do:
          call: agent
          with: {role: Engineer, goal: Propose a fix, backstory: Practical., input: "${outputs.brief.raw}"}
      answer:
        listen: question
        description: Answer the question
        do:
          call: agent
          with: {role: Support, goal: Answer kindly, backstory: Kind., input: "Answer: ${outputs.brief}"}
      report:
        listen: {and: [fix, answer]}
        do:
          call: agent
          with: {role: Reporter, goal: Report, backstory: Brief., input: "Fix ${outputs.fix.raw}"}
""")


def _write(folder: Path, name: str, data: Any) -> None:
    (folder / name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# ------------------------------------------------------------------------------------ real examples


@pytest.mark.parametrize("folder", EXAMPLE_DIRS, ids=[p.name for p in EXAMPLE_DIRS])
def test_every_crewai_example_project_imports_into_a_valid_flow(folder: Path) -> None:
    result = import_crewai_path(folder)

    assert validate_flow(result.flow) == []
    assert [n.kind for n in result.flow.nodes] == [NodeKind.INPUT, NodeKind.CREW, NodeKind.OUTPUT]
    crew = next(iter(result.flow.crews.values()))
    assert all(t.agent in crew.agents for t in crew.tasks)
    # The document form reads back into the same flow (what `crewflow import` writes and `run` reads).
    assert flow_from_dict(result.document) == result.flow


async def test_an_imported_example_runs_offline_on_the_default_runtime() -> None:
    from crewflow.entrypoints.library import arun

    flow = import_crewai_path(EXAMPLES / "recruitment__recruitment").flow
    result = await arun(flow, {"job_requirements": "Senior Python engineer"})

    assert result.ok, result.error
    assert result.outputs["result"]


def test_example_placeholders_become_required_inputs_passed_to_the_crew() -> None:
    result = import_crewai_path(EXAMPLES / "write_a_book_with_flows__write_book_chapter_crew")

    names = [i.name for i in result.flow.inputs]
    assert names == ["topic", "chapter_title", "goal", "chapter_description", "book_outline"]
    assert all(i.required for i in result.flow.inputs)
    crew_node = result.flow.node(next(iter(result.flow.crews)))
    assert crew_node.inputs["topic"] == "{{ inputs.topic }}"
    # Agent goals keep their {placeholders}: CrewAI fills them from the crew node's inputs.
    assert "{topic}" in result.flow.agents["researcher"].goal


def test_tasks_without_agent_are_assigned_in_order_and_the_assumption_is_reported() -> None:
    result = import_crewai_path(EXAMPLES / "marketing_strategy__marketing_posts")

    (crew,) = result.flow.crews.values()
    assert [t.agent for t in crew.tasks] == [
        "lead_market_analyst", "chief_marketing_strategist", "creative_content_creator",
        "chief_creative_director", "lead_market_analyst",
    ]  # fmt: skip
    assert any("assigned in order" in n and "copy_creation_task → lead_market_analyst" in n for n in result.notes)
    assert any("no task declares 'context'" in n for n in result.notes)


def test_assign_mapping_overrides_the_in_order_assumption() -> None:
    result = import_crewai_path(EXAMPLES / "game-builder-crew__game_builder_crew",
                                assign={"review_task": "chief_qa_engineer_agent"})  # fmt: skip

    (crew,) = result.flow.crews.values()
    tasks = {t.name: t.agent for t in crew.tasks}
    assert tasks["review_task"] == "chief_qa_engineer_agent"
    assert tasks["code_task"] == "senior_engineer_agent"


def test_assign_naming_an_unknown_task_or_agent_is_an_error() -> None:
    with pytest.raises(InteropError) as caught:
        import_crewai_path(EXAMPLES / "game-builder-crew__game_builder_crew", assign={"nope": "ghost"})
    assert "there is no task 'nope'" in str(caught.value)
    assert "there is no agent 'ghost'" in str(caught.value)


# ------------------------------------------------------------------------------------ projects we write


def test_project_with_context_chain_round_trips_through_export(tmp_path: Path) -> None:
    first = import_crewai_project(AGENTS, TASKS, name="article")
    crew = first.flow.crews["article"]
    assert [t.context for t in crew.tasks] == [(), ("research",), ("research", "analyse")]
    assert first.flow.agents["researcher"].model == "gpt-4o-mini"
    assert first.flow.agents["analyst"].max_iter == 5
    assert any("ignored CrewAI settings: verbose" in n for n in first.notes)
    assert any("output_file" in n for n in first.notes)

    exported = export_crewai_project(first.flow)
    assert set(exported.files) == {"agents.yaml", "tasks.yaml"}
    written = write_export(exported, tmp_path / "article")
    second = import_crewai_path(tmp_path / "article")

    assert [p.name for p in written] == ["agents.yaml", "tasks.yaml"]
    assert second.flow.crews["article"] == crew
    assert second.flow.agents == first.flow.agents
    assert [i.name for i in second.flow.inputs] == ["topic", "audience"]


def test_project_import_reports_every_problem_at_once(tmp_path: Path) -> None:
    tasks = {
        "a": {"description": "A", "expected_output": "x", "agent": "ghost"},
        "b": {"expected_output": "y", "context": ["later"]},
        "later": {"description": "L", "expected_output": "z"},
    }
    with pytest.raises(InteropError) as caught:
        import_crewai_project({"w": {"role": "W", "goal": "G"}}, tasks, name="bad")

    problems = caught.value.problems
    assert any("a.agent: 'ghost' is not one of the agents" in p for p in problems)
    assert any("b: description is required" in p for p in problems)
    assert any("'later' is not an earlier task" in p for p in problems)


def test_project_export_refuses_a_flow_that_is_not_one_crew() -> None:
    flow = import_crewai_flow(ROUTER_FLOW).flow
    with pytest.raises(InteropError, match="not a single crew"):
        export_crewai_project(flow)


# ------------------------------------------------------------------------------------ declarative flows


def test_crewai_flow_with_router_imports_into_a_valid_flow() -> None:
    result = import_crewai_flow(ROUTER_FLOW)
    flow = result.flow

    assert validate_flow(flow) == []
    assert {i.name: (i.required, i.default) for i in flow.inputs} == {
        "ticket": (True, None), "product": (False, "widgets"),
    }  # fmt: skip
    kinds = {n.id: n.kind for n in flow.nodes}
    assert kinds["brief"] == NodeKind.CREW
    assert kinds["classify"] == NodeKind.AGENT
    assert kinds["classify__route"] == NodeKind.ROUTER
    assert kinds["classify__end"] == NodeKind.OUTPUT
    router = flow.node("classify__route")
    assert [(r.to) for r in router.routes] == ["fix", "answer", "classify__end"]
    assert router.default == "classify__end"
    assert flow.node("brief").inputs == {"ticket": "{{ inputs.ticket }}", "product": "{{ inputs.product }}"}
    assert flow.node("answer").task == "Answer: {{ nodes.brief.output }}"
    assert flow.node("answer").label == "Answer the question"
    edges = {(e.source, e.target) for e in flow.edges}
    assert {("inputs", "brief"), ("brief", "classify"), ("classify", "classify__route"), ("fix", "report"),
            ("answer", "report")} <= edges  # fmt: skip


def test_router_routes_evaluate_on_the_classifier_answer() -> None:
    from crewflow.domain.nodes import choose_branch

    router = import_crewai_flow(ROUTER_FLOW).flow.node("classify__route")

    def context(answer: str) -> dict[str, Any]:
        return {"nodes": {"classify": {"output": answer}}, "inputs": {}}

    assert choose_branch(router, context(" question\n")) == "answer"
    assert choose_branch(router, context("bug")) == "fix"
    assert choose_branch(router, context("spam")) == "classify__end"
    assert choose_branch(router, context("no idea")) == "classify__end"


def test_crewai_flow_round_trips_through_export() -> None:
    first = import_crewai_flow(ROUTER_FLOW)
    exported = export_crewai_flow(first.flow)
    (text,) = exported.files.values()
    document = yaml.safe_load(text)

    assert document["schema"] == FLOW_SCHEMA
    assert document["methods"]["classify"]["router"] is True
    assert document["methods"]["classify"]["emit"] == ["bug", "question", "spam"]
    assert document["methods"]["fix"]["listen"] == "bug"
    assert document["methods"]["report"]["listen"] == {"and": ["fix", "answer"]}
    assert document["methods"]["brief"]["do"]["inputs"] == {"ticket": "${state.ticket}",
                                                            "product": "${state.product}"}  # fmt: skip
    second = import_crewai_flow(document)
    assert second.flow == first.flow


def test_the_example_shipped_with_crewai_imports_and_round_trips() -> None:
    crewai_example = Path(yaml.__file__).parents[1] / "crewai" / "flow" / "templates" / "flow_definition_example.yaml"
    if not crewai_example.is_file():
        pytest.skip("crewai's flow_definition_example.yaml is not installed")
    first = import_crewai_path(crewai_example)

    assert validate_flow(first.flow) == []
    second = import_crewai_flow(yaml.safe_load(next(iter(export_crewai(first.flow).files.values()))))
    assert second.flow == first.flow


def test_or_listen_on_events_of_one_router_routes_both_events_to_the_listener() -> None:
    doc = yaml.safe_load(ROUTER_FLOW)
    del doc["methods"]["answer"], doc["methods"]["report"]
    doc["methods"]["fix"]["listen"] = {"or": ["bug", "question"]}
    flow = import_crewai_flow(doc).flow

    assert [(r.when.split("== ")[1], r.to) for r in flow.node("classify__route").routes] == [
        ("'bug'", "fix"), ("'question'", "fix"), ("'spam'", "classify__end"),
    ]  # fmt: skip
    assert export_crewai_flow(flow) is not None
    again = import_crewai_flow(yaml.safe_load(next(iter(export_crewai_flow(flow).files.values()))))
    assert again.flow == flow


def test_unsupported_constructs_are_each_named() -> None:
    doc = yaml.safe_load(ROUTER_FLOW)
    doc["conversational"] = {"enabled": True}
    doc["methods"]["fix"]["do"] = {"call": "script", "code": "return 1"}
    doc["methods"]["answer"]["human_feedback"] = {"message": "ok?"}
    doc["methods"]["classify"]["do"] = {"call": "expression", "expr": "state.ticket"}
    doc["methods"]["brief"]["do"]["inputs"]["ticket"] = "${state.ticket + 'x'}"
    doc["methods"]["report"]["listen"] = {"or": ["fix", "answer"]}
    doc["methods"]["loop"] = {"listen": "brief", "do": {"call": "each", "in": "state.rows", "do": []}}
    doc["methods"]["fetch"] = {"start": True, "do": {"call": "tool", "ref": "pkg.tools:Search"}}

    with pytest.raises(InteropError) as caught:
        import_crewai_flow(doc)
    text = "\n".join(caught.value.problems)

    for expected in (
        "conversational: chat flows are not supported",
        "methods.fix.do: call 'script' is not supported",
        "methods.answer.human_feedback",
        "methods.classify.do: call 'expression' is not supported",
        "methods.brief.do.inputs.ticket: '${state.ticket + 'x'}' is not supported",
        "methods.report.listen.or",
        "methods.loop.do: call 'each' is not supported",
        "methods.fetch.do: call 'tool' is not supported",
    ):
        assert expected in text


def test_an_event_with_two_listeners_is_rejected_with_a_reason() -> None:
    doc = yaml.safe_load(ROUTER_FLOW)
    doc["methods"]["answer"]["listen"] = "bug"
    with pytest.raises(InteropError, match="event 'bug' is listened to by fix, answer"):
        import_crewai_flow(doc)


def test_reading_a_structured_output_field_is_rejected() -> None:
    doc = yaml.safe_load(ROUTER_FLOW)
    doc["methods"]["fix"]["do"]["with"]["input"] = "${outputs.brief.json_dict.summary}"
    with pytest.raises(InteropError, match=r"methods\.fix\.do\.with\.input: .*outputs are text"):
        import_crewai_flow(doc)


def test_a_flow_file_without_the_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("name: x\nmethods: {}\n", encoding="utf-8")
    with pytest.raises(InteropError, match=r"not a 'crewai\.flow/v1' document"):
        import_crewai_path(path)


def test_export_refuses_tool_nodes_and_free_form_routers() -> None:
    flow = flow_from_dict({
        "id": "f", "tools": {"search": {}},
        "agents": {"a": {"role": "A", "goal": "G"}},
        "nodes": [
            {"id": "in", "kind": "input"},
            {"id": "ask", "kind": "agent", "agent": "a", "task": "Go"},
            {"id": "t", "kind": "tool", "tool": "search"},
            {"id": "r", "kind": "router", "routes": [{"when": "len(nodes.ask.output) > 3", "to": "t"}],
             "default": "out"},
            {"id": "out", "kind": "output"},
        ],
        "edges": ["in -> ask", "ask -> r", "r -> t", "r -> out"],
    })  # fmt: skip
    with pytest.raises(InteropError) as caught:
        export_crewai_flow(flow)
    text = "\n".join(caught.value.problems)
    assert "node 't': tool nodes cannot be exported" in text
    assert "router 'r': route 'len(nodes.ask.output) > 3' cannot be exported" in text


# ------------------------------------------------------------------------------------ CLI handlers


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crewflow")
    cli_crewai.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_import_writes_a_flow_file_and_prints_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flow.yaml"
    args = _parse(["import", "crewai", str(EXAMPLES / "recruitment__recruitment"), "-o", str(out),
                   "--assign", "report_candidates_task=matcher"])  # fmt: skip

    assert args.func(args) == 0
    flow = flow_from_dict(yaml.safe_load(out.read_text(encoding="utf-8")))
    assert validate_flow(flow) == []
    assert next(iter(flow.crews.values())).tasks[-1].agent == "matcher"
    assert "note: " in capsys.readouterr().err


def test_cli_import_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["import", "crewai", str(EXAMPLES / "recruitment__recruitment")])
    assert args.func(args) == 0
    assert flow_from_dict(yaml.safe_load(capsys.readouterr().out)).id == "recruitment__recruitment"


@pytest.mark.parametrize("extra", [["--assign", "no-equals-sign"], ["--assign", "ghost_task=matcher"]])
def test_cli_import_bad_input_exits_2_with_one_line_per_problem(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["import", "crewai", str(EXAMPLES / "recruitment__recruitment"), *extra])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("crewflow: error: ")
    assert "Traceback" not in err


def test_cli_import_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["import", "crewai", str(tmp_path / "nothing")])
    assert args.func(args) == 2
    assert capsys.readouterr().err.strip() == f"crewflow: error: {tmp_path / 'nothing'}: no such file or folder"


def test_cli_import_unsupported_flow_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(ROUTER_FLOW)
    doc["methods"]["fix"]["do"] = {"call": "code", "ref": "m:f"}
    path = tmp_path / "flow.yaml"
    _write(tmp_path, "flow.yaml", doc)
    args = _parse(["import", "crewai", str(path)])
    assert args.func(args) == 2
    assert "methods.fix.do: call 'code' is not supported" in capsys.readouterr().err


def test_cli_export_writes_crewai_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "flow.yaml", import_crewai_flow(ROUTER_FLOW).document)
    args = _parse(["export", "crewai", str(tmp_path / "flow.yaml"), "-o", str(tmp_path / "out")])

    assert args.func(args) == 0
    (written,) = (tmp_path / "out").iterdir()
    assert yaml.safe_load(written.read_text(encoding="utf-8"))["schema"] == FLOW_SCHEMA
    assert capsys.readouterr().out.strip() == str(written)


def test_cli_export_of_an_invalid_flow_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flow.yaml").write_text("nodes: [{id: a, kind: agent, agent: ghost, task: x}]\n", encoding="utf-8")
    args = _parse(["export", "crewai", str(tmp_path / "flow.yaml"), "-o", str(tmp_path / "out")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'ghost'" in err
    assert not (tmp_path / "out").exists()


def test_a_project_laid_out_by_crewai_create_is_found_under_src_pkg_config(tmp_path: Path) -> None:
    config = tmp_path / "my_crew" / "src" / "my_crew" / "config"
    config.mkdir(parents=True)
    _write(config, "agents.yaml", AGENTS)
    _write(config, "tasks.yaml", TASKS)

    result = import_crewai_path(tmp_path / "my_crew")

    assert result.flow.id == "my_crew"
    assert [t.name for t in result.flow.crews["my_crew"].tasks] == ["research", "analyse", "write"]
