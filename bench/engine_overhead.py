"""Engine overhead: µs per no-op node for crewflow against the asyncio floor, LangGraph and CrewAI Flow.

    .venv/bin/python bench/engine_overhead.py [--quick] [--skip-crewai] [--skip-langgraph]

Shapes: (a) a chain of 1,000 nodes, (b) a 1 -> 200 -> 1 fan-out/join (202 nodes). Each number is the median
wall time of several runs after warm-up runs, divided by the number of nodes. Per engine:

- floor: bare asyncio + ``graphlib.TopologicalSorter``, one task per node, nothing else.
- crewflow: ``Engine.run`` with a runtime whose ``run_agent`` returns ``NodeOutcome(output=None)``; every
  node is an agent node (the kind that gets an asyncio task and a rendered ``AgentWork``). Validation
  (``ensure_valid``) is measured separately: ``run`` excludes it (the graph is passed in), ``run+val``
  includes it. Events are recorded in memory, no listeners or sinks.
- LangGraph: ``StateGraph`` of the same shape, compiled once; ``ainvoke`` with async nodes and ``invoke``
  with sync nodes; the join is ``add_edge([all middles], sink)``.
- CrewAI: a ``Flow`` subclass with ``@start``/``@listen`` async methods (the join is ``and_(*middles)``),
  ``kickoff_async`` on a fresh instance per run (instantiation not timed), default and
  ``suppress_flow_events=True``. Its console output goes to /dev/null.

Then makespan / critical path for random layered DAGs of nodes that sleep 20-80 ms (``max_parallel`` =
node count, so at least the width).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from graphlib import TopologicalSorter
from typing import Any, TextIO

from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine
from crewflow.application.results import RunResult
from crewflow.domain.agents import Agent
from crewflow.domain.flow import Edge, Flow, FlowLimits, Node, NodeKind
from crewflow.domain.graph import Graph
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.domain.validation import ensure_valid
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome

LIMITS = FlowLimits(max_nodes=5000, max_edges=10000)
_NOOP = NodeOutcome(output=None)


# -- shapes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    name: str
    ids: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]

    @property
    def size(self) -> int:
        return len(self.ids)

    def parents(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {i: [] for i in self.ids}
        for source, target in self.edges:
            found[target].append(source)
        return found

    def sources(self) -> list[str]:
        return [i for i, ps in self.parents().items() if not ps]

    def sinks(self) -> list[str]:
        has_child = {s for s, _ in self.edges}
        return [i for i in self.ids if i not in has_child]


def chain(n: int) -> Shape:
    ids = tuple(f"n{i}" for i in range(n))
    return Shape(f"chain of {n:,}", ids, tuple(itertools.pairwise(ids)))


def fan(width: int) -> Shape:
    middles = tuple(f"m{i}" for i in range(width))
    edges = tuple(("src", m) for m in middles) + tuple((m, "sink") for m in middles)
    return Shape(f"1 -> {width} -> 1 fan-out", ("src", *middles, "sink"), edges)


def layered_dag(seed: int, layers: int, max_width: int) -> tuple[Shape, dict[str, float]]:
    """A random layered DAG: every node has 1-3 parents in the previous layer; sleeps of 20-80 ms."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    edges: list[tuple[str, str]] = []
    for layer in range(layers):
        row = [f"l{layer}_{i}" for i in range(1 if layer == 0 else rng.randint(2, max_width))]
        if rows:
            previous = rows[-1]
            for node in row:
                for parent in rng.sample(previous, min(len(previous), rng.randint(1, 3))):
                    edges.append((parent, node))
            fed = {s for s, _ in edges}
            edges.extend((p, rng.choice(row)) for p in previous if p not in fed)  # no dangling middle nodes
        rows.append(row)
    ids = tuple(n for row in rows for n in row)
    sleeps = {n: rng.uniform(0.020, 0.080) for n in ids}
    return Shape(f"layered seed {seed}", ids, tuple(edges)), sleeps


# -- timing ------------------------------------------------------------------------------------------------
def per_node_us(samples: list[float], nodes: int) -> float:
    return statistics.median(samples) / nodes * 1e6


