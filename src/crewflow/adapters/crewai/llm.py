"""``FailoverLLM``: the LLM CrewAI sees. It subclasses CrewAI's ``BaseLLM`` and delegates every call to our
``LLMGateway``, so provider failover, attempt records, cost tracking and the response cache work inside any
crew, tool calls included.

Threading model. The engine's event loop owns the gateway (its HTTP sessions, circuit breakers, cache). CrewAI
is synchronous: the runtime runs ``Crew.kickoff`` in a worker thread (``asyncio.to_thread``), and CrewAI then
calls ``FailoverLLM.call`` from that thread. ``GatewayBridge`` schedules the gateway coroutine on the engine's
loop with ``asyncio.run_coroutine_threadsafe`` and waits for it in the worker thread, so the loop is never
blocked. Events raised in the worker thread reach the node's emitter through ``loop.call_soon_threadsafe``.

crewai is imported lazily (``failover_llm_class``) so that importing crewflow never imports crewai.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from crewflow.domain.errors import DomainError
from crewflow.domain.events import EventKind
from crewflow.domain.failover import AllProvidersFailed, ProviderError, estimate_tokens
from crewflow.ports.llm import CallScope, ChatMessage, ChatRequest, ChatResponse, LLMGateway
from crewflow.ports.runtime import NodeEmitter

__all__ = [
    "CREWAI_ENV",
    "GatewayBridge",
    "LLMCallFailed",
    "chat_request_from_crewai",
    "failover_llm_class",
    "make_failover_llm",
    "prepare_crewai_import",
]

T = TypeVar("T")

#: Set before crewai is imported: no telemetry host lookups, no tracing, no network fetch of litellm's price map.
CREWAI_ENV: Mapping[str, str] = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
}


def prepare_crewai_import() -> None:
    """Turn crewai's telemetry and tracing off. Call before the first ``import crewai``."""
    for key, value in CREWAI_ENV.items():
        os.environ[key] = value


class LLMCallFailed(RuntimeError):
    """Raised into CrewAI when the gateway gives up. Deliberately carries no cause chain and no provider text:
    CrewAI's own rate-limit retry (``run_with_rate_limit_retry``) inspects the chain and message for "429" or
    "rate limit", and would retry a call our gateway already failed over. The full error is kept by the
    ``GatewayBridge`` (``failure``) for the runtime to report."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)


def _retryable(exc: BaseException) -> bool:
    """Worth retrying the node later: every provider failed transiently. Not: over budget, a request every
    provider rejects, no provider configured."""
    if isinstance(exc, AllProvidersFailed):
        return True
    return isinstance(exc, ProviderError) and exc.retryable


class GatewayBridge:
    """Connects CrewAI's worker threads to the gateway running on the engine's event loop, for one node run.

    It records every attempt the gateway reports (``records``), forwards attempts and streamed tokens to the
    node's emitter, and remembers the last gateway failure (``failure``)."""

    def __init__(self, gateway: LLMGateway, loop: asyncio.AbstractEventLoop, emit: NodeEmitter, *,
                 stream_tokens: bool = True) -> None:  # fmt: skip
        self.gateway = gateway
        self.loop = loop
        self._emit = emit
        self.stream_tokens = stream_tokens
        self.records: list[dict[str, Any]] = []
        self.failure: BaseException | None = None
        self.failure_retryable = True
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()

    # -- events ------------------------------------------------------------------------------------------
    def emit(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        """Emit from any thread; the emitter itself always runs on the loop."""
        if self._on_loop_thread():
            self._emit(kind, data)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._emit, kind, dict(data))

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # -- totals ------------------------------------------------------------------------------------------
    @property
    def input_tokens(self) -> int:
        return sum(int(r.get("input_tokens") or 0) for r in self.records)

    @property
    def output_tokens(self) -> int:
        return sum(int(r.get("output_tokens") or 0) for r in self.records)

    @property
    def cost(self) -> float:
        return float(sum(float(r.get("cost") or 0.0) for r in self.records))

    # -- cancellation ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """The node was cancelled: refuse further calls and abandon the ones in flight."""
        self._cancelled.set()
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- calls -------------------------------------------------------------------------------------------
    async def _complete(self, request: ChatRequest, scope: CallScope, label: str) -> ChatResponse:
        def on_attempt(record: Mapping[str, Any]) -> None:
            entry = dict(record)
            self.records.append(entry)
            self._emit(EventKind.LLM_ATTEMPT, {**entry, "agent": label})

        def on_token(token: str) -> None:
            self._emit(EventKind.NODE_TOKEN, {"token": token, "agent": label})

        return await self.gateway.complete(request, scope, on_token=on_token if request.stream else None,
                                           on_attempt=on_attempt)  # fmt: skip

    def complete(self, request: ChatRequest, scope: CallScope, label: str) -> ChatResponse:
        """Blocking call for CrewAI's worker thread. Never call it on the loop's own thread."""
        if self._on_loop_thread():
            raise RuntimeError("FailoverLLM.call was invoked on the event loop's thread and would block it; "
                               "run the crew in a worker thread (asyncio.to_thread) or use acall")  # fmt: skip
        return self._wait(asyncio.run_coroutine_threadsafe(self._complete(request, scope, label), self.loop))

    async def acomplete(self, request: ChatRequest, scope: CallScope, label: str) -> ChatResponse:
        """For CrewAI's async paths, whichever loop they run on."""
        if self._cancelled.is_set():
            raise LLMCallFailed("the node was cancelled", retryable=False)
        if self._on_loop_thread():
            return await self._guard(self._complete(request, scope, label))
        future = asyncio.run_coroutine_threadsafe(self._complete(request, scope, label), self.loop)
        return await self._guard(asyncio.wrap_future(future))

    async def _guard(self, awaitable: Any) -> ChatResponse:
        failure: LLMCallFailed | None = None
        try:
            response: ChatResponse = await awaitable
            return response
        except DomainError as exc:
            failure = self._failed(exc)
        raise failure

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        if self._cancelled.is_set():
            future.cancel()
            raise LLMCallFailed("the node was cancelled", retryable=False)
        with self._lock:
            self._pending.add(future)
        failure: LLMCallFailed | None = None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            failure = LLMCallFailed("the node was cancelled", retryable=False)
        except DomainError as exc:  # AllProvidersFailed, BudgetExceeded, fail-fast ProviderError
            failure = self._failed(exc)
        finally:
            with self._lock:
                self._pending.discard(future)
        raise failure  # outside the except block: no __context__ for CrewAI's retry classifier to inspect

    def _failed(self, exc: DomainError) -> LLMCallFailed:
        self.failure = exc
        self.failure_retryable = retryable = _retryable(exc)
        return LLMCallFailed(f"LLM gateway call failed ({type(exc).__name__}); see the node's llm.attempt events",
                             retryable=retryable)  # fmt: skip


