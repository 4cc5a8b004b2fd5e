"""The embeddable library API: crewflow.run / arun / stream / load_flow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import crewflow
from crewflow import EventKind, FlowInvalid
from crewflow.domain.errors import FlowFormatError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Examples with tools need a sandbox (bubblewrap or Docker): integration tests run them
# (tests/integration/test_cli_runs.py); every other example runs anywhere, offline.
OFFLINE_EXAMPLES = [p for p in EXAMPLES if "\ntools:" not in p.read_text()]


def test_there_are_at_least_three_example_flows() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"research_write", "fan_out_join", "router"} <= names


@pytest.mark.parametrize("path", OFFLINE_EXAMPLES, ids=lambda p: p.stem)
def test_every_example_runs_offline_to_completion(path: Path) -> None:
    result = crewflow.run(path)
    assert result.ok, result.error
    assert result.outputs


def test_run_takes_inputs_and_returns_per_node_outputs_and_timings() -> None:
    result = crewflow.run(ROOT / "examples/research_write.yaml", inputs={"topic": "kites"})
    assert "kites" in result.nodes["research"].output
    assert result.nodes["research"].duration is not None
    assert result.to_dict()["nodes"]["write"]["status"] == "completed"
    json.dumps(result.to_dict())  # the whole result is JSON-serialisable


def test_a_flow_can_be_given_as_yaml_text_json_text_or_a_mapping() -> None:
    doc = {"id": "t", "agents": {"a": {"role": "R", "goal": "G", "provider": "scripted"}},
           "nodes": [{"id": "n", "kind": "agent", "agent": "a", "task": "hello"}]}  # fmt: skip
    as_yaml = (
        "id: t\nagents: {a: {role: R, goal: G, provider: scripted}}\n"
        "nodes: [{id: n, kind: agent, agent: a, task: hello}]\n"
    )
    for source in (doc, json.dumps(doc), as_yaml):
        assert crewflow.run(source).outputs == {"n": "[R] hello"}


def test_a_missing_file_and_bad_yaml_are_format_errors_with_a_location() -> None:
    with pytest.raises(FlowFormatError, match="no such file"):
        crewflow.load_flow(Path("does/not/exist.yaml"))
    with pytest.raises(FlowFormatError, match="line 3 column 3"):
        crewflow.load_flow("id: x\nnodes: [\n  - {")


def test_an_invalid_flow_raises_flow_invalid_naming_the_node() -> None:
    doc = {"id": "t", "nodes": [{"id": "n", "kind": "agent", "agent": "ghost", "task": "x"}]}
    with pytest.raises(FlowInvalid) as info:
        crewflow.run(doc)
    assert any("ghost" in str(p) and "'n'" in str(p) for p in info.value.problems)


async def test_run_inside_an_event_loop_points_to_arun() -> None:
    with pytest.raises(RuntimeError, match="arun"):
        crewflow.run(EXAMPLES[0])
    result = await crewflow.arun(EXAMPLES[0])
    assert result.ok


async def test_stream_yields_every_event_live_and_ends_with_the_run() -> None:
    events = [e async for e in crewflow.stream(ROOT / "examples/fan_out_join.yaml")]
    assert events[0].kind == EventKind.RUN_STARTED
    assert events[-1].kind == EventKind.RUN_COMPLETED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_on_event_callback_sees_each_node_start_and_finish() -> None:
    seen: list[tuple[str, str | None]] = []
    await crewflow.arun(ROOT / "examples/router.yaml", on_event=lambda e: seen.append((e.kind, e.node_id)))
    assert (EventKind.NODE_SKIPPED, "escalate") in seen
    assert (EventKind.NODE_COMPLETED, "standard_reply") in seen


def test_importing_crewflow_does_not_import_crewai_or_heavy_adapters() -> None:
    code = "import sys, crewflow; crewflow.run('examples/router.yaml'); " \
           "print(sorted(m for m in ('crewai', 'litellm', 'aiodocker', 'beanie', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
