"""Issue 8: what a tool cannot do, on every sandbox backend — Docker one-shot containers (``docker``), a Docker
warm pool (``warm``) and bubblewrap (``bubblewrap``). Each test runs probe code inside the sandbox (the
probe tool executes the code it is given) and checks both the tool's view and the call's outcome; the
Docker backends also check that no container is left behind after every outcome."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_support import (
    Logs,
    Probe,
    build_probe_image,
    docker_sandbox,
    engine_url,
    need_base_image,
    need_bubblewrap,
)

from crewflow.adapters.metrics.memory import InMemoryMetrics
from crewflow.adapters.sandbox.bubblewrap import BubblewrapSandbox
from crewflow.domain.agents import ToolLimits
from crewflow.domain.errors import NodeExecutionError

pytestmark = pytest.mark.integration


@pytest.fixture(params=["docker", "warm", "bubblewrap"])
async def probe(request: pytest.FixtureRequest) -> AsyncIterator[Probe]:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    metrics = InMemoryMetrics()
    if request.param == "bubblewrap":
        need_bubblewrap()
        yield Probe("bubblewrap", BubblewrapSandbox(), tenant_id, None, None, metrics)
        return
    url = engine_url()
    await need_base_image(url)
    sandbox = docker_sandbox(url, metrics)
    try:
        image = await build_probe_image(sandbox, tenant_id)
        made = Probe(request.param, sandbox, tenant_id, image, url, metrics)
        yield made
        assert await made.leftovers() == []
    finally:
        await sandbox.close()
    assert await Probe(request.param, sandbox, tenant_id, image, url, metrics).leftovers() == []
    assert metrics.gauge("docker_containers_active") in (None, 0)  # None: no container was ever started


async def _still_works(probe: Probe) -> None:
    outcome = await probe.run("print(json.dumps({'ok': True}))")
    assert outcome.output == {"ok": True}
    assert await probe.leftovers() == []


async def test_a_tool_reads_its_input_and_its_output_is_parsed(probe: Probe) -> None:
    logs = Logs()
    outcome = await probe.run("import sys\nprint('working', file=sys.stderr)\nprint(json.dumps({'n': 41 + 1}))",
                              logs=logs)  # fmt: skip
    assert outcome.output == {"n": 42}
    assert logs.lines == ["working"]
    assert await probe.leftovers() == []


async def test_no_network_not_even_the_hosts_loopback(probe: Probe) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code = f"""import socket
seen = {{}}
targets = (("loopback", ("127.0.0.1", {port})), ("redis", ("127.0.0.1", 6379)), ("internet", ("1.1.1.1", 53)))
for name, address in targets:
    try:
        socket.create_connection(address, timeout=3).close()
        seen[name] = "connected"
    except OSError as exc:
        seen[name] = type(exc).__name__
seen["interfaces"] = sorted(name for _, name in socket.if_nameindex())
print(json.dumps(seen))
"""
        seen = (await probe.run(code)).output
    finally:
        server.close()
        await server.wait_closed()
    assert seen["loopback"] != "connected" and seen["redis"] != "connected" and seen["internet"] != "connected", seen
    assert set(seen["interfaces"]) <= {"lo"}, seen
    assert await probe.leftovers() == []


async def test_a_fork_bomb_is_contained_and_the_call_fails_cleanly(probe: Probe) -> None:
    bomb = "import os\nwhile True:\n    os.fork()\n"
    with pytest.raises(NodeExecutionError) as failed:
        await probe.run(bomb, ToolLimits(timeout=8, pids=32))
    assert not failed.value.retryable
    # the tool's processes fail to fork and exit (their tracebacks interleave, so the last stderr line varies),
    # or spin until the timeout; either way the call ends with the tool's own, non-retryable failure
    message = str(failed.value)
    assert re.match(r"tool probe (exited with status [1-9]|timed out after 8s|was killed)", message), message
    assert await probe.leftovers() == []
    await _still_works(probe)


async def test_a_memory_hog_is_killed_out_of_memory(probe: Probe) -> None:
    hog = "data = b'x' * (400 * 1024 * 1024)\nprint(json.dumps({'len': len(data)}))"
    with pytest.raises(NodeExecutionError) as failed:
        await probe.run(hog, ToolLimits(timeout=30, memory_mb=96))
    assert str(failed.value) == "tool probe was killed: out of memory (limit 96 MiB)"
    assert not failed.value.retryable
    assert await probe.leftovers() == []
    await _still_works(probe)


async def test_an_endless_loop_is_killed_at_the_timeout(probe: Probe) -> None:
    with pytest.raises(NodeExecutionError) as failed:
        await probe.run("while True:\n    pass\n", ToolLimits(timeout=2))
    assert str(failed.value) == "tool probe timed out after 2s and was killed"
    assert await probe.leftovers() == []
    await _still_works(probe)


async def test_only_tmp_is_writable_and_it_is_size_limited(probe: Probe) -> None:
    code = """import errno, os
