"""OpenAI-compatible chat completions: OpenAI, Azure OpenAI style, vLLM, LM Studio, Ollama's ``/v1``.

Streaming (SSE) is turned into ``on_token`` calls; tool calls are passed through in OpenAI shape (streamed
deltas are re-assembled); usage is read from the response (``stream_options.include_usage`` when streaming).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from crewflow.adapters.llm.http import HttpTransport, decode_json
from crewflow.adapters.telemetry import llm_call_span
from crewflow.domain.failover import MalformedResponse, ServerError
from crewflow.ports.llm import ChatMessage, ChatRequest, ChatResponse, ProviderConfig, TokenCallback, Usage

__all__ = ["OpenAICompatProvider", "message_to_openai", "request_body"]

_AZURE_DEFAULT_VERSION = "2024-06-01"


def message_to_openai(m: ChatMessage) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [dict(tc) for tc in m.tool_calls]
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    return d


def request_body(request: ChatRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [message_to_openai(m) for m in request.messages]}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.tools:
        body["tools"] = [dict(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.stop:
        body["stop"] = list(request.stop)
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(request.extra)
    return body


def _empty_call() -> dict[str, Any]:
    return {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


class OpenAICompatProvider:
    """Implements ``LLMProvider`` for ``kind`` ``openai`` (and compatible servers) and ``azure``."""

    def __init__(self, config: ProviderConfig, *, transport: HttpTransport | None = None) -> None:
        self.config = config
        self._transport = transport or HttpTransport.for_provider(config)
        base = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json", **dict(config.headers)}
        if config.kind == "azure":
            version = config.api_version or _AZURE_DEFAULT_VERSION
            self._url_template = f"{base}/openai/deployments/{{model}}/chat/completions?api-version={version}"
            if config.api_key:
                headers["api-key"] = config.api_key
        else:
            self._url_template = ""
            self._url = f"{base}/chat/completions"
            if config.api_key:
                headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._server = urlsplit(config.base_url).hostname  # for the LLM span

    @property
    def name(self) -> str:
        return self.config.name

    def _endpoint(self, model: str) -> str:
        return self._url_template.format(model=model) if self._url_template else self._url

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
        model = request.model or self.config.model
        with llm_call_span(kind=self.config.kind, provider=self.name, model=model, request=request,
                           server_address=self._server) as done:  # fmt: skip
            body = request_body(request, model)
            url = self._endpoint(model)
            if request.stream:
                return done(await self._stream(url, body, model, on_token))
            data = await self._transport.post_json(url, self._headers, body)
            return done(self._parse(data, model))

    def _parse(self, data: Any, model: str) -> ChatResponse:
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
            tool_calls = tuple(message.get("tool_calls") or ())
        except (KeyError, IndexError, TypeError, AttributeError):
            raise MalformedResponse("no choices[0].message in the response", provider=self.name) from None
        if content is not None and not isinstance(content, str):
            raise MalformedResponse("message content is not a string", provider=self.name)
        return ChatResponse(
            content=content,
            model=str(data.get("model") or model),
            provider=self.name,
            usage=_usage(data.get("usage")),
            tool_calls=tool_calls,
            finish_reason=choice.get("finish_reason"),
        )

    async def _stream(
        self, url: str, body: Mapping[str, Any], model: str, on_token: TokenCallback | None
    ) -> ChatResponse:
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage = Usage()
        finish: str | None = None
        answered_model = model
        done = False
        async with self._transport.stream(url, self._headers, body) as events:
            async for event in events:
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                chunk = decode_json(event.data.encode(), provider=self.name)
                if not isinstance(chunk, dict):
                    raise MalformedResponse("stream chunk is not an object", provider=self.name)
                if "error" in chunk:
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise ServerError(f"error in stream: {msg}"[:300], provider=self.name)
                answered_model = str(chunk.get("model") or answered_model)
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        parts.append(text)
                        if on_token is not None:
                            on_token(text)
                    for tc in delta.get("tool_calls") or ():
                        index = int(tc.get("index", len(calls)))
                        slot = calls.setdefault(index, _empty_call())
                        if tc.get("id"):
                            slot["id"] = tc["id"]
                        fn = tc.get("function") or {}
                        if fn.get("name"):
                            slot["function"]["name"] += fn["name"]
                        if fn.get("arguments"):
                            slot["function"]["arguments"] += fn["arguments"]
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        if not done and finish is None:
            raise ServerError("stream ended before it finished", provider=self.name)
        return ChatResponse(
            content="".join(parts) if parts or not calls else None,
            model=answered_model,
            provider=self.name,
            usage=usage,
            tool_calls=tuple(calls[i] for i in sorted(calls)),
            finish_reason=finish,
        )

    async def close(self) -> None:
        await self._transport.close()
