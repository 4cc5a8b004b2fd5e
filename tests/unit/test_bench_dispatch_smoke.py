"""Keeps bench/dispatch.py from rotting: its pure parts (percentiles, /proc CPU time, the report with its
ratios and target lines, option checks). The Redis runs themselves are the benchmark; no timing here."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "dispatch.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dispatch", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_percentiles_use_the_nearest_rank(bench: ModuleType) -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.95) == 95.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 0.5)


def test_cpu_seconds_reads_this_process(bench: ModuleType) -> None:
    sum(i * i for i in range(200_000))  # spend a little CPU
    used = bench.cpu_seconds(os.getpid())
    assert used > 0
    assert bench.cpu_seconds(os.getpid()) >= used


def test_the_report_gives_ratios_and_says_which_targets_are_met(bench: ModuleType) -> None:
    ours = bench.KindResult("crewflow", [1.0, 1.5, 2.0, 3.0], 10_000, 3500.0, 5000.0, 0.3, 3600.0, [0.5, 1.0])
    arq = bench.KindResult("arq-default", [200.0, 250.0, 300.0, 480.0], 1000, 350.0, 5000.0, 0.6, 360.0, [0.5, 0.7])
    args = argparse.Namespace(workers=2, concurrency=10, redis_url="redis://127.0.0.1:6379/0")
    lines = bench.report({"crewflow": ours, "arq-default": arq}, args)
    text = "\n".join(lines)
    assert "2 worker processes x concurrency 10" in lines[0]
    assert lines[2].split()[:3] == ["crewflow", "1.50", "3.00"]
    assert "p50 arq-default / crewflow = 167x" in text
    assert "throughput crewflow / arq-default = 10.0x (drained queue 10.0x)" in text
    assert "worker CPU per job crewflow / arq-default = 0.50" in text
    assert lines[-1].startswith("targets: p50 <= 2 ms met (1.50); >= 3000 jobs/s met (3500, drained 3600)")
    assert lines[-1].endswith("idle < 2 % of a core met (1.00)")
    slow = bench.KindResult("crewflow", [3.0], 100, 900.0, 900.0, 0.3, 950.0, [2.5])
    assert "MISSED" in bench.report({"crewflow": slow, "arq-default": arq}, args)[-1]


def test_bad_counts_are_a_usage_error(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--jobs", "0"])
    assert exit_info.value.code == 2
    assert "counts must be at least 1" in capsys.readouterr().err
