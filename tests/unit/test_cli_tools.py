"""``crewflow tools build|run`` on tool directories, with fakes of the sandbox and builder ports put in at the
command's one composition seam (``open_local_tools``); and tools declared in flow files (the codec)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from crewflow.domain.agents import ToolLimits
from crewflow.domain.codec import flow_from_dict, flow_to_dict
from crewflow.domain.errors import FlowFormatError, NodeExecutionError, ToolBuildError
from crewflow.domain.events import EventKind
from crewflow.entrypoints import cli_tools
from crewflow.entrypoints.cli import main
from crewflow.ports.runtime import BuiltImage, NodeOutcome, ToolBuildSpec, ToolWork

pytestmark = pytest.mark.unit

MANIFEST = """
name: wc
description: Count words
input_schema: {type: object, properties: {text: {type: string}}, required: [text]}
output_schema: {type: object, properties: {words: {type: integer}}}
"""
SCRIPT = "import json, sys\nprint(json.dumps({'words': len(json.load(sys.stdin)['text'].split())}))\n"


class FakeSandbox:
    def __init__(self) -> None:
        self.calls: list[ToolWork] = []

    async def run_tool(self, work: ToolWork, emit: Callable[[EventKind, Mapping[str, Any]], None]) -> NodeOutcome:
        self.calls.append(work)
        emit(EventKind.NODE_LOG, {"line": "counting"})
        if work.payload.get("text") == "boom":
            raise NodeExecutionError("the tool exited with status 3\ntraceback …", retryable=False)
        return NodeOutcome(output={"words": len(str(work.payload["text"]).split())})


class FakeBuilder:
    def __init__(self, fail: bool = False) -> None:
        self.specs: list[ToolBuildSpec] = []
        self.fail = fail

    async def build(self, spec: ToolBuildSpec, log: Callable[[str], None]) -> BuiltImage:
        self.specs.append(spec)
        log("Step 1/1 : FROM crewflow/tool-base:bookworm")
        if self.fail:
            raise ToolBuildError("step 1 failed: pull access denied")
        return BuiltImage(f"crewflow-tools/local/{spec.tool_id}:{spec.version}", "sha256:abc")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> cli_tools.LocalTools:
    parts = cli_tools.LocalTools(FakeSandbox(), FakeBuilder())

    @asynccontextmanager
    async def fake_open(extra: Mapping[str, str]) -> AsyncIterator[cli_tools.LocalTools]:
        yield parts

    monkeypatch.setattr(cli_tools, "open_local_tools", fake_open)
    return parts


def script_tool(tmp_path: Path, manifest: str = MANIFEST) -> Path:
    (tmp_path / "tool.yaml").write_text(manifest + "script: wc.py\nlimits: {timeout: 4, memory_mb: 64}\n")
    (tmp_path / "wc.py").write_text(SCRIPT)
    return tmp_path


def image_tool(tmp_path: Path) -> Path:
    (tmp_path / "tool.yaml").write_text(MANIFEST)
    (tmp_path / "Dockerfile").write_text("FROM crewflow/tool-base:bookworm\nCOPY wc.py lib/util.py /app/\n")
    (tmp_path / "wc.py").write_text(SCRIPT)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    return tmp_path


def test_run_prints_the_tools_output_as_json(tmp_path: Path, local: cli_tools.LocalTools,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["tools", "run", str(script_tool(tmp_path)), "--input", '{"text": "one two three"}'])
    out, err = capsys.readouterr()
    assert (code, json.loads(out)) == (0, {"words": 3})
    assert "[wc] counting" in err
    work = local.sandbox.calls[0]  # type: ignore[union-attr]
    assert (work.tool.script, work.tool.image) == (SCRIPT, None)
    assert work.tool.limits == ToolLimits(timeout=4, memory_mb=64) and work.timeout == 4


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--input", '{"text": 5}'], 2, "input/text: 5 is not of type 'string'"),
    (["--input", "{not json"], 2, "--input is not valid JSON"),
    (["--input", '{"text": "boom"}'], 1, "the tool exited with status 3"),
])  # fmt: skip
def test_run_errors_are_one_line_with_the_exit_code(tmp_path: Path, local: cli_tools.LocalTools,
                                                    capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                                                    message: str) -> None:  # fmt: skip
    assert main(["tools", "run", str(script_tool(tmp_path)), *argv]) == code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("[wc]")]
    assert out == "" and len(lines) == 1 and message in lines[0], err


def test_build_sends_the_dockerfile_and_the_other_files_as_context(
    tmp_path: Path, local: cli_tools.LocalTools, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "build", str(image_tool(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "crewflow-tools/local/wc:1" and "Step 1/1" in err
    spec = local.builder.specs[0]  # type: ignore[union-attr]
    assert spec.dockerfile.startswith("FROM crewflow/tool-base:bookworm")
    assert dict(spec.context) == {"wc.py": SCRIPT.encode(), "lib/util.py": b"X = 1\n"}  # no manifest, no dotfiles


def test_run_builds_an_image_tool_first_and_runs_the_image(tmp_path: Path, local: cli_tools.LocalTools,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["tools", "run", str(image_tool(tmp_path)), "-i", '{"text": "a b"}']) == 0
    assert json.loads(capsys.readouterr().out) == {"words": 2}
    assert local.sandbox.calls[0].tool.image == "crewflow-tools/local/wc:1"  # type: ignore[union-attr]


def test_a_failed_build_is_exit_1_with_the_reason(tmp_path: Path, local: cli_tools.LocalTools,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    local.builder = FakeBuilder(fail=True)
    assert main(["tools", "build", "-q", str(image_tool(tmp_path))]) == 1
    assert capsys.readouterr().err == "crewflow tools: build failed: step 1 failed: pull access denied\n"


def test_without_a_sandbox_or_builder_the_commands_say_so(tmp_path: Path, local: cli_tools.LocalTools,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from crewflow.adapters.sandbox import RoutingSandbox

    # what open_sandbox answers on a machine with neither Docker nor bubblewrap: a router with no backend
    local.sandbox, local.builder = RoutingSandbox(None, None, "no Docker engine answers", "bwrap missing"), None
    assert main(["tools", "run", str(script_tool(tmp_path)), "-i", '{"text": "x"}']) == 1
    err = capsys.readouterr().err
    assert "needs bubblewrap or a Docker engine and neither is available here" in err
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "img").mkdir()
    assert main(["tools", "build", str(image_tool(tmp_path / "img"))]) == 2
    assert "no image builder is available here" in capsys.readouterr().err


@pytest.mark.parametrize(("files", "message"), [
    ({}, "no tool.yaml"),
    ({"tool.yaml": "name: wc\nscript: ../outside.py\n"}, "is not a file of the tool directory"),
    ({"tool.yaml": "name: wc\n"}, "needs a Dockerfile or a script"),
    ({"tool.yaml": "name: wc\ncolour: red\nscript: wc.py\n", "wc.py": SCRIPT}, "unknown field(s) colour"),
    ({"tool.yaml": "name: wc\nscript: wc.py\nlimits: {gpus: 1}\n", "wc.py": SCRIPT}, "limits/gpus"),
    ({"tool.yaml": "[1, 2"}, "cannot be read"),
])  # fmt: skip
def test_unreadable_tool_directories_are_exit_2(tmp_path: Path, local: cli_tools.LocalTools,
                                                capsys: pytest.CaptureFixture[str], files: dict[str, str],
                                                message: str) -> None:  # fmt: skip
    tool = tmp_path / "tool"
    tool.mkdir()
    (tmp_path / "outside.py").write_text(SCRIPT)
    for name, text in files.items():
        (tool / name).write_text(text)
    assert main(["tools", "run", str(tool), "-i", "{}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err
    assert local.sandbox.calls == []  # type: ignore[union-attr]


# -- tools in flow files -----------------------------------------------------------------------------------
FLOW: dict[str, Any] = {
    "name": "count",
    "tools": {"wc": {"description": "Count", "input_schema": {"type": "object"}, "script": SCRIPT,
                     "limits": {"timeout": 5, "pids": 16}, "warm_pool": 2}},
    "nodes": [{"id": "in", "kind": "input"}, {"id": "count", "kind": "tool", "tool": "wc",
                                               "inputs": {"text": "{{ inputs.text }}"}}],
    "edges": ["in -> count"],
    "inputs": ["text"],
}  # fmt: skip


def test_flow_files_declare_a_tools_script_limits_and_warm_pool_and_round_trip() -> None:
    flow = flow_from_dict(FLOW)
    tool = flow.tools["wc"]
    assert (tool.script, tool.limits, tool.warm_pool) == (SCRIPT, ToolLimits(timeout=5.0, pids=16), 2)
    document = flow_to_dict(flow)
    assert document["tools"]["wc"]["limits"] == {"timeout": 5.0, "pids": 16}
    assert flow_from_dict(document) == flow


def test_flow_file_tool_fields_are_checked() -> None:
    bad = {**FLOW, "tools": {"wc": {"script": " ", "limits": {"gpus": 1, "pids": 1.5, "memory_mb": 1},
                                    "warm_pool": 99}}}  # fmt: skip
    with pytest.raises(FlowFormatError) as caught:
        flow_from_dict(bad)
    where = {p.where for p in caught.value.problems}
    assert {"tools.wc.limits.gpus", "tools.wc.limits.pids", "tools.wc.warm_pool", "tools.wc.script"} <= where
    limits_only = {**FLOW, "tools": {"wc": {"script": SCRIPT, "limits": {"memory_mb": 1}}}}
    with pytest.raises(FlowFormatError, match="memory_mb must be between"):
        flow_from_dict(limits_only)


def test_the_flow_file_limits_are_the_sandbox_limits() -> None:
    import dataclasses

    from crewflow.domain import codec

    assert set(codec._LIMIT_TYPES) == {f.name for f in dataclasses.fields(ToolLimits)}