# ------------------------------------------------------------------------------------------ messages


def _text(content: Any) -> str | None:
    """CrewAI message content: a string, None, or a list of content blocks (text parts are kept)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, str):
                parts.append(block)
        return "\n".join(parts)
    return str(content)


def _tool_call(call: Any) -> dict[str, Any]:
    """One tool call in OpenAI shape, whatever CrewAI handed back (it echoes ours, as dicts)."""
    if isinstance(call, Mapping):
        function = call.get("function") or {}
        arguments = function.get("arguments", "{}")
        return {
            "id": str(call.get("id") or ""),
            "type": "function",
            "function": {
                "name": str(function.get("name") or ""),
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            },
        }
    function = getattr(call, "function", None)
    arguments = getattr(function, "arguments", "{}")
    return {
        "id": str(getattr(call, "id", "") or ""),
        "type": "function",
        "function": {
            "name": str(getattr(function, "name", "") or ""),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def _tool_schema(tool: Any) -> Mapping[str, Any] | None:
    """An OpenAI ``tools`` entry (CrewAI passes these already converted for native function calling)."""
    if isinstance(tool, Mapping):
        if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping):
            return dict(tool)
        if "name" in tool:
            return {"type": "function", "function": dict(tool)}
    return None


def chat_request_from_crewai(messages: str | Sequence[Mapping[str, Any]], *, tools: Sequence[Any] | None = None,
                             model: str | None = None, temperature: float | None = None,
                             max_tokens: int | None = None, stop: Sequence[str] = (),
                             stream: bool = False) -> ChatRequest:  # fmt: skip
    """CrewAI's messages (a string or OpenAI-style message dicts) as our ``ChatRequest``."""
    if isinstance(messages, str):
        converted: tuple[ChatMessage, ...] = (ChatMessage(role="user", content=messages),)
    else:
        items = []
        for message in messages:
            role = str(message.get("role") or "user")
            calls = tuple(_tool_call(c) for c in (message.get("tool_calls") or ()))
            items.append(ChatMessage(
                role=role,
                content=_text(message.get("content")),
                tool_calls=calls,
                tool_call_id=message.get("tool_call_id"),
                name=message.get("name") if role == "tool" else None,
            ))  # fmt: skip
        converted = tuple(items)
    schemas = tuple(s for s in (_tool_schema(t) for t in (tools or ())) if s is not None)
    return ChatRequest(messages=converted, model=model, temperature=temperature, max_tokens=max_tokens,
                       tools=schemas, stop=tuple(stop), stream=stream)  # fmt: skip


