"""A real local LLM server for tests, demos and benchmarks: OpenAI-compatible ``/v1/chat/completions`` and
Anthropic ``/v1/messages`` (streamed and not), deterministic scripted answers, tool calls, injectable faults
and a request log. It listens on 127.0.0.1 only.

In-process::

    async with LLMTestServer(api_key="sk-test") as server:
        server.provider("primary").fail(Fault.rate_limited(retry_after="1"))
        url = server.openai_base_url("primary")        # http://127.0.0.1:PORT/p/primary/v1
        ...
        server.requests(provider="primary")             # what was asked

Several providers are simulated by path prefix ``/p/<name>/`` (``/v1/...`` without prefix is provider
``default``); each has its own script, faults and (optionally) its own API key.

As a process: ``python -m crewflow.testing.llm_server --port 8765 [--api-key KEY]``. Control over HTTP:
``GET /_log`` (request log), ``DELETE /_log``, ``POST /_control`` with JSON
``{"provider": "p", "fault": {"kind": "status", "status": 429, "retry_after": "1", "times": 2}}``,
``{"provider": "p", "script": [{"content": "hi"}, {"tool_calls": [{"name": "t", "arguments": {}}]}]}``,
``{"provider": "p", "chaos": {"rate": 1.0, "kinds": ["429", "500", "503", "hang"], "seed": 1}}`` or
``{"provider": "p", "clear": true}``.

Default answer: see ``crewflow.adapters.llm.scripted.default_reply`` (CrewAI's "Final Answer:" format when
the prompt asks for it). Token usage counts words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from crewflow.adapters.llm.scripted import ScriptedReply, apply_stop, count_tokens, default_reply, tool_call

__all__ = ["Fault", "LLMTestServer", "LoggedRequest", "SimulatedProvider", "main"]

FAULT_KINDS = ("status", "hang", "slow", "malformed", "disconnect", "cut")


@dataclass(slots=True)
class Fault:
    """What goes wrong with the next ``times`` requests (``None``: every request until cleared).

    - ``status``: answer ``status`` with an error body (and ``Retry-After: retry_after`` if given);
    - ``hang``: never answer (until the client gives up, or ``delay`` seconds then answer normally);
    - ``slow``: answer normally but wait ``delay`` seconds before the answer / between stream chunks;
    - ``malformed``: 200 with a body that is not JSON (not-SSE-JSON when streaming);
    - ``disconnect``: close the connection without an answer;
    - ``cut``: a stream sends half of its chunks, then the connection closes (non-streamed: like ``disconnect``).
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    delay: float | None = None
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1", times: int | None = 1) -> Fault:
        return cls("status", 429, retry_after=retry_after, times=times)

    @classmethod
    def server_error(cls, status: int = 500, times: int | None = 1) -> Fault:
        return cls("status", status, times=times)

    @classmethod
    def unavailable(cls, times: int | None = 1) -> Fault:
        return cls("status", 503, times=times)

    @classmethod
    def unauthorized(cls, times: int | None = 1) -> Fault:
        return cls("status", 401, times=times)

    @classmethod
    def bad_request(cls, times: int | None = 1) -> Fault:
        return cls("status", 400, times=times)

    @classmethod
    def hang(cls, delay: float | None = None, times: int | None = 1) -> Fault:
        return cls("hang", delay=delay, times=times)

    @classmethod
    def slow(cls, delay: float, times: int | None = 1) -> Fault:
        return cls("slow", delay=delay, times=times)

    @classmethod
    def malformed(cls, times: int | None = 1) -> Fault:
        return cls("malformed", times=times)

    @classmethod
    def disconnect(cls, times: int | None = 1) -> Fault:
        return cls("disconnect", times=times)

    @classmethod
    def cut(cls, times: int | None = 1) -> Fault:
        return cls("cut", times=times)

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any]) -> Fault:
        """``"429"``, ``"500"``, ``"hang"``, ``"malformed"``... or a mapping of the fields."""
        if isinstance(spec, Mapping):
            return cls(**dict(spec))
        if spec.isdigit():
            return cls("status", int(spec), retry_after="1" if spec == "429" else None, times=None)
        return cls(spec, times=None)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    provider: str
    api: str  # openai | anthropic
    model: str | None
    stream: bool
    body_sha256: str
    at: float
    status: int
    key_ok: bool
    fault: str | None
    tools: int = 0  # how many tool definitions the request carried
    client_port: int | None = None  # the client's TCP port: one port for many requests = a reused connection

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SimulatedProvider:
    """One simulated provider: its scripted answers, its faults and its API key (``None``: not checked)."""

    name: str
    api_key: str | None
    replies: deque[ScriptedReply] = field(default_factory=deque)
    faults: deque[Fault] = field(default_factory=deque)
    chaos_rate: float = 0.0
    chaos_faults: tuple[Fault, ...] = ()
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def script(self, *replies: ScriptedReply | str) -> SimulatedProvider:
        self.replies.extend(ScriptedReply(content=r) if isinstance(r, str) else r for r in replies)
        return self

    def fail(self, *faults: Fault) -> SimulatedProvider:
        self.faults.extend(faults)
        return self

    def chaos(self, rate: float, faults: Iterable[Fault | str], seed: int = 0) -> SimulatedProvider:
        """Each request fails with probability ``rate``, with a fault drawn uniformly from ``faults``."""
        self.chaos_rate = rate
        self.chaos_faults = tuple(f if isinstance(f, Fault) else Fault.from_spec(f) for f in faults)
        self.rng = random.Random(seed)
        return self

    def clear(self) -> SimulatedProvider:
        self.replies.clear()
        self.faults.clear()
        self.chaos_rate = 0.0
        self.chaos_faults = ()
        return self

    def next_fault(self) -> Fault | None:
        if self.faults:
            fault = self.faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.popleft()
            return fault
        if self.chaos_rate > 0 and self.chaos_faults and self.rng.random() < self.chaos_rate:
            return self.rng.choice(self.chaos_faults)
        return None

    def next_reply(self) -> ScriptedReply | None:
        return self.replies.popleft() if self.replies else None


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "text":
                    parts.append(str(block.get("text", "")))
                elif block.get("type") == "tool_result":
                    parts.append(_text_of(block.get("content")))
            else:
                parts.append(str(block))
        return "\n".join(parts)
    return str(content)


