"""Keeps bench/engine_overhead.py from rotting: its crewflow part at a tiny size. No timing assertions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "engine_overhead.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_engine_overhead", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_shapes(bench: ModuleType) -> None:
    chain = bench.chain(5)
    assert chain.size == 5
    assert len(chain.edges) == 4
    assert chain.sources() == ["n0"]
    assert chain.sinks() == ["n4"]
    fan = bench.fan(3)
    assert fan.size == 5
    assert len(fan.edges) == 6
    assert fan.sources() == ["src"]
    assert fan.sinks() == ["sink"]
    dag, sleeps = bench.layered_dag(seed=1, layers=4, max_width=5)
    assert set(sleeps) == set(dag.ids)
    assert all(0.02 <= s <= 0.08 for s in sleeps.values())
    assert dag.sources() == ["l0_0"]
    assert all(node.startswith("l3_") for node in dag.sinks())


@pytest.mark.parametrize("shape_name", ["chain", "fan"])
async def test_floor_crewflow_and_langgraph_run_every_node(bench: ModuleType, shape_name: str) -> None:
    shape = bench.chain(12) if shape_name == "chain" else bench.fan(6)
    assert await bench.floor_run(shape) == shape.size
    # raises when a run does not complete every node (LangGraph: does not call every node once)
    core = await bench.measure_core(shape, warmup=1, repeats=2, langgraph=True)
    expected = {bench.FLOOR, bench.RUN, bench.RUN_VAL, bench.VALIDATION, bench.LG_ASYNC, bench.LG_SYNC}
    assert set(core.wall) == expected
    assert set(core.cpu) == expected
    assert all(value > 0 for value in core.wall.values())


async def test_makespan_of_sleeping_nodes(bench: ModuleType) -> None:
    span = await bench.measure_makespan(seed=3, layers=3, max_width=3, time_scale=0.05)
    assert span.critical > 0
    assert span.makespan > 0
    assert span.floor > 0
    assert span.makespan >= span.critical * 0.99  # sleeping nodes on the critical path cannot overlap
    assert span.measured_ratio > 0
