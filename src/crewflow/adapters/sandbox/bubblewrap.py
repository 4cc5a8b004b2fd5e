"""Script tools under bubblewrap, for machines without a Docker engine (ADR 0014).

Each call runs ``/usr/bin/python3 -I /opt/tool/tool.py`` (the script, copied in read-only from a memfd) in
fresh IPC, PID, network, UTS and cgroup namespaces: no network at all (an empty network namespace, not even
loopback to the host), a new ``/proc``, a minimal ``/dev``, read-only binds of only ``/usr`` (plus the
``/bin``, ``/lib*`` links and ``/etc/ld.so.cache``, ``/etc/alternatives``), a size-limited tmpfs ``/tmp``
and a read-only root: the host's ``/root``, ``/home``, ``/work``, other tenants' files and the host's
environment (``--clearenv``) are not there.

bubblewrap run as root leaves the tool uid 0 with every capability (field notes), so the command inside is
``setpriv`` dropping to an unprivileged uid with no capabilities (bounding set and inheritable cleared,
no_new_privs). No user namespace is made: as root one would map the tool back to uid 0 outside. Limits are
rlimits set on bubblewrap and inherited: ``RLIMIT_AS`` (memory; a hog gets ``MemoryError``, reported as
out of memory), ``RLIMIT_NPROC`` (processes and threads, per real uid), ``RLIMIT_CORE`` 0. Because
``RLIMIT_NPROC`` counts every process of the uid on the machine, each concurrent call gets its own uid from a
range (``uid_base`` …), reused first-in-first-out, so leftovers of one call never count against the next
("Can't fork for pid 1" in the field notes). When bubblewrap's pid 1 ends, the kernel kills whatever else
the tool started in its PID namespace; ``--die-with-parent`` ends the sandbox if this process dies; on the
wall-clock timeout the whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Sequence

from crewflow.adapters.sandbox.io import (
    RawRun,
    StderrLog,
    StdoutBuffer,
    call_timeout,
    encode_input,
    engine_error,
    outcome_of,
    validate_input,
)
from crewflow.domain.agents import ToolLimits
from crewflow.domain.errors import ToolUnavailable
from crewflow.ports.runtime import NodeEmitter, NodeOutcome, ToolWork

__all__ = ["BubblewrapSandbox", "bwrap_command", "probe_bubblewrap"]

PYTHON = "/usr/bin/python3"  # not a pyenv shim: that adds ~80 ms per start (field notes)
SETPRIV = "/usr/bin/setpriv"
SCRIPT_PATH = "/opt/tool/tool.py"
TMP = "/tmp"  # noqa: S108 - the sandbox's own private tmpfs, not the host's
UID_BASE = 2_000_000_000
UID_SLOTS = 64
_ETC = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")
_TOP = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in _TOP:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC:
        args += ["--ro-bind-try", path, path]
    return args


def bwrap_command(bwrap: str, uid: int, limits: ToolLimits, script_fd: int, argv: Sequence[str]) -> list[str]:
    """The bubblewrap command line of one call (``script_fd`` holds the script, copied in read-only)."""
    return [
        bwrap,
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session",
        *_system_binds(),
        "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--size", str(limits.tmpfs_mb * 1024 * 1024), "--tmpfs", TMP,
        "--perms", "0444", "--ro-bind-data", str(script_fd), SCRIPT_PATH,
        "--remount-ro", "/",
        "--hostname", "sandbox", "--chdir", TMP,
        "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", TMP,
        "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--",
        SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
        "--no-new-privs", "--",
        *argv,
    ]  # fmt: skip


def _rlimits(limits: ToolLimits) -> Callable[[], None]:
    memory = limits.memory_mb * 1024 * 1024

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.pids, limits.pids))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    return apply


@functools.cache
def probe_bubblewrap(bwrap: str | None = None) -> str | None:
    """None if bubblewrap can run a sandboxed ``python3`` here, else why not (checked once per process)."""
    path = bwrap or shutil.which("bwrap")
    if path is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    for needed in (PYTHON, SETPRIV):
        if not os.access(needed, os.X_OK):
            return f"{needed} is missing"
    if os.geteuid() != 0:
        return "the bubblewrap backend runs as root (it drops each tool to its own unprivileged uid)"
    fd = os.memfd_create("crewflow-probe")
    try:
        os.write(fd, b"print('ok')\n")
        os.lseek(fd, 0, os.SEEK_SET)
        command = bwrap_command(path, UID_BASE + UID_SLOTS, ToolLimits(), fd, [PYTHON, "-I", SCRIPT_PATH])
        done = subprocess.run(command,  # noqa: S603 - a fixed command line of absolute paths
                               pass_fds=(fd,), capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"},
                              preexec_fn=_rlimits(ToolLimits()), check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap does not work here: {exc}"
    finally:
        os.close(fd)
    if done.returncode != 0 or done.stdout.strip() != b"ok":
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap does not work here: {reason[-1] if reason else f'status {done.returncode}'}"
    return None


class BubblewrapSandbox:
    """A ``ToolSandbox`` for tools with a ``script``; an image-only tool is ``ToolUnavailable``."""

    def __init__(self, bwrap: str | None = None, *, uid_base: int = UID_BASE, slots: int = UID_SLOTS) -> None:
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self._free: deque[int] = deque(range(uid_base, uid_base + slots))
        self._slots = asyncio.Semaphore(slots)

    async def run_tool(self, work: ToolWork, emit: NodeEmitter) -> NodeOutcome:
        tool = work.tool
        if tool.script is None:
            raise ToolUnavailable(f"tool {tool.id} needs a Docker engine and none answers here")
        validate_input(tool, work.payload)
        data = encode_input(tool, work.payload)
        timeout = call_timeout(work)
        async with self._slots:
            uid = self._free.popleft()
            try:
                raw = await self._run(work, emit, uid, data, timeout)
            finally:
                self._free.append(uid)  # first in, first out: a just-used uid is reused last
        return outcome_of(tool, raw, timeout)

    async def _run(self, work: ToolWork, emit: NodeEmitter, uid: int, data: bytes, timeout: float) -> RawRun:
        tool = work.tool
        assert tool.script is not None
        fd = os.memfd_create(f"crewflow-{tool.id}"[:200])
        try:
            os.write(fd, tool.script.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            command = bwrap_command(self.bwrap, uid, tool.limits, fd, [PYTHON, "-I", SCRIPT_PATH])
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, pass_fds=(fd,), start_new_session=True,
                    env={"PATH": "/usr/bin:/bin"}, preexec_fn=_rlimits(tool.limits),
                )  # fmt: skip
            except OSError as exc:
                raise engine_error(tool, "bubblewrap could not start", exc) from None
        finally:
            os.close(fd)
        out = StdoutBuffer(tool.limits.output_bytes)
        log = StderrLog(tool, emit)
        timed_out = False

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(data)
                await proc.stdin.drain()
                proc.stdin.close()

        async def read_out() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                if not out.feed(chunk):
                    kill()
                    return

        async def read_err() -> None:
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(65536):
                log.feed(chunk)

        tasks = [asyncio.ensure_future(coro) for coro in (feed(), read_out(), read_err(), proc.wait())]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*tasks)
        except TimeoutError:
            timed_out = True
        finally:
            if proc.returncode is None:
                kill()
                await proc.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.close()
        status = proc.returncode
        oom = status not in (0, None) and log.last_line.startswith("MemoryError")
        return RawRun(
            exit_code=status if status is not None and status >= 0 else None,
            stdout=out.value(), stdout_overflow=out.overflow, timed_out=timed_out, oom_killed=oom,
            last_stderr=log.last_line,
            killed_by_signal=-status if status is not None and status < 0 and not out.overflow else None,
        )  # fmt: skip
