"""The offline provider: deterministic answers without any network, and the reply rules it shares with the
local test server (``crewflow.testing.llm_server``).

Default answer: derived from the last user message (and a short digest of the whole conversation). When the
prompt asks for CrewAI's ReAct format (it mentions ``Final Answer``), the answer is given in that format, so a
CrewAI agent without tools finishes in one call. After a tool result, the answer quotes it.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crewflow.domain.failover import ProviderError
from crewflow.ports.llm import ChatMessage, ChatRequest, ChatResponse, TokenCallback, Usage

__all__ = [
    "ScriptedProvider",
    "ScriptedReply",
    "count_tokens",
    "default_reply",
    "tool_call",
]


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    """One scripted answer: text and/or tool calls (OpenAI shape, see ``tool_call``)."""

    content: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def tool_call(name: str, arguments: Mapping[str, Any], call_id: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped tool call with a deterministic id."""
    args = json.dumps(dict(arguments), sort_keys=True)
    cid = call_id or "call_" + hashlib.sha256(f"{name}:{args}".encode()).hexdigest()[:12]
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def count_tokens(text: str) -> int:
    """Deterministic token count used by the offline providers: one per word, at least one for non-empty."""
    return len(text.split()) if text.strip() else 0


def default_reply(turns: Sequence[tuple[str, str]], model: str) -> str:
    """The answer to a conversation given as ``(role, text)`` pairs."""
    digest = hashlib.sha256(json.dumps([list(t) for t in turns]).encode()).hexdigest()[:8]
    react = any("Final Answer" in text for _, text in turns)
    if turns and turns[-1][0] == "tool":
        answer = f"Answer from {model} using the tool result: {' '.join(turns[-1][1].split())[:200]}"
    else:
        last_user = next((text for role, text in reversed(turns) if role == "user"), "")
        answer = f"Answer from {model} to: {' '.join(last_user.split())[:160]} [{digest}]"
    if react:
        return f"Thought: I now can give a great answer\nFinal Answer: {answer}"
    return answer


def apply_stop(text: str, stop: Iterable[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


def _turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.content or "") for m in messages]


Script = ScriptedReply | str | ProviderError


class ScriptedProvider:
    """Implements ``LLMProvider`` offline. ``script`` is consumed in order: a string or ``ScriptedReply``
    is answered, a ``ProviderError`` is raised (to rehearse failover); when it is empty, the default reply
    is given. Streaming calls ``on_token`` once per word."""

    def __init__(self, name: str = "scripted", model: str = "scripted", script: Iterable[Script] = ()) -> None:
        self._name = name
        self.model = model
        self._script: deque[Script] = deque(script)
        self.calls: list[ChatRequest] = []

    @property
    def name(self) -> str:
        return self._name

    def push(self, *items: Script) -> None:
        self._script.extend(items)

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
        self.calls.append(request)
        model = request.model or self.model
        item: Script | None = self._script.popleft() if self._script else None
        if isinstance(item, ProviderError):
            raise item
        reply = ScriptedReply(content=item) if isinstance(item, str) else item
        if reply is None:
            reply = ScriptedReply(content=default_reply(_turns(request.messages), model))
        content = apply_stop(reply.content, request.stop) if reply.content is not None else None
        if request.stream and on_token is not None and content:
            for i, word in enumerate(content.split(" ")):
                on_token(word if i == 0 else " " + word)
        prompt = " ".join(m.content or "" for m in request.messages)
        return ChatResponse(
            content=content,
            model=model,
            provider=self._name,
            usage=Usage(count_tokens(prompt), count_tokens(content or "")),
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish_reason,
        )

    async def close(self) -> None:
        return None