# -- the floor ---------------------------------------------------------------------------------------------
async def floor_run(shape: Shape, sleeps: Mapping[str, float] | None = None) -> int:
    """Bare asyncio + graphlib: a task per node, started as soon as its parents are done; returns how many
    nodes ran. With ``sleeps``, each node sleeps its number of seconds."""
    sorter: TopologicalSorter[str] = TopologicalSorter(shape.parents())
    sorter.prepare()
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    ran = 0

    async def node(node_id: str) -> None:
        if sleeps is not None:
            await asyncio.sleep(sleeps[node_id])

    def on_done(node_id: str, _task: asyncio.Task[None]) -> None:
        nonlocal ran
        ran += 1
        sorter.done(node_id)
        launch()

    def launch() -> None:
        for node_id in sorter.get_ready():
            loop.create_task(node(node_id)).add_done_callback(partial(on_done, node_id))
        if not sorter.is_active() and not finished.done():
            finished.set_result(None)

    launch()
    await finished
    return ran


# -- crewflow ----------------------------------------------------------------------------------------------
class NoopRuntime:
    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        return _NOOP

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        return _NOOP


class SleepRuntime:
    """Each node sleeps its given number of seconds (an LLM call that takes a while)."""

    def __init__(self, sleeps: Mapping[str, float]) -> None:
        self.sleeps = sleeps

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        await asyncio.sleep(self.sleeps[work.node_id])
        return _NOOP

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        return _NOOP


def crewflow_flow(shape: Shape) -> Flow:
    agent = Agent(id="noop", role="No-op", goal="Return nothing", provider="scripted")
    nodes = tuple(Node(id=i, kind=NodeKind.AGENT, agent="noop", task="do nothing") for i in shape.ids)
    edges = tuple(Edge(s, t) for s, t in shape.edges)
    return Flow(id=f"bench-{shape.name}", nodes=nodes, edges=edges, agents={"noop": agent})


def crewflow_engine(runtime: Any) -> Engine:
    return Engine(runtime, clock=SystemClock(), ids=UuidGenerator(), limits=LIMITS)


async def crewflow_run(engine: Engine, flow: Flow, graph: Graph | None, max_parallel: int) -> RunResult:
    result = await engine.run(flow, {}, graph=graph, max_parallel=max_parallel)
    if result.status != RunStatus.COMPLETED or any(n.status != NodeStatus.COMPLETED for n in result.nodes.values()):
        raise RuntimeError(f"crewflow run did not complete: {result.status} {result.error}")
    return result


FLOOR = "floor: asyncio + graphlib"
RUN = "crewflow Engine.run (validation excluded)"
VALIDATION = "crewflow ensure_valid alone"
RUN_VAL = "crewflow Engine.run incl. validation"
LG_ASYNC = "LangGraph ainvoke (async nodes)"
LG_SYNC = "LangGraph invoke (sync nodes)"


@dataclass
class Core:
    """Median µs per node by contender: wall clock, and CPU time of this process (less sensitive to other
    processes competing for the machine; includes LangGraph's worker threads)."""

    wall: dict[str, float]
    cpu: dict[str, float]


async def measure_core(shape: Shape, warmup: int, repeats: int, langgraph: bool = False) -> Core:
    """The floor, crewflow (and LangGraph), interleaved run by run so that all see the same machine load."""
    flow = crewflow_flow(shape)
    engine = crewflow_engine(NoopRuntime())
    graph = ensure_valid(flow, LIMITS)
    parallel = max(8, shape.size)

    async def floor_once() -> None:
        if await floor_run(shape) != shape.size:
            raise RuntimeError("floor did not run every node")

    async def validate_once() -> None:
        ensure_valid(flow, LIMITS)

    contenders: dict[str, Callable[[], Awaitable[Any]]] = {
        FLOOR: floor_once,
        RUN: lambda: crewflow_run(engine, flow, graph, parallel),
        VALIDATION: validate_once,
        RUN_VAL: lambda: crewflow_run(engine, flow, None, parallel),
    }
    if langgraph:
        contenders.update(langgraph_contenders(shape))
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(warmup + repeats):
        for name, fn in contenders.items():
            gc.collect()
            begin, begin_cpu = time.perf_counter(), time.process_time()
            await fn()
            if round_ >= warmup:
                wall[name].append(time.perf_counter() - begin)
                cpu[name].append(time.process_time() - begin_cpu)
    return Core(
        {name: per_node_us(found, shape.size) for name, found in wall.items()},
        {name: per_node_us(found, shape.size) for name, found in cpu.items()},
    )


