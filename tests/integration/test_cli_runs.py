"""`crewflow run` end to end as a user runs it (a subprocess): recording runs in the tenant's store, and an
LLM flow failing over from a rate-limited primary provider to the secondary against the local LLM server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from crewflow.testing.llm_server import Fault, LLMTestServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def crewflow(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crewflow.entrypoints.cli", *args, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_run_with_a_postgres_url_is_stored_in_the_tenant_schema(postgres_url: str) -> None:
    env = {"CREWFLOW_DATABASE_URL": postgres_url}
    code, _, err = await crewflow("migrate", env=env)
    assert code == 0, err
    code, out, err = await crewflow("run", "examples/router.yaml", "--json", "-i", "ticket=site down", env=env)
    assert code == 0, err
    result = json.loads(out)
    dsn = postgres_url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT status, flow_id, outputs FROM tenant_local.executions WHERE id = $1",
                                  result["execution_id"])  # fmt: skip
        runs = dict(await conn.fetch("SELECT node_id, status FROM tenant_local.node_runs WHERE execution_id = $1",
                                     result["execution_id"]))  # fmt: skip
        events = await conn.fetchval("SELECT count(*) FROM tenant_local.execution_events WHERE execution_id = $1",
                                     result["execution_id"])  # fmt: skip
    finally:
        await conn.close()
    assert row is not None
    assert (row["status"], row["flow_id"]) == ("completed", "support-triage")
    assert runs == {"start": "completed", "classify": "completed", "route": "completed", "escalate": "completed",
                    "standard_reply": "skipped", "reply": "completed"}  # fmt: skip
    assert events == 13  # run start/end, start+end of five nodes, one skip


async def test_a_run_against_an_unmigrated_database_says_what_to_do(postgres_url: str) -> None:
    fresh = postgres_url.rsplit("/", 1)[0] + "/postgres_" + "missing_db_for_test"
    code, _, err = await crewflow("run", "examples/router.yaml", env={"CREWFLOW_DATABASE_URL": fresh})
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_an_unknown_tenant_is_refused_with_a_hint(sqlite_url: str) -> None:
    code, _, err = await crewflow("run", "examples/router.yaml", "--tenant", "acme",
                                  env={"CREWFLOW_DATABASE_URL": sqlite_url})  # fmt: skip
    assert code == 2
    assert "crewflow tenants create acme" in err


async def test_a_flow_fails_over_from_a_rate_limited_primary_and_shows_attempts_and_cost(tmp_path: Path) -> None:
    secret_primary, secret_secondary = "sk-primary-SECRET-1234567890", "sk-secondary-SECRET-0987654321"
    async with LLMTestServer(api_key=None) as server:
        server.provider("primary").fail(Fault.rate_limited(retry_after="0", times=None))
        providers = tmp_path / "providers.yaml"
        providers.write_text(json.dumps({"providers": [
            {"name": "primary", "kind": "openai", "base_url": server.openai_base_url("primary"), "model": "m1",
             "api_key_env": "PRIMARY_KEY", "priority": 1, "price": {"input_per_1k": 1.0, "output_per_1k": 2.0}},
            {"name": "secondary", "kind": "openai", "base_url": server.openai_base_url("secondary"), "model": "m2",
             "api_key_env": "SECONDARY_KEY", "priority": 2, "price": {"input_per_1k": 0.5, "output_per_1k": 1.0}},
        ]}))  # fmt: skip
        flow = tmp_path / "flow.yaml"
        flow.write_text(
            "id: llm\nagents: {writer: {role: Writer, goal: Write well}}\n"
            "nodes: [{id: w, kind: agent, agent: writer, task: 'Write one line about otters'}]\n"
        )
        env = {"PRIMARY_KEY": secret_primary, "SECONDARY_KEY": secret_secondary, "XDG_DATA_HOME": str(tmp_path),
               "OPENAI_API_KEY": "unused", "OPENAI_BASE_URL": server.openai_base_url("nowhere")}  # fmt: skip
        code, out, err = await crewflow("run", str(flow), "--providers", str(providers), "--json", env=env)
        assert code == 0, err
        primary_calls = len(server.requests(provider="primary"))
        secondary_calls = len(server.requests(provider="secondary"))
    result: dict[str, Any] = json.loads(out)
    node = result["nodes"]["w"]
    assert node["status"] == "completed"
    outcomes = [(a["provider"], a["outcome"]) for a in node["llm_attempts"]]
    assert ("secondary", "success") in outcomes
    assert any(p == "primary" and o != "success" for p, o in outcomes)
    assert node["input_tokens"] > 0 and node["output_tokens"] > 0
    assert node["cost"] > 0
    assert primary_calls >= 1 and secondary_calls >= 1
    for text in (out, err):
        assert secret_primary not in text and secret_secondary not in text


async def test_a_flow_file_with_a_script_tool_runs_its_tool_in_the_sandbox() -> None:
    """`crewflow run` opens this machine's sandbox for a flow with tool nodes: the script tool counts the
    words its upstream (offline) agent wrote."""
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make test installs it as root)")
    code, out, err = await crewflow("run", "examples/wordcount_tool.yaml", "--json", "-i", "topic=windmills",
                                    env={"CREWFLOW_SANDBOX_BACKENDS": "bubblewrap"})  # fmt: skip
    assert code == 0, err
    nodes = json.loads(out)["nodes"]
    written = nodes["write"]["output"]
    assert "windmills" in written
    assert nodes["count"]["status"] == "completed"
    assert nodes["count"]["output"] == {"words": len(written.split())}


async def test_the_library_runs_a_tool_flow_in_this_machines_sandbox_by_default() -> None:
    """``crewflow.arun`` without ``tools=`` opens the local sandbox for a flow that has tool nodes."""
    import shutil

    import crewflow

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make test installs it as root)")
    result = await crewflow.arun(ROOT / "examples/wordcount_tool.yaml", {"topic": "kites"})
    assert result.ok, result.error
    assert result.nodes["count"].output == {"words": len(result.nodes["write"].output.split())}
