"""Provider adapters and the gateway against the real local LLM server (127.0.0.1, in-process or as a
subprocess). No test calls a real provider."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from crewflow.adapters.llm import build_provider
from crewflow.adapters.llm.registry import InMemoryProviderRegistry
from crewflow.adapters.llm.scripted import ScriptedReply, tool_call
from crewflow.adapters.metrics.memory import InMemoryMetrics
from crewflow.application.gateway import Gateway
from crewflow.domain.failover import (
    AllProvidersFailed,
    CircuitBreaker,
    FailoverPolicy,
    MalformedResponse,
    Price,
    RequestRejected,
    ServerError,
    Timeout,
)
from crewflow.ports.llm import CallScope, ChatMessage, ChatRequest, ProviderConfig, ProviderEntry
from crewflow.testing.llm_server import Fault, LLMTestServer

pytestmark = pytest.mark.integration

KEY = "sk-test-4f9a1c2b7d3e8f60aa11"
TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    },
)


@pytest.fixture
async def server() -> AsyncIterator[LLMTestServer]:
    async with LLMTestServer(api_key=KEY) as srv:
        yield srv


def config(server: LLMTestServer, name: str, kind: str = "openai", **kw: Any) -> ProviderConfig:
    base = server.anthropic_base_url(name) if kind in ("anthropic", "azure") else server.openai_base_url(name)
    defaults: dict[str, Any] = {"api_key": KEY, "timeout": 2.0, "price": Price(0.01, 0.03)}
    defaults.update(kw)
    return ProviderConfig(name=name, kind=kind, model=f"{name}-model", base_url=base, **defaults)


@pytest.fixture
async def gateway_for(server: LLMTestServer) -> AsyncIterator[Any]:
    registries: list[InMemoryProviderRegistry] = []

    def make(*configs: ProviderConfig, metrics: InMemoryMetrics | None = None, **kw: Any) -> Gateway:
        registry = InMemoryProviderRegistry()
        registry.set_tenant("acme", [ProviderEntry(c, build_provider(c)) for c in configs])
        registries.append(registry)
        return Gateway(registry, metrics=metrics, **kw)

    yield make
    for registry in registries:
        await registry.close()


def ask(text: str = "Summarise the news", **kw: Any) -> ChatRequest:
    return ChatRequest((ChatMessage("system", "You are terse."), ChatMessage("user", text)), **kw)


async def test_a_rate_limited_primary_is_answered_by_the_secondary_with_attempts_tokens_and_cost(
    server: LLMTestServer, gateway_for: Any
) -> None:
    server.provider("primary").fail(Fault.rate_limited(retry_after="30"))
    metrics = InMemoryMetrics()
    gateway = gateway_for(config(server, "primary"), config(server, "secondary", "anthropic"), metrics=metrics)
    attempts: list[dict[str, Any]] = []
    response = await gateway.complete(ask(), CallScope("acme", cache=False), on_attempt=attempts.append)
    assert response.provider == "secondary"
    assert "Summarise the news" in (response.content or "")
    assert [a["outcome"] for a in attempts] == ["rate_limited", "success"]
    assert attempts[0]["status"] == 429
    ok = attempts[1]
    assert ok["input_tokens"] == response.usage.input_tokens > 0
    assert ok["output_tokens"] == response.usage.output_tokens > 0
    assert ok["cost"] == pytest.approx((ok["input_tokens"] * 0.01 + ok["output_tokens"] * 0.03) / 1000)
    assert response.attempts == tuple(attempts)
    assert [(r.provider, r.status) for r in server.requests()] == [("primary", 429), ("secondary", 200)]
    assert all(r.key_ok for r in server.requests())
    assert metrics.counter("llm_api_calls_total", provider="primary", status="rate_limited") == 1


async def test_retry_after_zero_is_retried_on_the_same_provider_after_the_policy_floor(
    server: LLMTestServer, gateway_for: Any
) -> None:
    server.provider("primary").fail(Fault.rate_limited(retry_after="0"))
    gateway = gateway_for(config(server, "primary"), config(server, "secondary"))
    response = await gateway.complete(ask(), CallScope("acme"))
    assert response.provider == "primary"
    assert [r.provider for r in server.requests()] == ["primary", "primary"]


async def test_rejected_credentials_mark_the_provider_unhealthy_and_fail_over(
    server: LLMTestServer, gateway_for: Any
) -> None:
    server.provider("primary").api_key = "sk-a-different-key-000"  # our configured key is now wrong
    gateway = gateway_for(config(server, "primary"), config(server, "secondary"))
    first = await gateway.complete(ask("one"), CallScope("acme"))
    second = await gateway.complete(ask("two"), CallScope("acme"))
    assert first.provider == second.provider == "secondary"
    assert [a["outcome"] for a in first.attempts] == ["auth", "success"]
    assert len(server.requests("primary")) == 1
    assert not server.requests("primary")[0].key_ok
    assert gateway.breaker("acme", "primary").unhealthy


async def test_a_bad_request_fails_fast(server: LLMTestServer, gateway_for: Any) -> None:
    server.provider("primary").fail(Fault.bad_request())
    gateway = gateway_for(config(server, "primary"), config(server, "secondary"))
    with pytest.raises(RequestRejected) as info:
        await gateway.complete(ask(), CallScope("acme"))
    assert info.value.status == 400
    assert server.requests("secondary") == []


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_streamed_tokens_arrive_one_by_one_with_usage(server: LLMTestServer, gateway_for: Any, kind: str) -> None:
    gateway = gateway_for(config(server, "p", kind))
    tokens: list[str] = []
    response = await gateway.complete(ask(stream=True), CallScope("acme"), on_token=tokens.append)
    assert len(tokens) > 3
    assert "".join(tokens) == response.content
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == len(tokens)
    assert server.requests()[0].stream


async def test_a_slow_stream_still_completes_when_chunks_come_within_the_read_timeout(
    server: LLMTestServer, gateway_for: Any
) -> None:
    server.provider("p").fail(Fault.slow(0.02))
    gateway = gateway_for(config(server, "p", timeout=1.0))
    tokens: list[str] = []
    response = await gateway.complete(ask(stream=True), CallScope("acme"), on_token=tokens.append)
    assert "".join(tokens) == response.content
    assert server.requests()[0].fault == "slow"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_passed_through_both_ways(
    server: LLMTestServer, gateway_for: Any, kind: str, stream: bool
) -> None:
    call = tool_call("search", {"q": "crewflow"})
    server.provider("p").script(ScriptedReply(tool_calls=(call,)))
    gateway = gateway_for(config(server, "p", kind))
    first = await gateway.complete(ask(tools=TOOLS, stream=stream), CallScope("acme", cache=False))
    assert first.finish_reason == "tool_calls"
    assert len(first.tool_calls) == 1
    got = first.tool_calls[0]
    assert got["id"] == call["id"]
    assert got["function"]["name"] == "search"
    assert json.loads(got["function"]["arguments"]) == {"q": "crewflow"}
    assert server.requests()[0].tools == 1
    follow_up = ChatRequest(
        (
            *ask().messages,
            ChatMessage("assistant", None, tool_calls=first.tool_calls),
            ChatMessage("tool", "crewflow is a workflow platform", tool_call_id=call["id"]),
        ),
        tools=TOOLS,
        stream=stream,
    )
    second = await gateway.complete(follow_up, CallScope("acme", cache=False))
    assert "crewflow is a workflow platform" in (second.content or "")


async def test_a_hanging_provider_times_out_and_the_call_fails_over(server: LLMTestServer, gateway_for: Any) -> None:
    server.provider("primary").fail(Fault.hang())
    gateway = gateway_for(config(server, "primary", timeout=0.3), config(server, "secondary"))
    response = await gateway.complete(ask(), CallScope("acme"))
    assert response.provider == "secondary"
    assert response.attempts[0]["outcome"] == "timeout"


async def test_a_hanging_stream_times_out_between_chunks(server: LLMTestServer) -> None:
    server.provider("p").fail(Fault.hang())
    provider = build_provider(config(server, "p", timeout=0.3))
    try:
        with pytest.raises(Timeout):
            await provider.complete(ask(stream=True), on_token=lambda _: None)
    finally:
        await provider.close()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_json_is_a_typed_error_and_fails_over(
    server: LLMTestServer, gateway_for: Any, kind: str, stream: bool
) -> None:
    server.provider("primary").fail(Fault.malformed())
    provider = build_provider(config(server, "primary", kind))
    try:
        with pytest.raises(MalformedResponse):
            await provider.complete(ask(stream=stream), on_token=lambda _: None)
    finally:
        await provider.close()
    server.provider("primary").fail(Fault.malformed())
    gateway = gateway_for(config(server, "primary", kind), config(server, "secondary", kind))
    response = await gateway.complete(ask(stream=stream), CallScope("acme"))
    assert response.provider in ("primary", "secondary")  # retried once on primary (now healthy) or failed over
    assert response.attempts[0]["outcome"] == "malformed"


async def test_azure_style_urls_and_api_key_header(server: LLMTestServer) -> None:
    provider = build_provider(config(server, "az", "azure", api_version="2024-06-01"))
    try:
        response = await provider.complete(ask())
    finally:
        await provider.close()
    assert response.content
    logged = server.requests("az")[0]
    assert logged.path == "/p/az/openai/deployments/az-model/chat/completions"
    assert logged.key_ok


async def test_connections_are_reused_across_calls(server: LLMTestServer) -> None:
    provider = build_provider(config(server, "p"))
    try:
        for i in range(20):
            await provider.complete(ask(f"question {i}"))
    finally:
        await provider.close()
    ports = {r.client_port for r in server.requests("p")}
    assert len(server.requests("p")) == 20
    assert len(ports) == 1


async def test_the_api_key_never_appears_in_logs_errors_or_attempt_records(
    server: LLMTestServer, gateway_for: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.provider("a").fail(Fault.server_error(500), Fault.rate_limited("0"), Fault.malformed(times=5))
    server.provider("b").api_key = "sk-other-key-999999"
    server.provider("c").fail(Fault.hang(times=5))
    attempts: list[dict[str, Any]] = []
    gateway = gateway_for(
        config(server, "a"),
        config(server, "b", "anthropic"),
        config(server, "c", timeout=0.2),
        policy=FailoverPolicy(max_attempts=10, attempts_per_provider=3),
        breaker=lambda: CircuitBreaker(failure_threshold=10),
    )
    scope = CallScope("acme", execution_id="e1", node_id="n1")
    with capture_logs() as events:
        with pytest.raises(AllProvidersFailed) as info:
            await gateway.complete(ask(), scope, on_attempt=attempts.append)
        server.provider("a").clear().fail(Fault.bad_request())
        with pytest.raises(RequestRejected) as rejected:
            await gateway.complete(ask("other"), CallScope("acme"))
    assert {a["outcome"] for a in attempts} >= {"server_error", "rate_limited", "auth", "timeout", "malformed"}
    assert len(events) >= len(attempts)  # every failed attempt was logged
    printed = capsys.readouterr()
    texts = [
        str(info.value),
        repr(info.value),
        str(rejected.value),
        json.dumps(attempts),
        json.dumps([a.to_dict() for a in info.value.attempts]),
        repr(config(server, "a")),
        json.dumps([r.to_dict() for r in server.requests()]),
        repr(events),
        caplog.text,
        printed.out,
        printed.err,
    ]
    for text in texts:
        assert KEY not in text


async def test_logs_of_failing_calls_do_not_contain_the_key(server: LLMTestServer, gateway_for: Any) -> None:
    server.provider("a").fail(Fault.server_error(503, times=2), Fault.rate_limited("0"))
    server.provider("b").api_key = "sk-other-key-999999"
    gateway = gateway_for(config(server, "a"), config(server, "b"), config(server, "c"))
    with capture_logs() as events:
        response = await gateway.complete(ask(), CallScope("acme"))
    assert response.provider == "c"
    assert len(events) >= 3  # one event per failed attempt
    assert KEY not in repr(events)


async def test_the_server_runs_as_a_process_and_is_controlled_over_http(unused_tcp_port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crewflow.testing.llm_server",
        "--port",
        str(unused_tcp_port),
        "--api-key",
        KEY,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert f"127.0.0.1:{unused_tcp_port}" in line
        base = f"http://127.0.0.1:{unused_tcp_port}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/_control", json={"provider": "x", "fault": "503"}) as resp:
                assert resp.status == 200
            provider = build_provider(
                ProviderConfig("x", "openai", "m", base_url=f"{base}/p/x/v1", api_key=KEY, timeout=2)
            )
            try:
                with pytest.raises(ServerError, match="503"):
                    await provider.complete(ask())
                async with session.post(f"{base}/_control", json={"provider": "x", "clear": True}) as resp:
                    assert resp.status == 200
                assert (await provider.complete(ask())).content
            finally:
                await provider.close()
            async with session.get(f"{base}/_log") as resp:
                log = await resp.json()
        assert [entry["status"] for entry in log] == [503, 200]
        assert KEY not in json.dumps(log)
    finally:
        proc.terminate()
        await proc.wait()


async def test_crewai_style_prompts_get_a_final_answer(server: LLMTestServer) -> None:
    provider = build_provider(config(server, "p"))
    prompt = ChatRequest(
        (
            ChatMessage("system", "You are Researcher. To give my best complete final answer ... Final Answer: ..."),
            ChatMessage("user", "\nCurrent Task: find three facts\n\nBegin!"),
        ),
        stop=("\nObservation:",),
    )
    try:
        response = await provider.complete(prompt)
    finally:
        await provider.close()
    assert (response.content or "").startswith("Thought: I now can give a great answer\nFinal Answer: ")


async def test_the_log_records_model_digest_and_no_body(server: LLMTestServer) -> None:
    provider = build_provider(replace(config(server, "p"), model="gpt-test"))
    try:
        await provider.complete(ask("secret question text"))
    finally:
        await provider.close()
    entry = server.requests()[0]
    assert entry.model == "gpt-test"
    assert len(entry.body_sha256) == 64
    assert "secret question text" not in json.dumps(entry.to_dict())


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_cut_midway_is_a_typed_error_and_the_call_fails_over(
    server: LLMTestServer, gateway_for: Any, kind: str
) -> None:
    server.provider("primary").fail(Fault.cut(times=None))
    provider = build_provider(config(server, "primary", kind))
    partial: list[str] = []
    try:
        with pytest.raises(ServerError):
            await provider.complete(ask(stream=True), on_token=partial.append)
    finally:
        await provider.close()
    assert partial  # some tokens arrived before the cut
    gateway = gateway_for(config(server, "primary", kind), config(server, "secondary", kind))
    tokens: list[str] = []
    response = await gateway.complete(ask(stream=True), CallScope("acme"), on_token=tokens.append)
    assert response.provider == "secondary"
    assert [a["outcome"] for a in response.attempts][-1] == "success"
    assert {a["outcome"] for a in response.attempts[:-1]} == {"server_error"}
    # the callback saw the cut-off beginning(s) from primary, then secondary's whole answer; the failed
    # attempts say how many tokens to discard
    discard = sum(a["streamed_tokens"] for a in response.attempts[:-1])
    assert discard > 0
    assert "".join(tokens[discard:]) == response.content
