"""Issue 8, the bubblewrap backend specifics (its security properties are in test_sandbox_security.py): image
tools are refused with a clear reason, the router sends script tools here without Docker, and back-to-back
and concurrent calls under a tight process limit do not trip over each other's leftovers."""

from __future__ import annotations

import asyncio

import pytest
from sandbox_support import Logs, need_bubblewrap

from crewflow.adapters.sandbox import open_sandbox
from crewflow.adapters.sandbox.bubblewrap import BubblewrapSandbox
from crewflow.domain.agents import ToolLimits, ToolRef
from crewflow.domain.errors import ToolUnavailable
from crewflow.ports.runtime import ToolWork

pytestmark = pytest.mark.integration

WORDS = 'import json, sys\nprint(json.dumps({"words": len(str(json.load(sys.stdin)["text"]).split())}))\n'
CHILDREN = """import json, subprocess, sys
n = json.load(sys.stdin)["n"]
procs = [subprocess.Popen(["/usr/bin/python3", "-c", "pass"]) for _ in range(n)]
print(json.dumps({"codes": [p.wait() for p in procs]}))
"""


@pytest.fixture
def bubblewrap() -> BubblewrapSandbox:
    need_bubblewrap()
    return BubblewrapSandbox()


async def test_an_image_tool_needs_docker(bubblewrap: BubblewrapSandbox) -> None:
    tool = ToolRef(id="imaged", image="crewflow-tool/acme/imaged:v1")
    with pytest.raises(ToolUnavailable) as refused:
        await bubblewrap.run_tool(ToolWork("t", "e", "n", 1, tool, {}), Logs())
    assert str(refused.value) == "tool imaged needs a Docker engine and none answers here"
    assert not refused.value.retryable


async def test_the_router_runs_script_tools_under_bubblewrap_without_docker() -> None:
    need_bubblewrap()
    routed = open_sandbox({"CREWFLOW_SANDBOX_BACKENDS": "bubblewrap"})
    try:
        assert routed.docker is None and routed.bubblewrap is not None
        tool = ToolRef(id="wordcount", script=WORDS, input_schema={"type": "object", "required": ["text"]})
        outcome = await routed.run_tool(ToolWork("t", "e", "n", 1, tool, {"text": "a b c"}), Logs())
        assert outcome.output == {"words": 3}
        with pytest.raises(ToolUnavailable, match=r"^tool img needs a Docker engine and none answers here$"):
            await routed.run_tool(ToolWork("t", "e", "n", 1, ToolRef(id="img", image="x:1"), {}), Logs())
    finally:
        await routed.close()


async def test_back_to_back_and_concurrent_calls_under_a_tight_process_limit(bubblewrap: BubblewrapSandbox) -> None:
    tool = ToolRef(id="children", script=CHILDREN, limits=ToolLimits(pids=8, timeout=30))
    for _ in range(5):
        outcome = await bubblewrap.run_tool(ToolWork("t", "e", "n", 1, tool, {"n": 4}), Logs())
        assert outcome.output == {"codes": [0, 0, 0, 0]}
    outcomes = await asyncio.gather(*(bubblewrap.run_tool(ToolWork("t", "e", f"n{i}", 1, tool, {"n": 4}), Logs())
                                      for i in range(6)))  # fmt: skip
    assert [o.output for o in outcomes] == [{"codes": [0, 0, 0, 0]}] * 6
