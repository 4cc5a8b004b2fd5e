"""Keeps bench/chaos.py working: a tiny chaos run (a few runs on two ``crewflow worker`` processes, PostgreSQL
and real Redis, workers killed with SIGKILL and restarted) must end with every run terminal, no completed
node run twice and nothing stuck — the benchmark's own targets. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_a_tiny_chaos_run_ends_every_run_reruns_no_completed_node_and_leaves_none_stuck(pg_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREWFLOW_")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "4", "--workers", "2", "--concurrency", "2", "--nodes", "3",
         "--delay", "0.4", "--kill-every", "1.5", "--timeout", "120", "--database-url", pg_url, "--json"],
        capture_output=True, text=True, timeout=170, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["runs"] == 4
    assert figures["terminal_pct"] == 100.0
    assert figures["completed_nodes_rerun"] == 0
    assert figures["stuck"] == 0
    assert figures["attempts"] >= figures["runs"]
    assert "runs reaching a terminal state: 100.0 %" in result.stdout
