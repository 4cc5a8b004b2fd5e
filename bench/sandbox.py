"""Tool sandbox latency: one JSON call of the wordcount tool, per backend, in one run.

    .venv/bin/python bench/sandbox.py [--calls 50] [--json]

Needs the engine of deploy/ci/sandbox-engine.sh (or DOCKER_HOST) with crewflow/tool-base:bookworm; rows
whose backend is missing are skipped with the reason. Rows (p50/p95 of ``--calls`` sequential calls, after
two unmeasured calls each):

- ``docker cold``: DockerSandbox, one-shot container per call (create, attach, start, wait, remove);
- ``docker warm pool of 1`` and ``docker warm pool`` (``warm_pool=4``): DockerSandbox's warm pool — a fresh
  tool process per call in a pre-started container, wiped after each call, the next call's process started
  right after an answer. Back-to-back calls on a pool of 1 wait for that process's interpreter start-up;
  with 4 containers taken in turn each has three calls' time to get it ready; ``50 ms apart`` pauses (not
  measured) before each call, as an agent thinking between tool calls would;
- ``docker exec``: for reference, ``docker exec`` of the tool in a running container through the API;
- ``bubblewrap``: BubblewrapSandbox running the same tool as a script;
- ``host python3``: for reference, the bare, unsandboxed ``/usr/bin/python3`` process.

It prints the cold/warm p50 ratio of each warm row. Everything is sequential: on a shared machine the
figures include noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from crewflow.adapters.metrics.memory import NoopMetrics
from crewflow.adapters.sandbox import docker_host
from crewflow.adapters.sandbox.bubblewrap import BubblewrapSandbox, probe_bubblewrap
from crewflow.adapters.sandbox.docker import DockerConfig, DockerSandbox, _close_stdin
from crewflow.domain.agents import ToolLimits, ToolRef
from crewflow.ports.runtime import ToolBuildSpec, ToolWork

WORDS = 'import json, sys\nprint(json.dumps({"words": len(str(json.load(sys.stdin)["text"]).split())}))\n'
DOCKERFILE = ("FROM crewflow/tool-base:bookworm\nCOPY wc.py /opt/tool/wc.py\n"
              'ENTRYPOINT ["/usr/bin/python3", "/opt/tool/wc.py"]\n')  # fmt: skip
PAYLOAD = {"text": "the quick brown fox jumps over the lazy dog " * 2}  # ~90 bytes of JSON
TENANT = "bench"


def _ignore(kind: Any, data: Any) -> None:
    return None


async def measure(calls: int, one: Callable[[], Awaitable[Any]], gap: float = 0.0) -> dict[str, float]:
    """p50/p95 in ms of ``calls`` sequential calls (``gap`` seconds of unmeasured pause before each)."""
    for _ in range(2):
        await one()
    times: list[float] = []
    for _ in range(calls):
        if gap:
            await asyncio.sleep(gap)
        started = time.perf_counter()
        await one()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p95": times[min(len(times) - 1, int(len(times) * 0.95))],
            "calls": float(calls)}  # fmt: skip


async def docker_rows(calls: int, url: str, rows: dict[str, dict[str, float]]) -> None:
    sandbox = DockerSandbox(DockerConfig(url=url), NoopMetrics())
    try:
        built = await sandbox.build(ToolBuildSpec(TENANT, "wordcount", 1, DOCKERFILE, {"wc.py": WORDS.encode()}),
                                    lambda line: None)  # fmt: skip
        limits = ToolLimits(timeout=30, memory_mb=128)
        cold = ToolRef(id="wordcount", image=built.image, limits=limits)
        warm1 = ToolRef(id="wordcount", image=built.image, limits=limits, warm_pool=1)
        warm = ToolRef(id="wordcount", image=built.image, limits=limits, warm_pool=4)

        async def run(tool: ToolRef) -> None:
            outcome = await sandbox.run_tool(ToolWork(TENANT, "bench", "n", 1, tool, PAYLOAD), _ignore)
            assert outcome.output == {"words": 18}, outcome.output

        rows["docker cold"] = await measure(calls, lambda: run(cold))
        await sandbox.warm_up(warm1, TENANT)
        rows["docker warm pool of 1"] = await measure(calls, lambda: run(warm1))
        rows["docker warm pool of 1, 50 ms apart"] = await measure(calls, lambda: run(warm1), gap=0.05)
        await sandbox.warm_up(warm, TENANT)  # the same pool, grown to 4
        rows["docker warm pool"] = await measure(calls, lambda: run(warm))

        docker = sandbox._client()
        holder_config: dict[str, Any] = {"Image": built.image, "Entrypoint": ["/bin/sleep"], "Cmd": ["600"],
                                         "User": "65534:65534", "HostConfig": {"NetworkMode": "none"}}  # fmt: skip
        holder = await docker.containers.create(holder_config)
        await holder.start()
        data = json.dumps(PAYLOAD).encode()

        async def exec_once() -> None:
            ran = await holder.exec(["/usr/bin/python3", "/opt/tool/wc.py"], stdin=True)
            stream = ran.start()
            async with stream:
                await stream.write_in(data)
                _close_stdin(stream)
                out = b""
                while (msg := await stream.read_out()) is not None:
                    out += msg.data if msg.stream == 1 else b""
            assert json.loads(out) == {"words": 18}

        try:
            rows["docker exec (reference)"] = await measure(calls, exec_once)
        finally:
            await holder.delete(force=True)
    finally:
        await sandbox.close()


async def bubblewrap_row(calls: int, rows: dict[str, dict[str, float]]) -> None:
    sandbox = BubblewrapSandbox()
    tool = ToolRef(id="wordcount", script=WORDS, limits=ToolLimits(timeout=30, memory_mb=128))

    async def run() -> None:
        outcome = await sandbox.run_tool(ToolWork(TENANT, "bench", "n", 1, tool, PAYLOAD), _ignore)
        assert outcome.output == {"words": 18}

    rows["bubblewrap"] = await measure(calls, run)


async def host_row(calls: int, rows: dict[str, dict[str, float]]) -> None:
    data = json.dumps(PAYLOAD).encode()

    async def run() -> None:
        done = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-c", WORDS], input=data,
                                       capture_output=True, check=True)  # fmt: skip
        assert json.loads(done.stdout) == {"words": 18}

    rows["host python3 (unsandboxed reference)"] = await measure(calls, run)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    url = docker_host({})
    if url is None:
        skipped["docker"] = "no Docker engine answers (run deploy/ci/sandbox-engine.sh)"
    else:
        await docker_rows(args.calls, url, rows)
    problem = probe_bubblewrap()
    if problem is None:
        await bubblewrap_row(args.calls, rows)
    else:
        skipped["bubblewrap"] = problem
    await host_row(args.calls, rows)
    ratios = {name: rows["docker cold"]["p50"] / row["p50"] for name, row in rows.items()
              if name.startswith("docker warm") and "docker cold" in rows}  # fmt: skip
    if args.json:
        print(json.dumps({"rows": rows, "skipped": skipped, "cold_over_warm_p50": ratios, "cpus": os.cpu_count(),
                          "machine": platform.platform()}, indent=2))  # fmt: skip
        return 0
    print(f"tool sandbox, {args.calls} sequential calls each, {os.cpu_count()} cpus, {platform.platform()}")
    print(f"{'backend':40} {'p50 ms':>9} {'p95 ms':>9}")
    for name, row in rows.items():
        print(f"{name:40} {row['p50']:9.1f} {row['p95']:9.1f}")
    for name, reason in skipped.items():
        print(f"{name:40} skipped: {reason}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.1f}x faster than a cold container (p50)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