# ----------------------------------------------------------------------------------------- the class


@functools.cache
def failover_llm_class() -> type[Any]:
    """Import crewai (telemetry off) and define ``FailoverLLM`` as a subclass of its ``BaseLLM``."""
    prepare_crewai_import()
    from crewai.llms.base_llm import BaseLLM
    from pydantic import PrivateAttr

    class FailoverLLM(BaseLLM):
        """A CrewAI LLM that answers through crewflow's gateway (failover, attempts, cost, cache)."""

        llm_type: str = "crewflow"
        _bridge: GatewayBridge | None = PrivateAttr(default=None)
        _scope: CallScope | None = PrivateAttr(default=None)
        _label: str = PrivateAttr(default="")
        _gateway_model: str | None = PrivateAttr(default=None)

        def bind(self, bridge: GatewayBridge, scope: CallScope, label: str, model: str | None) -> None:
            self._bridge, self._scope, self._label, self._gateway_model = bridge, scope, label, model

        def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
            """One token per four characters (as CrewAI's fallback, without its warning on every call)."""
            if isinstance(messages, str):
                return estimate_tokens(messages)
            return sum(estimate_tokens(_text(m.get("content")) or "") for m in messages)

        # CrewAI asks these before deciding how to prompt.
        def supports_function_calling(self) -> bool:
            return True

        def supports_stop_words(self) -> bool:
            return True

        def _request(self, messages: Any, tools: Any) -> ChatRequest:
            bridge = self._require_bridge()
            max_tokens = int(self.max_tokens) if self.max_tokens else None
            return chat_request_from_crewai(
                messages, tools=tools, model=self._gateway_model, temperature=self.temperature,
                max_tokens=max_tokens, stop=list(self.stop_sequences), stream=bridge.stream_tokens,
            )  # fmt: skip

        def _require_bridge(self) -> GatewayBridge:
            if self._bridge is None or self._scope is None:
                raise RuntimeError("FailoverLLM is not bound to a gateway (build it with make_failover_llm)")
            return self._bridge

        def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
                 from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:  # fmt: skip
            bridge = self._require_bridge()
            assert self._scope is not None
            response = bridge.complete(self._request(messages, tools), self._scope, self._label)
            return self._answer(response, available_functions, from_task, from_agent, response_model)

        async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None,
                        available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
                        response_model: Any = None) -> Any:  # fmt: skip
            bridge = self._require_bridge()
            assert self._scope is not None
            response = await bridge.acomplete(self._request(messages, tools), self._scope, self._label)
            return self._answer(response, available_functions, from_task, from_agent, response_model)

        def _answer(self, response: ChatResponse, available_functions: Any, from_task: Any, from_agent: Any,
                    response_model: Any) -> Any:  # fmt: skip
            usage = response.usage
            self._track_token_usage_internal({
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            })  # fmt: skip
            if response.tool_calls:
                calls = [_tool_call(c) for c in response.tool_calls]
                if not available_functions:
                    return calls  # CrewAI's native tool loop runs them and calls us again with the results
                first = calls[0]["function"]
                try:
                    arguments = json.loads(first["arguments"] or "{}")
                except json.JSONDecodeError:
                    arguments = {}
                result = self._handle_tool_execution(first["name"], arguments if isinstance(arguments, dict)
                                                     else {}, available_functions, from_task, from_agent)  # fmt: skip
                if result is not None:
                    return result
            content = self._apply_stop_words(response.content or "")
            if response_model is not None and content:
                try:
                    return response_model.model_validate_json(content)
                except ValueError:
                    return content
            return content

    return FailoverLLM


def make_failover_llm(bridge: GatewayBridge, scope: CallScope, *, label: str, model: str | None = None,
                      temperature: float | None = None) -> Any:  # fmt: skip
    """A ``FailoverLLM`` bound to ``bridge``; ``model`` None lets each provider use its configured model.

    ``scope.provider`` puts a preferred provider first; ``scope.cache`` opts out of the response cache."""
    cls = failover_llm_class()
    llm = cls(model=model or "crewflow-gateway", temperature=temperature, provider="crewflow")
    llm.bind(bridge, scope, label, model)
    return llm