# -- LangGraph ---------------------------------------------------------------------------------------------
def langgraph_compiled(shape: Shape, node_fn: Callable[..., Any]) -> Any:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict, total=False):
        x: int

    graph = StateGraph(State)
    for node_id in shape.ids:
        graph.add_node(node_id, node_fn)
    for source in shape.sources():
        graph.add_edge(START, source)
    for node_id, parents in shape.parents().items():
        if len(parents) == 1:
            graph.add_edge(parents[0], node_id)
        elif parents:
            graph.add_edge(parents, node_id)  # a join: waits for every parent
    for sink in shape.sinks():
        graph.add_edge(sink, END)
    return graph.compile()


def langgraph_contenders(shape: Shape) -> dict[str, Callable[[], Awaitable[Any]]]:
    """``ainvoke`` with async nodes and ``invoke`` with sync nodes; each checks every node ran once."""
    calls = [0]

    async def anode(state: Mapping[str, Any]) -> None:
        calls[0] += 1

    def snode(state: Mapping[str, Any]) -> None:
        calls[0] += 1

    config = {"recursion_limit": shape.size + 10}
    async_graph = langgraph_compiled(shape, anode)
    sync_graph = langgraph_compiled(shape, snode)

    def check(before: int) -> None:
        if calls[0] - before != shape.size:
            raise RuntimeError(f"LangGraph ran {calls[0] - before} node calls, expected {shape.size}")

    async def ainvoke() -> None:
        before = calls[0]
        await async_graph.ainvoke({"x": 0}, config)
        check(before)

    async def invoke() -> None:
        before = calls[0]
        sync_graph.invoke({"x": 0}, config)
        check(before)

    return {LG_ASYNC: ainvoke, LG_SYNC: invoke}


# -- CrewAI ------------------------------------------------------------------------------------------------
def crewai_environment() -> None:
    """No telemetry, no tracing, and a throw-away data directory: set before crewai is imported."""
    data = tempfile.mkdtemp(prefix="crewflow-bench-xdg-")
    import atexit

    atexit.register(shutil.rmtree, data, True)
    os.environ.update(
        CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TRACING_ENABLED="false",
        XDG_DATA_HOME=data,
    )  # fmt: skip


def crewai_flow_class(shape: Shape) -> Any:
    from crewai.flow.flow import Flow as CrewAIFlow
    from crewai.flow.flow import and_, listen, start

    def method(name: str) -> Callable[..., Any]:
        async def body(self: Any) -> None:
            return None

        body.__name__ = body.__qualname__ = name
        return body

    namespace: dict[str, Any] = {}
    for node_id, parents in shape.parents().items():
        if not parents:
            namespace[node_id] = start()(method(node_id))
        elif len(parents) == 1:
            namespace[node_id] = listen(parents[0])(method(node_id))
        else:
            namespace[node_id] = listen(and_(*parents))(method(node_id))
    return type(f"Bench{shape.size}", (CrewAIFlow,), namespace)


def devnull() -> TextIO:
    return open(os.devnull, "w")  # the caller closes it (with)


async def measure_crewai(shape: Shape, warmup: int, repeats: int, suppress: bool) -> tuple[float, float]:
    """Median (wall, CPU) µs per node of ``kickoff_async`` on a fresh instance (instantiation not timed)."""
    cls = crewai_flow_class(shape)
    with devnull() as sink, contextlib.redirect_stdout(sink):
        for _ in range(warmup):
            await cls(suppress_flow_events=suppress).kickoff_async()
        wall: list[float] = []
        cpu: list[float] = []
        for _ in range(repeats):
            flow = cls(suppress_flow_events=suppress)
            gc.collect()
            begin, begin_cpu = time.perf_counter(), time.process_time()
            await flow.kickoff_async()
            wall.append(time.perf_counter() - begin)
            cpu.append(time.process_time() - begin_cpu)
            if len(flow._completed_methods) != shape.size:
                raise RuntimeError(f"CrewAI ran {len(flow._completed_methods)} of {shape.size} methods")
    return per_node_us(wall, shape.size), per_node_us(cpu, shape.size)


# -- makespan ----------------------------------------------------------------------------------------------
@dataclass
class Makespan:
    shape: Shape
    critical: float
    makespan: float
    floor: float  # the floor's makespan on the same DAG
    measured_ratio: float  # makespan / critical path of the node durations the run measured

    @property
    def ratio(self) -> float:
        return self.makespan / self.critical

    @property
    def floor_ratio(self) -> float:
        return self.floor / self.critical


