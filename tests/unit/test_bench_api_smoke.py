"""Keeps bench/api.py from rotting: its pure parts (wrk and ws_latency output parsing, the report, the profile
summary) and its two reference apps, in process. No servers, no load, no timing assertions."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from litestar.testing import TestClient

from crewflow.adapters.memory import MemoryRateLimiter

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "api.py"

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:40123/api/v1/flows?limit=20
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   135.58ms   40.01ms 612.44ms   90.00%
    Req/Sec   204.10     50.00   300.00     70.00%
  Latency Distribution
     50%  135.58ms
     75%  167.14ms
     90%  225.42ms
     99%    1.20s
  818 requests in 2.01s, 2.90MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:    407.96
Transfer/sec:      1.44MB
"""

WS_OUTPUT = """2026-11-25 19:53:07 [info     ] execution.started              execution_id=7e flow_id=chain
python 3.11.7 on x86_64, 2 cores; 2 runs x 10 nodes x 20 tokens
events received 452, live events measured 440, lost or duplicated 0
latency ms: p50 13.09  p95 26.07  p99 31.54  max 39.13  mean 14.00
target p95 <= 5 ms and 0 lost: NOT met
"""


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_api", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses, and Litestar when it reads the handlers' annotations, look the module up by name
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_parses_wrk_output(bench: ModuleType) -> None:
    result = bench.parse_wrk(WRK_OUTPUT)
    assert result.requests == 818
    assert result.rps == pytest.approx(407.96)
    assert result.seconds == pytest.approx(2.01)
    assert result.latency_ms == {"50%": pytest.approx(135.58), "75%": pytest.approx(167.14),
                                 "90%": pytest.approx(225.42), "99%": pytest.approx(1200.0)}  # fmt: skip
    assert result.non_2xx == 3
    assert result.socket_errors == {"connect": 0, "read": 1, "write": 0, "timeout": 2}
    with pytest.raises(ValueError, match="unexpected wrk output"):
        bench.parse_wrk("wrk: connection refused")


def test_wrk_command_is_bounded_and_local(bench: ModuleType) -> None:
    command = bench.wrk_command("http://127.0.0.1:1/x", 3, "tok")
    assert command[:5] == ["wrk", "-t2", "-c64", "-d3s", "--latency"]
    assert command[5:] == ["-H", "Authorization: Bearer tok", "http://127.0.0.1:1/x"]
    assert "-H" not in bench.wrk_command("http://127.0.0.1:1/", 1, None)


def test_report_medians_ratios_and_validity(bench: ModuleType) -> None:
    def result(rps: float, non_2xx: int = 0) -> object:
        return bench.WrkResult(100, 1.0, rps, {"50%": 1.0, "75%": 2.0, "90%": 3.0, "99%": 4.0}, non_2xx)

    summaries = {"hello": bench.Summary("hello", [result(900), result(1000), result(1100)]),
                 "jwt": bench.Summary("jwt", [result(400)]),
                 "full": bench.Summary("full", [result(100, non_2xx=1), result(300)])}  # fmt: skip
    assert summaries["hello"].rps == 1000
    assert summaries["full"].rps == 200
    assert summaries["full"].non_2xx == 1
    lines = bench.ratio_lines(summaries)
    assert lines[0].startswith("full / minimal-JWT = 0.500") and "met" in lines[0] and "NOT" not in lines[0]
    assert lines[1] == "minimal-JWT / hello = 0.400"
    rows = bench.table(summaries)
    assert len(rows) == 5
    assert "**1,000**" in rows[2]


def test_parses_ws_latency_output(bench: ModuleType) -> None:
    ws = bench.parse_ws(WS_OUTPUT)
    assert (ws.p50, ws.p95, ws.lost, ws.measured) == (13.09, 26.07, 0, 440)
    assert "[info" not in ws.output
    assert ws.output.splitlines()[0].startswith("python ")


def test_summarizes_a_collapsed_profile(bench: ModuleType) -> None:
    lines = [
        "thread (0x1): MainThread;run (asyncio/runners.py:118);handle (crewflow/entrypoints/http/limits.py:90);"
        "execute (sqlalchemy/engine/base.py:1) 6",
        "thread (0x1): MainThread;run (asyncio/runners.py:118);decode (jwt/api_jwt.py:2) 4",
        "garbage line",
    ]
    text = "\n".join(bench.summarize_profile(lines))
    assert text.startswith("10 samples; by thread: MainThread 100%")
    assert " 60.0%  SQLAlchemy" in text
    assert " 40.0%  PyJWT" in text
    assert " 60.0%  handle (crewflow/entrypoints/http/limits.py)" in text
    assert bench.summarize_profile([]) == ["(no samples)"]


def test_raised_limits_still_count_through_the_real_limiter(bench: ModuleType) -> None:
    inner = MemoryRateLimiter()
    limiter = bench.RaisedLimits(inner)

    async def hits() -> list[bool]:
        return [(await limiter.hit("rl:user:u", 100, 60.0)).allowed for _ in range(150)]

    assert all(asyncio.run(hits()))
    assert inner._windows["rl:user:u"][1] == 150  # the counting work stays in the path


def test_reference_apps_answer(bench: ModuleType) -> None:
    with TestClient(bench.hello_app()) as client:
        assert client.get("/").text == "Hello, world!"
    with TestClient(bench.jwt_app()) as client:
        assert client.get("/items").status_code == 401
        assert client.get("/items", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
        items = client.get("/items", headers={"Authorization": f"Bearer {bench.minimal_token()}"})
        assert items.status_code == 200
        assert len(items.json()) == 20
        assert set(items.json()[0]) == {"id", "name", "description", "current_version", "is_active", "created_at",
                                        "updated_at"}  # fmt: skip
