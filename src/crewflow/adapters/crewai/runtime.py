"""``CrewAIRuntime``: the ``AgentRuntime`` that runs agent and crew nodes on CrewAI.

An agent node becomes one CrewAI ``Task`` for one ``Agent`` (in a one-agent sequential ``Crew``); a crew node
becomes a ``Crew`` with its tasks, ``context`` links and process (sequential or hierarchical, whose manager LLM
is also a ``FailoverLLM``). Every LLM the crew sees is a ``FailoverLLM`` bound to this node run, so attempts,
tokens and cost are collected per node and attached to the ``NodeOutcome``.

``Crew.kickoff`` is synchronous and runs in a worker thread (``asyncio.to_thread``); see ``llm.py`` for how
its LLM calls reach the gateway on the engine's loop. Task outputs and agent steps are emitted as
``node.log`` events, LLM attempts as ``llm.attempt``, streamed tokens as ``node.token``.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

from crewflow.adapters.crewai.llm import GatewayBridge, LLMCallFailed, make_failover_llm, prepare_crewai_import
from crewflow.adapters.crewai.tools import SandboxCall, crewai_tool
from crewflow.domain.agents import Agent, Crew, CrewTask, Process, ToolRef
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.domain.templates import to_text
from crewflow.ports.llm import CallScope, LLMGateway
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome, ToolSandbox

__all__ = ["CrewAIRuntime", "crew_placeholders"]

# The placeholder syntax CrewAI interpolates from kickoff inputs (crewai.utilities.string_utils).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)}")
_LOG_TEXT_LIMIT = 4000


def crew_placeholders(crew: Crew, agents: Mapping[str, Agent]) -> set[str]:
    """Names of the ``{placeholders}`` CrewAI will fill from kickoff inputs in this crew's texts."""
    texts: list[str] = []
    for agent_id in crew.agents:
        agent = agents.get(agent_id)
        if agent is not None:
            texts += [agent.role, agent.goal, agent.backstory]
    for task in crew.tasks:
        texts += [task.description, task.expected_output]
    return {name for text in texts for name in _PLACEHOLDER.findall(text)}


def _clip(text: str) -> str:
    return text if len(text) <= _LOG_TEXT_LIMIT else text[:_LOG_TEXT_LIMIT] + "…"


def _jsonable(value: Any) -> Any:
    """Kickoff inputs CrewAI accepts: str, int, float, bool, None, and dicts/lists of those."""
    return json.loads(json.dumps(value, default=str))