seen = {}
for path in ("/probe", "/etc/probe", "/usr/probe", "/opt/probe", "/var/probe", "/home/probe", "/dev/shm/probe"):
    try:
        with open(path, "w") as f:
            f.write("x")
        seen[path] = "written"
    except OSError as exc:
        seen[path] = errno.errorcode.get(exc.errno, str(exc.errno))
with open("/tmp/small", "w") as f:
    f.write("fits")
seen["/tmp/small"] = open("/tmp/small").read()
try:
    with open("/tmp/big", "wb") as f:
        for _ in range(64):
            f.write(b"x" * (1024 * 1024))
            f.flush()
    seen["/tmp/big"] = "written"
except OSError as exc:
    seen["/tmp/big"] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(seen))
"""
    seen = (await probe.run(code, ToolLimits(timeout=20, tmpfs_mb=4))).output
    assert seen.pop("/tmp/small") == "fits"
    assert seen.pop("/tmp/big") == "ENOSPC"
    assert all(result != "written" for result in seen.values()), seen
    assert await probe.leftovers() == []


async def test_no_host_secrets_files_or_environment(probe: Probe, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:  # fmt: skip
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("CREWFLOW_SECRET_KEY", secret)
    name = f".crewflow-sandbox-{uuid.uuid4().hex}"
    planted = [Path("/root") / name, Path("/work") / name, tmp_path / "other-tenant.txt"]
    for path in planted:
        path.write_text(secret)
    try:
        code = f"""import os
paths = {json.dumps([str(p) for p in planted])}
found = []
for top in ("/root", "/work", "/home", "/tmp", "/var", "/etc"):
    for base, dirs, files in os.walk(top):
        for name in files:
            try:
                with open(os.path.join(base, name), "rb") as f:
                    if {secret!r}.encode() in f.read(1 << 20):
                        found.append(os.path.join(base, name))
            except OSError:
                pass
try:
    root = os.listdir("/root")
except OSError as exc:
    root = type(exc).__name__
print(json.dumps({{"env": dict(os.environ), "exists": [p for p in paths if os.path.exists(p)], "found": found,
                  "work": os.path.exists("/work"), "root": root}}))
"""
        seen = (await probe.run(code, ToolLimits(timeout=30))).output
    finally:
        for path in planted:
            path.unlink()
    assert seen["exists"] == [] and seen["found"] == [], seen
    assert not any(secret in value for value in seen["env"].values())
    assert not any(name.startswith("CREWFLOW") or name in ("DOCKER_HOST",) for name in seen["env"]), seen["env"]
    assert seen["work"] is False
    assert seen["root"] in ([], "FileNotFoundError", "PermissionError"), seen["root"]
    assert await probe.leftovers() == []


async def test_tools_run_unprivileged(probe: Probe) -> None:
    code = """import os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                  "no_new_privs": status.get("NoNewPrivs", "").strip(), "hostname": os.uname().nodename}))
"""
    seen = (await probe.run(code)).output
    assert seen["uid"] != 0 and seen["euid"] != 0 and seen["gid"] != 0, seen
    assert 0 not in seen["groups"]
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0, seen
    assert seen["no_new_privs"] == "1"
    assert seen["hostname"] != socket.gethostname()
    assert await probe.leftovers() == []


async def test_a_failing_tool_reports_its_status_and_last_stderr_line(probe: Probe) -> None:
    with pytest.raises(NodeExecutionError) as failed:
        await probe.run("import sys\nprint('first', file=sys.stderr)\nprint('it broke', file=sys.stderr)\nsys.exit(3)")
    assert str(failed.value) == "tool probe exited with status 3: it broke"
    with pytest.raises(NodeExecutionError, match=r"^tool probe output is not valid JSON$"):
        await probe.run("print('not json')")
    with pytest.raises(NodeExecutionError, match=r"^tool probe output is larger than its limit of 100 bytes$"):
        await probe.run("print('x' * 5000)", ToolLimits(output_bytes=100))
    assert await probe.leftovers() == []


async def test_nothing_of_one_call_is_left_for_the_next(probe: Probe) -> None:
    plant = """import os, subprocess
open("/tmp/left-behind", "w").write("state")
subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(60)"], start_new_session=True)
print(json.dumps({"pid": os.getpid()}))
"""
    await probe.run(plant)
    look = """import os
procs = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            procs.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
        except OSError:
            pass
print(json.dumps({"tmp": os.listdir("/tmp"), "sleepers": [p for p in procs if "time.sleep" in p]}))
"""
    seen = (await probe.run(look)).output
    assert seen == {"tmp": [], "sleepers": []}


async def test_the_warm_supervisor_and_bubblewraps_init_cannot_be_inspected(probe: Probe) -> None:
    if probe.kind == "docker":
        pytest.skip("in a one-shot container PID 1 is the tool itself")
    code = """import os
seen = {}
for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/fd/0"):
    try:
        with open(path, "rb") as f:
            f.read(1)
        seen[path] = "read"
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""
    seen = (await probe.run(code)).output
    assert all(result != "read" for result in seen.values()), seen