async def measure_makespan(seed: int, layers: int, max_width: int, time_scale: float = 1.0,
                           repeats: int = 1) -> Makespan:  # fmt: skip
    """Median makespan of ``repeats`` runs each of crewflow and the floor (interleaved) on one random DAG."""
    shape, sleeps = layered_dag(seed, layers, max_width)
    sleeps = {k: v * time_scale for k, v in sleeps.items()}
    flow = crewflow_flow(shape)
    graph = ensure_valid(flow, LIMITS)
    engine = crewflow_engine(SleepRuntime(sleeps))
    ours: list[float] = []
    measured: list[float] = []
    floor: list[float] = []
    for _ in range(repeats):
        begin = time.perf_counter()
        result = await crewflow_run(engine, flow, graph, max(8, shape.size))
        ours.append(time.perf_counter() - begin)
        # the node durations as the run saw them (start to completion, so sleep overshoot included): what is
        # left of the makespan beyond their critical path is the time the engine took between nodes
        took = {n: (r.finished_at or 0.0) - (r.started_at or 0.0) for n, r in result.nodes.items()}
        measured.append(ours[-1] / graph.critical_path_length(took))
        begin = time.perf_counter()
        await floor_run(shape, sleeps)
        floor.append(time.perf_counter() - begin)
    critical = graph.critical_path_length(dict(sleeps))
    return Makespan(shape, critical, statistics.median(ours), statistics.median(floor), statistics.median(measured))