class CrewAIRuntime:
    """Runs agent and crew nodes on CrewAI with every LLM call going through ``gateway``.

    ``tools``: the sandbox that runs crewflow tools when an agent calls one (absent: agents get no tools).
    ``stream_tokens``: ask providers to stream and emit ``node.token`` events.
    ``verbose``: CrewAI's console output (off by default)."""

    def __init__(self, gateway: LLMGateway, *, tools: ToolSandbox | None = None, stream_tokens: bool = True,
                 verbose: bool = False) -> None:  # fmt: skip
        self.gateway = gateway
        self.tools = tools
        self.stream_tokens = stream_tokens
        self.verbose = verbose

    # -- the port ----------------------------------------------------------------------------------------
    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        bridge = GatewayBridge(self.gateway, asyncio.get_running_loop(), emit, stream_tokens=self.stream_tokens)
        description = _with_parent_context(work.task, work.inputs)

        def build() -> Any:
            crewai = _crewai()
            agent = self._agent(crewai, work.agent, bridge, work.tenant_id, work.execution_id, work.node_id,
                                work.tools, work.attempt)  # fmt: skip
            task = crewai.Task(
                name=work.node_id,
                description=description,
                expected_output=work.expected_output or "The answer to the task.",
                agent=agent,
            )
            return self._crew(crewai, bridge, [agent], [task], Process.SEQUENTIAL, None, work)

        return await self._kickoff(bridge, build, None, f"agent '{work.agent.id}'")

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        bridge = GatewayBridge(self.gateway, asyncio.get_running_loop(), emit, stream_tokens=self.stream_tokens)
        crew = work.crew
        missing = sorted(name for name in crew_placeholders(crew, work.agents) if name not in work.inputs)
        if missing:
            raise NodeExecutionError(
                f"crew '{crew.id}' needs inputs it was not given: {', '.join(missing)} "
                "(declare them as flow inputs or set them in the node's inputs)",
                retryable=False,
            )
        unknown = [a for a in crew.agents if a not in work.agents]
        if unknown:
            raise NodeExecutionError(f"crew '{crew.id}' lists unknown agents: {', '.join(unknown)}", retryable=False)

        def build() -> Any:
            crewai = _crewai()
            agents = {
                agent_id: self._agent(crewai, work.agents[agent_id], bridge, work.tenant_id, work.execution_id,
                                      work.node_id, work.tools, work.attempt)
                for agent_id in crew.agents
            }
            tasks: dict[str, Any] = {}
            for index, spec in enumerate(crew.tasks):
                tasks[spec.name] = crewai.Task(
                    name=spec.name,
                    description=spec.description,
                    expected_output=spec.expected_output or "The result of the task.",
                    agent=self._assignee(crew, spec, index, agents),
                    **({"context": [tasks[c] for c in spec.context if c in tasks]} if spec.context else {}),
                )
            return self._crew(crewai, bridge, list(agents.values()), list(tasks.values()), crew.process,
                              crew.manager_provider, work)  # fmt: skip

        inputs = {k: _jsonable(v) for k, v in work.inputs.items()}
        return await self._kickoff(bridge, build, inputs, f"crew '{crew.id}'")

    # -- building ----------------------------------------------------------------------------------------
    @staticmethod
    def _assignee(crew: Crew, spec: CrewTask, index: int, agents: Mapping[str, Any]) -> Any:
        if spec.agent is not None:
            return agents[spec.agent]
        if crew.process == Process.HIERARCHICAL:
            return None  # the manager delegates it
        return agents[crew.agents[index % len(crew.agents)]]  # same rule as the CrewAI importer: in order

    def _agent(self, crewai: Any, agent: Agent, bridge: GatewayBridge, tenant_id: str, execution_id: str,
               node_id: str, tools: Mapping[str, ToolRef], attempt: int) -> Any:  # fmt: skip
        scope = CallScope(tenant_id=tenant_id, execution_id=execution_id, node_id=node_id, provider=agent.provider,
                          cache=agent.cache)  # fmt: skip
        llm = make_failover_llm(bridge, scope, label=agent.id, model=agent.model, temperature=agent.temperature)
        agent_tools: list[Any] = []
        if self.tools is not None:
            call = SandboxCall(self.tools, bridge.loop, bridge.emit, tenant_id, execution_id, node_id, attempt,
                               cancelled=lambda: bridge.cancelled)  # fmt: skip
            agent_tools = [crewai_tool(tools[t], call) for t in agent.tools if t in tools]
        return crewai.Agent(
            role=agent.role,
            goal=agent.goal,
            backstory=agent.backstory or agent.role,
            llm=llm,
            tools=agent_tools,
            allow_delegation=agent.allow_delegation,
            max_iter=agent.max_iter,
            max_retry_limit=0,  # the gateway already failed over; node retries follow the node's policy
            step_callback=_step_logger(bridge, agent.id),
            verbose=self.verbose,
        )

    def _crew(self, crewai: Any, bridge: GatewayBridge, agents: list[Any], tasks: list[Any], process: Process,
              manager_provider: str | None, work: AgentWork | CrewWork) -> Any:  # fmt: skip
        def on_task(output: Any) -> None:
            bridge.emit(EventKind.NODE_LOG, {
                "event": "task.completed",
                "task": getattr(output, "name", None) or "",
                "agent": str(getattr(output, "agent", "") or ""),
                "output": _clip(str(getattr(output, "raw", "") or "")),
            })  # fmt: skip

        options: dict[str, Any] = {}
        if process == Process.HIERARCHICAL:
            scope = CallScope(tenant_id=work.tenant_id, execution_id=work.execution_id, node_id=work.node_id,
                              provider=manager_provider)  # fmt: skip
            options["manager_llm"] = make_failover_llm(bridge, scope, label="manager")
        return crewai.Crew(
            agents=agents,
            tasks=tasks,
            process=crewai.Process.hierarchical if process == Process.HIERARCHICAL else crewai.Process.sequential,
            verbose=self.verbose,
            memory=False,
            planning=False,
            task_callback=on_task,
            **options,
        )

    # -- running -----------------------------------------------------------------------------------------
    async def _kickoff(self, bridge: GatewayBridge, build: Any, inputs: Mapping[str, Any] | None,
                       what: str) -> NodeOutcome:  # fmt: skip
        def run() -> Any:
            try:
                crew = build()
            except (TypeError, ValueError, KeyError) as exc:  # pydantic rejected the definition
                raise _InvalidDefinition(str(exc)) from None
            return crew.kickoff(inputs=dict(inputs) if inputs else None)

        try:
            result = await asyncio.to_thread(run)
        except asyncio.CancelledError:
            bridge.cancel()  # the worker thread stops at its next LLM call
            raise
        except _InvalidDefinition as exc:
            raise NodeExecutionError(f"{what} is not a valid CrewAI definition: {exc}", retryable=False) from None
        except LLMCallFailed as exc:
            raise self._failure(bridge, what, exc) from None
        except Exception as exc:  # CrewAI's own errors (an empty answer, a parsing failure): retry per policy
            if bridge.failure is not None:
                raise self._failure(bridge, what, exc) from None
            raise NodeExecutionError(f"{what} failed on CrewAI: {type(exc).__name__}: {exc}") from None
        await asyncio.sleep(0)  # let events queued from the worker thread reach the emitter first
        return NodeOutcome(
            output=str(getattr(result, "raw", result) or ""),
            llm_attempts=tuple(bridge.records),
            input_tokens=bridge.input_tokens,
            output_tokens=bridge.output_tokens,
            cost=bridge.cost,
        )

    @staticmethod
    def _failure(bridge: GatewayBridge, what: str, exc: BaseException) -> NodeExecutionError:
        failure = bridge.failure
        if failure is None:
            return NodeExecutionError(f"{what}: {exc}", retryable=getattr(exc, "retryable", True))
        return NodeExecutionError(f"{what}: {failure}", retryable=bridge.failure_retryable)


