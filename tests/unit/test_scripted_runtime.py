"""The offline scripted runtime: deterministic answers, injected failures, word-by-word streaming."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.domain.agents import Agent
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.ports.runtime import AgentWork

pytestmark = pytest.mark.unit

AGENT = Agent(id="w", role="Writer", goal="Write")


def work(attempt: int = 1) -> AgentWork:
    return AgentWork("t", "e", "n", attempt, AGENT, "say three words", "", {}, {})


async def test_with_latency_and_streaming_the_answer_arrives_word_by_word() -> None:
    tokens: list[tuple[EventKind, Mapping[str, Any]]] = []
    outcome = await ScriptedRuntime(latency=0.01, stream=True).run_agent(work(), lambda k, d: tokens.append((k, d)))
    assert outcome.output == "[Writer] say three words"
    assert [d["text"] for _, d in tokens] == ["[Writer] ", "say ", "three ", "words "]
    assert {k for k, _ in tokens} == {EventKind.NODE_TOKEN}


async def test_injected_failures_fail_the_first_attempts_only() -> None:
    runtime = ScriptedRuntime(failures={"n": 1}, latency=0.001, stream=True)
    with pytest.raises(NodeExecutionError):
        await runtime.run_agent(work(1), lambda k, d: None)
    assert (await runtime.run_agent(work(2), lambda k, d: None)).output == "[Writer] say three words"