# -- main --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    chain: int = 1000
    width: int = 200
    warmup: int = 3
    repeats: int = 15
    crewai_warmup: int = 1
    crewai_repeats: int = 3
    crewai_chain: int = 1000
    makespan_seeds: int = 5
    makespan_repeats: int = 3
    makespan_layers: int = 8
    makespan_width: int = 12


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, load average {load}"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions; CrewAI on a 200-node chain")
    parser.add_argument("--skip-crewai", action="store_true")
    parser.add_argument("--skip-langgraph", action="store_true")
    parser.add_argument("--crewai-chain", type=int, help="chain length for CrewAI (default 1000; 200 with --quick)")
    args = parser.parse_args(argv)
    plan = Plan()
    if args.quick:
        plan = Plan(warmup=1, repeats=5, crewai_warmup=1, crewai_repeats=1, crewai_chain=200, makespan_seeds=3,
                    makespan_repeats=1)  # fmt: skip
    if args.crewai_chain:
        plan.crewai_chain = args.crewai_chain

    print(f"# engine overhead, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"# {machine()}")
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"# floor, crewflow and LangGraph interleaved run by run: {plan.repeats} runs each (+{plan.warmup} "
          f"warm-up); CrewAI afterwards: {plan.crewai_repeats} runs (+{plan.crewai_warmup}); median µs per node, "
          f"wall clock and CPU time; makespan: median of {plan.makespan_repeats} runs per DAG")  # fmt: skip

    shapes = [chain(plan.chain), fan(plan.width)]
    cores = [await measure_core(shape, plan.warmup, plan.repeats, not args.skip_langgraph) for shape in shapes]
    wall: dict[str, list[float | None]] = {name: [c.wall[name] for c in cores] for name in cores[0].wall}
    cpu: dict[str, list[float | None]] = {name: [c.cpu[name] for c in cores] for name in cores[0].cpu}
    if not args.skip_crewai:
        crewai_environment()
        begin = time.perf_counter()
        import crewai.flow.flow  # noqa: F401  (import cost reported, not counted per node)

        print(f"# crewai import: {time.perf_counter() - begin:.2f} s")
        crewai_shapes = [chain(plan.crewai_chain), fan(plan.width)]
        for suppress in (False, True):
            label = "CrewAI Flow kickoff_async" + (", suppress_flow_events" if suppress else ", default")
            for shape in crewai_shapes:
                us_wall, us_cpu = await measure_crewai(shape, plan.crewai_warmup, plan.crewai_repeats, suppress)
                wall.setdefault(label, []).append(us_wall)
                cpu.setdefault(label, []).append(us_cpu)

    names = ["chain", "fan-out"]
    head = " | ".join(f"{n} wall | {n} CPU" for n in names)
    print()
    print(f"# chain: {shapes[0].name}; fan-out: {shapes[1].name} ({shapes[1].size} nodes)")
    if plan.crewai_chain != plan.chain and not args.skip_crewai:
        print(f"# CrewAI's chain has {plan.crewai_chain:,} nodes")
    print(f"| µs per node | {head} |")
    print("|---|" + "---:|" * 2 * len(shapes))
    for label in wall:
        cells = " | ".join(f"{fmt(w)} | {fmt(c)}" for w, c in zip(wall[label], cpu[label], strict=True))
        print(f"| {label} | {cells} |")

    def ratio(table: dict[str, list[float | None]], top: str, bottom: str) -> list[float | None]:
        return [t / b if t and b else None for t, b in zip(table[top], table[bottom], strict=True)]

    ratios = [("crewflow / floor", FLOOR, RUN, False)]
    ratios += [(f"{label.split(' (')[0]} / crewflow", label, RUN, True) for label in wall if label.startswith("Lang")]
    ratios += [(label.replace("CrewAI Flow kickoff_async, ", "CrewAI ") + " / crewflow", label, RUN, True)
               for label in wall if label.startswith("CrewAI")]  # fmt: skip
    print()
    print(f"| ratio | {head} |")
    print("|---|" + "---:|" * 2 * len(shapes))
    for name, other, ours, theirs_on_top in ratios:
        top, bottom = (other, ours) if theirs_on_top else (ours, other)
        pairs = [f"{w:.1f}x | {c:.1f}x" if w and c else "- | -"
                 for w, c in zip(ratio(wall, top, bottom), ratio(cpu, top, bottom), strict=True)]  # fmt: skip
        note = " (chain: different lengths)" if name.startswith("CrewAI") and plan.crewai_chain != plan.chain else ""
        print(f"| {name}{note} | {' | '.join(pairs)} |")

    print()
    spans = [await measure_makespan(seed, plan.makespan_layers, plan.makespan_width, repeats=plan.makespan_repeats)
             for seed in range(plan.makespan_seeds)]  # fmt: skip
    print("| DAG of sleeping nodes (20-80 ms) | nodes | edges | critical path ms | crewflow makespan ms | ratio "
          "| ratio to measured durations | floor makespan ms | floor ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for span in spans:
        print(f"| {span.shape.name} | {span.shape.size} | {len(span.shape.edges)} | {span.critical * 1e3:.1f} | "
              f"{span.makespan * 1e3:.1f} | {span.ratio:.4f} | {span.measured_ratio:.4f} | {span.floor * 1e3:.1f} | "
              f"{span.floor_ratio:.4f} |")  # fmt: skip
    worst = max(s.ratio for s in spans)
    worst_measured = max(s.measured_ratio for s in spans)

    def summary(values: list[float]) -> str:
        return f"{statistics.median(values):.4f} / {max(values):.4f}"

    print(f"| median / worst | | | | | {summary([s.ratio for s in spans])} | "
          f"{summary([s.measured_ratio for s in spans])} | | {summary([s.floor_ratio for s in spans])} |")  # fmt: skip

    print()
    run_wall, run_cpu = [c.wall[RUN] for c in cores], [c.cpu[RUN] for c in cores]
    print(f"target <= 30 µs per node (wall): chain {run_wall[0]:.1f}, fan-out {run_wall[1]:.1f} "
          f"({verdict(max(run_wall) <= 30)}); CPU time: {run_cpu[0]:.1f}, {run_cpu[1]:.1f}")  # fmt: skip
    if not args.skip_langgraph:
        best = [min(c.wall[LG_ASYNC], c.wall[LG_SYNC]) / c.wall[RUN] for c in cores]
        best_cpu = [min(c.cpu[LG_ASYNC], c.cpu[LG_SYNC]) / c.cpu[RUN] for c in cores]
        print(f"target >= 5x faster than LangGraph's faster mode (wall): chain {best[0]:.1f}x, fan-out {best[1]:.1f}x "
              f"({verdict(min(best) >= 5)}); CPU time: {best_cpu[0]:.1f}x, {best_cpu[1]:.1f}x")  # fmt: skip
    print(f"target makespan / critical path <= 1.02: worst {worst:.4f} ({verdict(worst <= 1.02)}); against the "
          f"critical path of the measured node durations: worst {worst_measured:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