def _step_logger(bridge: GatewayBridge, agent_id: str) -> Any:
    """A CrewAI step callback that emits each agent step (thought, tool use, final answer) as a log event."""

    def on_step(step: Any) -> None:
        text = getattr(step, "text", None) or getattr(step, "output", None) or getattr(step, "result", None)
        data: dict[str, Any] = {"event": "agent.step", "agent": agent_id, "step": type(step).__name__,
                                "text": _clip(str(text or ""))}  # fmt: skip
        tool = getattr(step, "tool", None)
        if tool:
            data["tool"] = str(tool)
        bridge.emit(EventKind.NODE_LOG, data)

    return on_step


class _InvalidDefinition(Exception):
    """CrewAI refused to build the agents, tasks or crew (raised in the worker thread, before any LLM call)."""


def _crewai() -> Any:
    prepare_crewai_import()
    import crewai

    # Our task/step callbacks are closures over the node's emitter; CrewAI warns they cannot be checkpointed
    # (crewflow checkpoints nodes itself).
    warnings.filterwarnings("ignore", message=r".*callbacks cannot be serialized", category=UserWarning)
    return crewai


def _with_parent_context(task: str, inputs: Mapping[str, Any]) -> str:
    """Give an agent its parents' outputs when the task text does not already quote them."""
    extra = []
    for parent, value in inputs.items():
        text = to_text(value)
        if text and text not in task:
            extra.append(f"- {parent}: {text}")
    if not extra:
        return task
    return task + "\n\nOutputs of earlier steps:\n" + "\n".join(extra)
