"""Anthropic Messages API (``POST {base_url}/v1/messages``).

Our requests and answers use the OpenAI shape (see ``crewflow.ports.llm``); this adapter converts: system
messages go to ``system``, tool calls to ``tool_use`` blocks, tool results to ``tool_result`` blocks, OpenAI
``tools`` to ``input_schema`` tools, and back for the answer. Streaming events become ``on_token`` calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from crewflow.adapters.llm.http import HttpTransport, decode_json
from crewflow.adapters.telemetry import llm_call_span
from crewflow.domain.failover import MalformedResponse, ServerError
from crewflow.ports.llm import ChatMessage, ChatRequest, ChatResponse, ProviderConfig, TokenCallback, Usage

__all__ = ["AnthropicProvider", "request_body", "tool_use_to_openai"]

_VERSION = "2023-06-01"
_DEFAULT_MAX_TOKENS = 1024
_STOP = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length"}


def _tool_use_block(tc: Mapping[str, Any]) -> dict[str, Any]:
    fn = tc.get("function") or {}
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError:
        args = {"input": raw}
    return {"type": "tool_use", "id": tc.get("id") or "", "name": fn.get("name") or "", "input": args}


def tool_use_to_openai(block: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {}, sort_keys=True)},
    }


def _messages(messages: tuple[ChatMessage, ...]) -> tuple[str | None, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content or "")
            continue
        if m.role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id or "",
                                     "content": m.content or ""}  # fmt: skip
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        if m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks.extend(_tool_use_block(tc) for tc in m.tool_calls)
            out.append({"role": "assistant", "content": blocks})
            continue
        role = "assistant" if m.role == "assistant" else "user"
        out.append({"role": role, "content": m.content or ""})
    return ("\n\n".join(system) if system else None), out


def _tools(tools: tuple[Mapping[str, Any], ...]) -> list[dict[str, Any]]:
    converted = []
    for t in tools:
        fn = t.get("function", t)
        converted.append({
            "name": fn.get("name"),
            "description": fn.get("description") or "",
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        })  # fmt: skip
    return converted


def _tool_choice(choice: str | Mapping[str, Any]) -> dict[str, Any] | None:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    return None


def request_body(request: ChatRequest, model: str) -> dict[str, Any]:
    system, messages = _messages(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": request.max_tokens or _DEFAULT_MAX_TOKENS,
    }
    if system is not None:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools and request.tool_choice != "none":
        body["tools"] = _tools(request.tools)
        if request.tool_choice is not None:
            choice = _tool_choice(request.tool_choice)
            if choice is not None:
                body["tool_choice"] = choice
    if request.stream:
        body["stream"] = True
    body.update(request.extra)
    return body


class AnthropicProvider:
    """Implements ``LLMProvider`` for ``kind`` ``anthropic``."""

    def __init__(self, config: ProviderConfig, *, transport: HttpTransport | None = None) -> None:
        self.config = config
        self._transport = transport or HttpTransport.for_provider(config)
        self._url = config.base_url.rstrip("/") + "/v1/messages"
        self._server = urlsplit(config.base_url).hostname  # for the LLM span
        self._headers = {
            "Content-Type": "application/json",
            "anthropic-version": config.api_version or _VERSION,
            **dict(config.headers),
        }
        if config.api_key:
            self._headers["x-api-key"] = config.api_key

    @property
    def name(self) -> str:
        return self.config.name

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
        model = request.model or self.config.model
        with llm_call_span(kind="anthropic", provider=self.name, model=model, request=request,
                           server_address=self._server) as done:  # fmt: skip
            body = request_body(request, model)
            if request.stream:
                return done(await self._stream(body, model, on_token))
            data = await self._transport.post_json(self._url, self._headers, body)
            return done(self._parse(data, model))

    def _parse(self, data: Any, model: str) -> ChatResponse:
        try:
            blocks = data["content"]
            texts = [b["text"] for b in blocks if b.get("type") == "text"]
            calls = tuple(tool_use_to_openai(b) for b in blocks if b.get("type") == "tool_use")
            usage = data.get("usage") or {}
        except (KeyError, TypeError, AttributeError):
            raise MalformedResponse("no content blocks in the response", provider=self.name) from None
        return ChatResponse(
            content="".join(texts) if texts or not calls else None,
            model=str(data.get("model") or model),
            provider=self.name,
            usage=Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
            tool_calls=calls,
            finish_reason=_STOP.get(str(data.get("stop_reason")), data.get("stop_reason")),
        )

    async def _stream(self, body: Mapping[str, Any], model: str, on_token: TokenCallback | None) -> ChatResponse:
        parts: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        input_tokens = output_tokens = 0
        stop: str | None = None
        answered_model = model
        finished = False
        async with self._transport.stream(self._url, self._headers, body) as events:
            async for event in events:
                data = decode_json(event.data.encode(), provider=self.name)
                if not isinstance(data, dict):
                    raise MalformedResponse("stream event is not an object", provider=self.name)
                kind = data.get("type") or event.event
                if kind == "message_start":
                    msg = data.get("message") or {}
                    answered_model = str(msg.get("model") or answered_model)
                    input_tokens = int((msg.get("usage") or {}).get("input_tokens") or 0)
                elif kind == "content_block_start":
                    block = dict(data.get("content_block") or {})
                    block["partial_json"] = ""
                    blocks[int(data.get("index", len(blocks)))] = block
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        parts.append(delta["text"])
                        if on_token is not None:
                            on_token(delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        blocks.setdefault(int(data.get("index", 0)), {"partial_json": ""})
                        blocks[int(data.get("index", 0))]["partial_json"] += delta.get("partial_json") or ""
                elif kind == "message_delta":
                    stop = (data.get("delta") or {}).get("stop_reason") or stop
                    output_tokens = int((data.get("usage") or {}).get("output_tokens") or output_tokens)
                elif kind == "message_stop":
                    finished = True
                    break
                elif kind == "error":
                    err = data.get("error") or {}
                    raise ServerError(f"error in stream: {err.get('message', err)}"[:300], provider=self.name)
        if not finished:
            raise ServerError("stream ended before message_stop", provider=self.name)
        calls = []
        for i in sorted(blocks):
            block = blocks[i]
            if block.get("type") == "tool_use":
                raw = block.get("partial_json") or ""
                try:
                    block["input"] = json.loads(raw) if raw else block.get("input") or {}
                except json.JSONDecodeError:
                    raise MalformedResponse("tool input in stream is not valid JSON", provider=self.name) from None
                calls.append(tool_use_to_openai(block))
        return ChatResponse(
            content="".join(parts) if parts or not calls else None,
            model=answered_model,
            provider=self.name,
            usage=Usage(input_tokens, output_tokens),
            tool_calls=tuple(calls),
            finish_reason=_STOP.get(str(stop), stop),
        )

    async def close(self) -> None:
        await self._transport.close()
