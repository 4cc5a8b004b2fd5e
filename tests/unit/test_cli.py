"""The crewflow CLI: exit codes, one-line errors, outputs. Run in-process through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crewflow.entrypoints.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

INVALID = """
id: broken
agents: {a: {role: R, goal: G}}
nodes:
  - {id: a1, kind: agent, agent: a, task: "uses {{ nodes.a3.output }}"}
  - {id: a2, kind: agent, agent: nobody, task: x}
  - {id: a3, kind: agent, agent: a, task: y}
  - {id: r, kind: router, routes: []}
edges: [a1 -> a2, a2 -> a1, a3 -> ghost]
"""


def test_validate_accepts_each_example(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_lists_one_line_per_problem_with_node_ids_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID)
    assert main(["validate", str(bad)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    text = "\n".join(lines)
    assert "cycle: a1 -> a2 -> a1" in text
    assert "'ghost'" in text and "'nobody'" in text
    assert "node 'r'" in text
    assert all(line.startswith(f"{bad}: ") for line in lines)
    assert "Traceback" not in text


def test_run_prints_outputs_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(ROOT / "examples/research_write.yaml"), "--input", "topic=otters", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "completed" in out and "otters" in out


def test_run_json_gives_the_whole_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "examples/fan_out_join.yaml"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed"
    assert set(result["nodes"]) == {"start", "market_view", "engineering_view", "legal_view", "merge",
                                    "recommendation"}  # fmt: skip


def test_a_failed_run_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = tmp_path / "fails.yaml"
    flow.write_text("id: f\nagents: {a: {role: R, goal: G, provider: openai}}\n"
                    "nodes: [{id: n, kind: agent, agent: a, task: x}]\n")  # fmt: skip
    assert main(["run", str(flow), "--quiet"]) == 1
    assert "not configured" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "missing.yaml"], "no such file"),
        (["run", str(ROOT / "examples/router.yaml"), "--input", "novalue"], "key=value"),
        (["run", str(ROOT / "examples/router.yaml"), "--input", "n:={bad"], "not valid JSON"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_required_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = tmp_path / "needs.yaml"
    flow.write_text("id: f\ninputs: [city]\nnodes: [{id: i, kind: input}]\n")
    assert main(["run", str(flow)]) == 2
    assert "city" in capsys.readouterr().err
    assert main(["run", str(flow), "-i", "city=Oslo", "-q"]) == 0


def test_json_inputs_keep_their_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "examples/router.yaml"), "-i", "ticket=the site is down", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nodes"]["escalate"]["status"] == "completed"
    assert result["nodes"]["standard_reply"]["status"] == "skipped"


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_demo_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quiet"]) == 0
    assert "completed" in capsys.readouterr().out
