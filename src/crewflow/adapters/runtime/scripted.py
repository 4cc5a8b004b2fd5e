"""The offline, deterministic ``scripted`` runtime: no LLM, no network.

An agent answers with a ``string.Template`` (``$role``, ``$goal``, ``$task``, ``$expected_output``, ``$inputs``)
chosen by node id, then agent id, else the default ``[$role] $task``. A crew runs its tasks in order, each
task's text filled with CrewAI-style ``{placeholders}`` from the crew's inputs, and returns the last task's
answer. Optional artificial latency, token streaming and injected failures make it useful in tests, demos and
benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from string import Template
from typing import Any

from crewflow.domain.agents import Agent
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.domain.templates import to_text
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome

__all__ = ["ScriptedRuntime"]

DEFAULT_REPLY = "[$role] $task"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ScriptedRuntime:
    def __init__(
        self,
        *,
        replies: Mapping[str, str] | None = None,
        latency: float = 0.0,
        stream: bool = False,
        failures: Mapping[str, int] | None = None,
        retryable_failures: bool = True,
    ) -> None:
        """``failures`` maps a node id to how many of its first attempts fail."""
        self.replies = dict(replies or {})
        self.latency = latency
        self.stream = stream
        self.failures = dict(failures or {})
        self.retryable_failures = retryable_failures
        self.calls: list[tuple[str, int]] = []

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        self.calls.append((work.node_id, work.attempt))
        template = self.replies.get(work.node_id) or self.replies.get(work.agent.id) or DEFAULT_REPLY
        answer = self._answer(template, work.agent, work.task, work.expected_output, work.inputs)
        if self.stream and self.latency > 0:  # words come out over the latency, like a streaming model
            words = answer.split(" ")
            for word in words:
                await asyncio.sleep(self.latency / len(words))
                emit(EventKind.NODE_TOKEN, {"text": word + " "})
            self._maybe_fail(work.node_id, work.attempt)
        else:
            await self._pause()
            self._maybe_fail(work.node_id, work.attempt)
            self._stream(answer, emit)
        return NodeOutcome(output=answer, input_tokens=_tokens(work.task), output_tokens=_tokens(answer))

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        self.calls.append((work.node_id, work.attempt))
        self._maybe_fail(work.node_id, work.attempt)
        outputs: dict[str, str] = {}
        answer = ""
        tokens_in = tokens_out = 0
        for index, task in enumerate(work.crew.tasks):
            await self._pause()
            agent_id = task.agent or work.crew.agents[index % len(work.crew.agents)]
            agent = work.agents[agent_id]
            description = _fill(task.description, work.inputs)
            context = {name: outputs[name] for name in task.context if name in outputs}
            template = self.replies.get(f"{work.node_id}.{task.name}") or self.replies.get(agent.id) or DEFAULT_REPLY
            answer = self._answer(template, agent, description, _fill(task.expected_output, work.inputs), context)
            outputs[task.name] = answer
            tokens_in += _tokens(description)
            tokens_out += _tokens(answer)
            emit(EventKind.NODE_LOG, {"task": task.name, "agent": agent.id, "output": answer})
        self._stream(answer, emit)
        return NodeOutcome(output=answer, input_tokens=tokens_in, output_tokens=tokens_out)

    async def _pause(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def _maybe_fail(self, node_id: str, attempt: int) -> None:
        if attempt <= self.failures.get(node_id, 0):
            raise NodeExecutionError(f"scripted failure of attempt {attempt}", retryable=self.retryable_failures)

    def _stream(self, answer: str, emit: NodeEmitter) -> None:
        if self.stream:
            for word in answer.split(" "):
                emit(EventKind.NODE_TOKEN, {"text": word + " "})

    @staticmethod
    def _answer(template: str, agent: Agent, task: str, expected: str, inputs: Mapping[str, Any]) -> str:
        rendered_inputs = json.dumps({k: to_text(v) for k, v in inputs.items()}, ensure_ascii=False, sort_keys=True)
        return Template(template).safe_substitute(
            role=agent.role, goal=agent.goal, task=task, expected_output=expected, inputs=rendered_inputs
        )


def _fill(text: str, inputs: Mapping[str, Any]) -> str:
    """CrewAI-style ``{name}`` placeholders; unknown names are left as they are."""
    return _PLACEHOLDER.sub(lambda m: to_text(inputs[m.group(1)]) if m.group(1) in inputs else m.group(0), text)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)