def _openai_turns(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(m.get("role", "user")), _text_of(m.get("content"))) for m in body.get("messages") or ()]


def _anthropic_turns(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    system = body.get("system")
    if system:
        turns.append(("system", _text_of(system)))
    for m in body.get("messages") or ():
        content = m.get("content")
        is_tool_result = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        turns.append(("tool" if is_tool_result else str(m.get("role", "user")), _text_of(content)))
    return turns


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class LLMTestServer:
    """The server. ``api_key``: the key every provider expects unless ``provider(name, api_key=...)`` says
    otherwise (``None``: keys are not checked). ``port=0`` picks a free port."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = "test-key",
                 log_limit: int = 200_000) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.api_key = api_key
        self._providers: dict[str, SimulatedProvider] = {}
        self._log: deque[LoggedRequest] = deque(maxlen=log_limit)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    # ---------------------------------------------------------------- control (in-process)

    def provider(self, name: str = "default") -> SimulatedProvider:
        """The simulated provider ``name`` (created on first use, expecting the server's key; set its
        ``api_key`` to expect another one, or ``None`` to accept any)."""
        sim = self._providers.get(name)
        if sim is None:
            sim = SimulatedProvider(name, self.api_key)
            self._providers[name] = sim
        return sim

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def openai_base_url(self, provider: str = "default") -> str:
        return f"{self.url}/p/{provider}/v1"

    def anthropic_base_url(self, provider: str = "default") -> str:
        return f"{self.url}/p/{provider}"

    def requests(self, provider: str | None = None) -> list[LoggedRequest]:
        return [r for r in self._log if provider is None or r.provider == provider]

    def clear_log(self) -> None:
        self._log.clear()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> LLMTestServer:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/p/{provider}/v1/chat/completions", self._openai)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._openai)  # Azure style
        app.router.add_post("/p/{provider}/openai/deployments/{deployment}/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/p/{provider}/v1/messages", self._anthropic)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/p/{provider}/v1/models", self._models)
        app.router.add_get("/_log", self._get_log)
        app.router.add_delete("/_log", self._delete_log)
        app.router.add_post("/_control", self._control)
        app.router.add_get("/health", self._health)
        self._closing = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LLMTestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---------------------------------------------------------------- handlers

    @staticmethod
    def _key_ok(request: web.Request, api: str, expected: str | None) -> bool:
        if expected is None:
            return True
        if api == "anthropic":
            return request.headers.get("x-api-key") == expected
        auth = request.headers.get("Authorization", "")
        return auth == f"Bearer {expected}" or request.headers.get("api-key") == expected

    async def _read(
        self, request: web.Request, api: str
    ) -> tuple[SimulatedProvider, dict[str, Any], bytes] | web.Response:
        sim = self.provider(request.match_info.get("provider", "default"))
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise TypeError("body is not an object")
        except (ValueError, TypeError):
            self._record(request, sim, api, None, False, raw, 400, key_ok=True, fault=None)
            return self._error(api, 400, "invalid_request_error", "request body is not a JSON object")
        return sim, body, raw

    def _record(self, request: web.Request, sim: SimulatedProvider, api: str, model: str | None, stream: bool,
                raw: bytes, status: int, *, key_ok: bool, fault: str | None,
                body: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        tools = body.get("tools") if body is not None else None
        self._log.append(
            LoggedRequest(
                method=request.method,
                path=request.path,
                provider=sim.name,
                api=api,
                model=model,
                stream=stream,
                body_sha256=hashlib.sha256(raw).hexdigest(),
                at=time.time(),
                status=status,
                key_ok=key_ok,
                fault=fault,
                tools=len(tools) if isinstance(tools, list) else 0,
                client_port=peer[1] if isinstance(peer, tuple) and len(peer) > 1 else None,
            )
        )

    @staticmethod
    def _error(
        api: str, status: int, etype: str, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        if api == "anthropic":
            payload: dict[str, Any] = {"type": "error", "error": {"type": etype, "message": message}}
        else:
            payload = {"error": {"message": message, "type": etype, "code": status}}
        return web.json_response(payload, status=status, headers=headers)

    async def _apply_fault(
        self, request: web.Request, api: str, fault: Fault, stream: bool
    ) -> web.StreamResponse | None:
        """Answer for a fault, or ``None`` to go on with a normal (maybe slowed) answer."""
        if fault.kind == "status":
            kinds = {429: "rate_limit_error", 401: "authentication_error", 403: "permission_error",
                     400: "invalid_request_error", 529: "overloaded_error"}  # fmt: skip
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return self._error(api, fault.status, kinds.get(fault.status, "api_error"),
                               f"simulated HTTP {fault.status}", headers)  # fmt: skip
        if fault.kind == "hang":
            if fault.delay is None:
                await self._closing.wait()
                raise web.HTTPServiceUnavailable()
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "malformed":
            return web.Response(body=b'{"choices": [ this is not json', content_type="application/json")
        if fault.kind == "disconnect" or (fault.kind == "cut" and not stream):
            transport = request.transport
            if transport is not None:
                transport.close()
            return web.Response(status=500)
        return None

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        read = await self._read(request, "openai")
        if isinstance(read, web.Response):
            return read
        sim, body, raw = read
        model = str(body.get("model") or request.match_info.get("deployment") or "unknown")
        stream = bool(body.get("stream"))
        key_ok = self._key_ok(request, "openai", sim.api_key)
        fault = sim.next_fault() if key_ok else None
        status = 200 if key_ok else 401
        if fault is not None and fault.kind == "status":
            status = fault.status
        self._record(request, sim, "openai", model, stream, raw, status, key_ok=key_ok,
                     fault=fault.kind if fault else None, body=body)  # fmt: skip
        if not key_ok:
            return self._error("openai", 401, "invalid_request_error", "Incorrect API key provided")
        delay = 0.0
        if fault is not None:
            answer = await self._apply_fault(request, "openai", fault, stream)
            if answer is not None:
                if fault.kind == "malformed" and stream:
                    return await self._malformed_stream(request)
                return answer
            delay = (fault.delay or 0.0) if fault.kind == "slow" else 0.0
        reply = sim.next_reply() or ScriptedReply(content=default_reply(_openai_turns(body), model))
        content = apply_stop(reply.content, body.get("stop") or ()) if reply.content is not None else None
        calls = [self._openai_call(tc) for tc in reply.tool_calls]
        prompt_tokens = sum(count_tokens(t) for _, t in _openai_turns(body))
        completion_tokens = count_tokens(content or "") + sum(count_tokens(c["function"]["arguments"]) for c in calls)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
        rid = f"chatcmpl-{next(self._ids)}"
        finish = "tool_calls" if calls else "stop"
        if not stream:
            if delay:
                await asyncio.sleep(delay)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage,
            })  # fmt: skip
        resp = await self._start_stream(request)
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        chunks: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": w}}]} for w in _words(content or "") if w]
        for i, call in enumerate(calls):
            head = {"index": i, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
            args = call["function"]["arguments"]
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                tail = {"index": i, "function": {"arguments": part}}
                chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [tail]}}]})
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        if fault is not None and fault.kind == "cut":
            return await self._cut(request, resp, [_sse(c) for c in chunks])
        for chunk in chunks:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(_sse(chunk))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    @staticmethod
    def _openai_call(tc: Mapping[str, Any]) -> dict[str, Any]:
        if "function" in tc:
            fn = tc["function"]
            args = fn.get("arguments", "{}")
            args = args if isinstance(args, str) else json.dumps(args)
            cid = tc.get("id") or tool_call(fn["name"], {})["id"]
            return {"id": cid, "type": "function", "function": {"name": fn["name"], "arguments": args}}
        return tool_call(str(tc["name"]), tc.get("arguments") or {}, tc.get("id"))

    async def _start_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _cut(request: web.Request, resp: web.StreamResponse, frames: list[bytes]) -> web.StreamResponse:
        for frame in frames[: max(1, len(frames) // 2)]:
            await resp.write(frame)
        await asyncio.sleep(0.01)  # let the client read what was sent before the connection drops
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _malformed_stream(self, request: web.Request) -> web.StreamResponse:
        resp = await self._start_stream(request)
        await resp.write(b"data: {this is not json\n\n")
        await resp.write_eof()
        return resp

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        read = await self._read(request, "anthropic")
        if isinstance(read, web.Response):
            return read
        sim, body, raw = read
        model = str(body.get("model") or "unknown")
        stream = bool(body.get("stream"))
        key_ok = self._key_ok(request, "anthropic", sim.api_key)
        fault = sim.next_fault() if key_ok else None
        status = 200 if key_ok else 401
        if fault is not None and fault.kind == "status":
            status = fault.status
        self._record(request, sim, "anthropic", model, stream, raw, status, key_ok=key_ok,
                     fault=fault.kind if fault else None, body=body)  # fmt: skip
        if not key_ok:
            return self._error("anthropic", 401, "authentication_error", "invalid x-api-key")
        if "max_tokens" not in body:
            return self._error("anthropic", 400, "invalid_request_error", "max_tokens: Field required")
        delay = 0.0
        if fault is not None:
            answer = await self._apply_fault(request, "anthropic", fault, stream)
            if answer is not None:
                if fault.kind == "malformed" and stream:
                    return await self._malformed_stream(request)
                return answer
            delay = (fault.delay or 0.0) if fault.kind == "slow" else 0.0
        turns = _anthropic_turns(body)
        reply = sim.next_reply() or ScriptedReply(content=default_reply(turns, model))
        content = apply_stop(reply.content, body.get("stop_sequences") or ()) if reply.content is not None else None
        uses = []
        for tc in reply.tool_calls:
            call = self._openai_call(tc)
            uses.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                         "input": json.loads(call["function"]["arguments"] or "{}")})  # fmt: skip
        input_tokens = sum(count_tokens(t) for _, t in turns)
        output_tokens = count_tokens(content or "") + sum(count_tokens(json.dumps(u["input"])) for u in uses)
        stop_reason = "tool_use" if uses else "end_turn"
        mid = f"msg_{next(self._ids)}"
        blocks: list[dict[str, Any]] = ([{"type": "text", "text": content}] if content else []) + uses
        if not stream:
            if delay:
                await asyncio.sleep(delay)
            return web.json_response({
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
                "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            })  # fmt: skip
        resp = await self._start_stream(request)
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}),
            ("ping", {"type": "ping"}),
        ]  # fmt: skip
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "text", "text": ""}}))  # fmt: skip
                events += [("content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": {"type": "text_delta", "text": w}})
                           for w in _words(block["text"]) if w]  # fmt: skip
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": start}))  # fmt: skip
                args = json.dumps(block["input"])
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": part}}))  # fmt: skip
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                         "usage": {"output_tokens": output_tokens}}))  # fmt: skip
        events.append(("message_stop", {"type": "message_stop"}))
        if fault is not None and fault.kind == "cut":
            return await self._cut(request, resp, [_sse(data, name) for name, data in events])
        for name, data in events:
            if delay:
                await asyncio.sleep(delay)
            await resp.write(_sse(data, name))
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _get_log(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        return web.json_response([r.to_dict() for r in self.requests(provider)])

    async def _delete_log(self, request: web.Request) -> web.Response:
        self.clear_log()
        return web.json_response({"cleared": True})

    async def _control(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            sim = self.provider(str(spec.get("provider", "default")))
            if spec.get("clear"):
                sim.clear()
            if "api_key" in spec:
                sim.api_key = spec["api_key"]
            if "fault" in spec:
                sim.fail(Fault.from_spec(spec["fault"]))
            for item in spec.get("script") or ():
                calls = tuple(tool_call(c["name"], c.get("arguments") or {}, c.get("id"))
                              for c in item.get("tool_calls") or ())  # fmt: skip
                sim.script(ScriptedReply(content=item.get("content"), tool_calls=calls))
            if "chaos" in spec:
                chaos = spec["chaos"]
                sim.chaos(float(chaos.get("rate", 1.0)), chaos.get("kinds") or ("500",), int(chaos.get("seed", 0)))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"provider": sim.name, "faults": len(sim.faults), "replies": len(sim.replies)})


async def _serve(host: str, port: int, api_key: str | None) -> None:
    server = LLMTestServer(host=host, port=port, api_key=api_key)
    await server.start()
    print(f"crewflow LLM test server listening on {server.url} (OpenAI: {server.url}/v1, Anthropic: {server.url})",
          flush=True)  # fmt: skip
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crewflow.testing.llm_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="test-key", help="expected API key; empty string: do not check")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.api_key or None))


if __name__ == "__main__":
    main()
