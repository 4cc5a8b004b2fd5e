"""HTTP API throughput and WebSocket latency (issue 6, item 10).

    .venv/bin/python bench/api.py [--quick] [--rounds N] [--seconds S] [--profile] [--markdown FILE]

Three servers, each run in its own subprocess with the same settings (uvicorn, 1 worker, uvloop/httptools when
installed, 127.0.0.1, log level warning), one at a time, loaded by the same generator
(``wrk -t2 -c64 -d<S>s --latency``), in alternating rounds (A B C A B C ...) so the machine's load hits them
alike; the report is the median of the rounds:

- **hello**: a bare Litestar hello-world (``GET /`` → ``"Hello, world!"``);
- **jwt**: a minimal Litestar route that verifies an HS256 JWT (PyJWT, issuer and audience) from
  ``Authorization: Bearer`` and returns 20 msgspec structs;
- **full**: crewflow's real app (``create_app`` on embedded defaults in a temporary data dir, SQLite) serving
  ``GET /api/v1/flows?limit=20`` to an admin: token middleware (JWT, revocation and user-status checks),
  rate-limit middleware, RBAC guard, database read, cursor pagination, security headers. The tenant, its admin,
  an agent and 25 flows are created through the API first (register, login, POST /agents, POST /flows).

Rate limits: crewflow has no setting for them (``RateLimits`` in ``entrypoints/http/limits.py`` is fixed at
100/min per user), so the full server is launched by this script (``--serve full``) and, once the container
is built, wraps its limiter so that every ``hit`` still goes through the real ``MemoryRateLimiter`` but with
the limit raised to 10**12 — the counting work stays in the path, the 429s do not. wrk's count of non-2xx
responses must be 0 for a number to be valid.

Then ``bench/ws_latency.py`` runs (its own process) and its p50/p95 and lost events are reported.
``--profile`` samples the full server with py-spy under the same load and prints where its time goes.
Needs ``wrk`` (Debian package ``wrk``); the script does not install it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS, CONNECTIONS = 2, 64
KINDS = ("hello", "jwt", "full")
WHAT_IF = "full-deferred"
LABELS = {
    "hello": "Litestar hello-world `GET /`",
    "jwt": "minimal Litestar route: verify HS256 JWT + 20 msgspec structs",
    "full": "crewflow `GET /api/v1/flows?limit=20` (auth, RBAC, rate limits, SQLite, pagination)",
    WHAT_IF: "what-if, not shipped: the same, SQLite reads in a deferred `BEGIN` instead of `BEGIN IMMEDIATE`",
}
PATHS = {"hello": "/", "jwt": "/items", "full": "/api/v1/flows?limit=20", WHAT_IF: "/api/v1/flows?limit=20"}
MINIMAL_SECRET = "bench-minimal-route-signing-key-" + "k" * 16  # ≥ 32 bytes (PyJWT warns below)
MINIMAL_ISSUER, MINIMAL_AUDIENCE = "bench", "bench-api"
FULL_SECRET = "bench-full-route-signing-key-" + "q" * 24
RAISED_LIMIT = 10**12
FLOWS = 25
TARGET_RATIO = 0.5
WS_TARGET_P95_MS = 5.0


# -- the servers (each runs in a subprocess: bench/api.py --serve KIND --port N) ---------------------------------


def hello_app() -> Any:
    from litestar import Litestar, get

    @get("/")
    async def hello() -> str:
        return "Hello, world!"

    return Litestar(route_handlers=[hello], debug=False)


def minimal_token(now: float | None = None) -> str:
    import jwt

    issued = int(now if now is not None else time.time())
    claims = {"user_id": "u1", "tenant_id": "t1", "role": "admin", "iat": issued, "exp": issued + 86_400,
              "jti": "j1", "iss": MINIMAL_ISSUER, "aud": MINIMAL_AUDIENCE, "sub": "u1"}  # fmt: skip
    return jwt.encode(claims, MINIMAL_SECRET, algorithm="HS256")


class Item(msgspec.Struct):
    """The minimal route's payload: the same fields as a flow summary of the real list."""

    id: str
    name: str
    description: str
    current_version: int
    is_active: bool
    created_at: float
    updated_at: float


def jwt_app() -> Any:
    import jwt
    from litestar import Litestar, get
    from litestar.exceptions import NotAuthorizedException

    @get("/items")
    async def items(request: Request[Any, Any, Any]) -> list[Item]:
        header = request.headers.get("authorization", "")
        if header[:7].lower() != "bearer ":
            raise NotAuthorizedException()
        try:
            jwt.decode(header[7:], MINIMAL_SECRET, algorithms=["HS256"], audience=MINIMAL_AUDIENCE,
                       issuer=MINIMAL_ISSUER)  # fmt: skip
        except jwt.PyJWTError:
            raise NotAuthorizedException() from None
        now = time.time()
        return [Item(f"flow-{i:02d}", f"Flow {i}", "a flow", 1, True, now, now) for i in range(20)]

    return Litestar(route_handlers=[items], debug=False)


class RaisedLimits:
    """Every hit goes through the real limiter, with the limit raised so the benchmark gets no 429s."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def hit(self, key: str, limit: int, window: float) -> Any:
        return await self.inner.hit(key, max(limit, RAISED_LIMIT), window)


def full_app() -> Any:
    """crewflow's ASGI app as ``crewflow serve`` builds it (settings from CREWFLOW_* variables, logging
    configured, container built at start-up), plus a start-up hook that raises the rate limits."""
    from crewflow.entrypoints.http.asgi import app as factory

    app = factory()

    async def raise_limits() -> None:
        container = app.state.container
        container.limiter = RaisedLimits(container.limiter)

    app.on_startup.append(raise_limits)
    return app


def deferred_begin() -> None:
    """What-if for ``full-deferred``: the embedded SQLite store opens every transaction with ``BEGIN IMMEDIATE``
    (the write lock, taken up front); rewrite that one statement to a plain (deferred) ``BEGIN``. Only safe
    here because this load never writes; it measures what read-only units of work would gain."""
    from sqlalchemy import event

    from crewflow.adapters.sql import engine as sql_engine

    original = sql_engine._sqlite_engine

    def patched(url: Any, **kw: Any) -> Any:
        made = original(url, **kw)

        @event.listens_for(made.sync_engine, "before_cursor_execute", retval=True)
        def _deferred(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> Any:
            return ("BEGIN" if statement == "BEGIN IMMEDIATE" else statement), parameters

        return made

    sql_engine._sqlite_engine = patched


def full_deferred_app() -> Any:
    deferred_begin()
    return full_app()


def serve(kind: str, port: int) -> None:
    import uvicorn

    app = {"hello": hello_app, "jwt": jwt_app, "full": full_app, "full-deferred": full_deferred_app}[kind]()
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", loop="auto", http="auto")


# -- wrk ---------------------------------------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]  # "50%", "75%", "90%", "99%"
    non_2xx: int = 0  # wrk's "Non-2xx or 3xx responses"
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_us_per_request: float = 0.0  # the server process's CPU (all threads) / requests, when measured


def parse_wrk(text: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{text}")
    latency = {pct: float(value) * _UNITS[unit]
               for pct, value, unit in re.findall(r"^\s+(\d+%)\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)}  # fmt: skip
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)) \
        if errors else {}  # fmt: skip
    return WrkResult(int(total.group(1)), float(total.group(2)) * _UNITS[total.group(3)] / 1000,
                     float(rps.group(1)), latency, int(non_2xx.group(1)) if non_2xx else 0, socket_errors)  # fmt: skip


def wrk_command(url: str, seconds: float, token: str | None) -> list[str]:
    command = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    return [*command, url]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, seconds: float, token: str | None, pid: int | None = None) -> WrkResult:
    """wrk's result; with ``pid``, also the server's CPU time per request over the run."""
    before = cpu_seconds(pid) if pid else 0.0
    done = subprocess.run(wrk_command(url, seconds, token), capture_output=True, text=True, timeout=seconds + 60,
                          check=True)  # fmt: skip
    result = parse_wrk(done.stdout)
    if pid and result.requests:
        result.cpu_us_per_request = (cpu_seconds(pid) - before) / result.requests * 1e6
    return result


# -- running the servers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(data_dir: str) -> dict[str, str]:
    """The inherited environment without any CREWFLOW_* setting (embedded defaults), plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREWFLOW_")}
    env.update(CREWFLOW_DATA_DIR=data_dir, CREWFLOW_JWT_SECRET=FULL_SECRET, CREWFLOW_LOG_LEVEL="warning",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])))  # fmt: skip
    return env


class Server:
    def __init__(self, kind: str, env: dict[str, str], log: Path) -> None:
        self.kind, self.port = kind, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", kind,
                                         "--port", str(self.port)], env=env, cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        probe = {"hello": "/", "jwt": "/items"}.get(self.kind, "/healthz")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.flush()
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.kind} server exited with {self.process.returncode}:\n{tail}")
            try:
                httpx.get(self.base + probe, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} server did not start within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def seed(base: str) -> str:
    """A tenant with its admin, an agent and ``FLOWS`` flows, through the API; returns the admin's token."""
    import httpx

    password = "bench-admin-passphrase-0123"
    with httpx.Client(base_url=base, timeout=30.0) as client:
        registered = client.post("/api/v1/auth/register", json={"tenant_name": "Bench", "slug": "bench",
                                                                 "email": "admin@bench.example",
                                                                 "password": password})  # fmt: skip
        registered.raise_for_status()
        login = client.post("/api/v1/auth/login", json={"email": "admin@bench.example", "password": password})
        login.raise_for_status()
        token: str = login.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        client.post("/api/v1/agents", headers=auth, json={"id": "writer", "role": "Writer", "goal": "Write notes",
                                                          "provider": "scripted"}).raise_for_status()  # fmt: skip
        for i in range(FLOWS):
            client.post("/api/v1/flows", headers=auth, json={
                "id": f"flow-{i:02d}", "name": f"Flow {i}", "description": "a benchmark flow",
                "nodes": [{"id": "in", "kind": "input"},
                          {"id": "write", "kind": "agent", "agent": "writer", "task": "Write about {{ inputs.topic }}"},
                          {"id": "out", "kind": "output"}],
                "edges": ["in -> write", "write -> out"]}).raise_for_status()  # fmt: skip
    return token


def check_response(kind: str, base: str, token: str | None) -> str:
    """One request before the load: the status and the shape the load will get."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(base + PATHS[kind], headers=headers, timeout=10.0)
    if response.status_code != 200:
        raise RuntimeError(f"{kind}: {PATHS[kind]} answered {response.status_code}: {response.text[:300]}")
    if kind.startswith("full"):
        page = response.json()
        if len(page["items"]) != 20 or not page.get("next_cursor"):
            raise RuntimeError(f"full: expected 20 flows and a next cursor, got {response.text[:300]}")
    if kind == "jwt" and len(response.json()) != 20:
        raise RuntimeError("jwt: expected 20 items")
    return f"{response.status_code}, {len(response.content)} bytes"


# -- statistics and report ---------------------------------------------------------------------------------------


@dataclass
class Summary:
    kind: str
    rounds: list[WrkResult]

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    def latency(self, pct: str) -> float:
        return statistics.median(r.latency_ms[pct] for r in self.rounds)

    @property
    def cpu_us(self) -> float:
        return statistics.median(r.cpu_us_per_request for r in self.rounds)

    @property
    def non_2xx(self) -> int:
        return sum(r.non_2xx for r in self.rounds)

    @property
    def socket_errors(self) -> int:
        return sum(sum(r.socket_errors.values()) for r in self.rounds)

    def socket_error_text(self) -> str:
        kinds: Counter[str] = Counter()
        for r in self.rounds:
            kinds.update(r.socket_errors)
        return ", ".join(f"{k} {v}" for k, v in kinds.items() if v) or "0"

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)


def ratio_lines(summaries: dict[str, Summary]) -> list[str]:
    full_jwt = summaries["full"].rps / summaries["jwt"].rps
    jwt_hello = summaries["jwt"].rps / summaries["hello"].rps
    met = "met" if full_jwt >= TARGET_RATIO else f"NOT met ({TARGET_RATIO / full_jwt:.2f}x short)"
    lines = [f"full / minimal-JWT = {full_jwt:.3f} (target ≥ {TARGET_RATIO}: {met})",
             f"minimal-JWT / hello = {jwt_hello:.3f}",
             f"full / hello = {summaries['full'].rps / summaries['hello'].rps:.3f}"]  # fmt: skip
    if WHAT_IF in summaries:
        lines.append(f"what-if (deferred BEGIN) / minimal-JWT = {summaries[WHAT_IF].rps / summaries['jwt'].rps:.3f}, "
                     f"/ full = {summaries[WHAT_IF].rps / summaries['full'].rps:.2f}")  # fmt: skip
    return lines


def table(summaries: dict[str, Summary]) -> list[str]:
    rows = ["| server | req/s (median) | req/s per round | p50 ms | p75 ms | p90 ms | p99 ms | server CPU µs/req "
            "| requests | non-2xx | wrk socket errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, s in summaries.items():
        per_round = ", ".join(f"{r.rps:,.0f}" for r in s.rounds)
        rows.append(f"| {LABELS[kind]} | **{s.rps:,.0f}** | {per_round} | {s.latency('50%'):.2f} | "
                    f"{s.latency('75%'):.2f} | {s.latency('90%'):.2f} | {s.latency('99%'):.2f} | {s.cpu_us:.0f} | "
                    f"{s.requests:,} | "
                    f"{s.non_2xx} | {s.socket_error_text()} |")  # fmt: skip
    return rows


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.machine()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("litestar", "uvicorn", "uvloop", "httptools", "msgspec", "PyJWT", "SQLAlchemy", "aiosqlite"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    wrk = shutil.which("wrk")
    if wrk:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()
        parts.append(first[0].split(" [")[0] if first else "wrk")
    return ", ".join(parts)


# -- WebSocket latency (bench/ws_latency.py in its own process) --------------------------------------------------


@dataclass
class WsResult:
    p50: float
    p95: float
    lost: int
    measured: int
    output: str


def parse_ws(text: str) -> WsResult:
    lat = re.search(r"p50 ([\d.]+)\s+p95 ([\d.]+)", text)
    lost = re.search(r"live events measured (\d+), lost or duplicated (\d+)", text)
    if lat is None or lost is None:
        raise ValueError(f"unexpected ws_latency output:\n{text}")
    report = [line for line in text.splitlines() if line.startswith(("python ", "events ", "latency ", "target "))]
    return WsResult(float(lat.group(1)), float(lat.group(2)), int(lost.group(2)), int(lost.group(1)),
                    "\n".join(report))  # fmt: skip


def run_ws(runs: int, env: dict[str, str]) -> WsResult:
    command = [sys.executable, str(HERE / "ws_latency.py"), "--runs", str(runs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ws_latency.py failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_ws(done.stdout)


# -- profile (py-spy) --------------------------------------------------------------------------------------------

COMPONENTS: list[tuple[str, str]] = [  # (marker in a frame's file, component), first match wins
    ("sqlalchemy/", "SQLAlchemy"), ("aiosqlite/", "aiosqlite"), ("sqlite3/", "sqlite3"), ("jwt/", "PyJWT"),
    ("litestar/", "Litestar"), ("uvicorn/", "uvicorn"), ("structlog/", "structlog"), ("msgspec/", "msgspec"),
    ("crewflow/", "crewflow"), ("asyncio/", "asyncio"),
    ("threading.py", "threads, queues, futures"), ("queue.py", "threads, queues, futures"),
    ("concurrent/", "threads, queues, futures"),
]


def _frame_file(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]


def component(frame: str) -> str:
    file = _frame_file(frame)
    return next((name for marker, name in COMPONENTS if marker in file), "other (stdlib, C, ...)")


def summarize_profile(lines: Iterable[str], top: int = 12) -> list[str]:
    """From py-spy's raw (collapsed) output recorded with ``--threads``: share of samples per thread, self time
    per component (the file of the innermost frame), inclusive time of crewflow's functions and the top
    innermost frames."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    crewflow: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        if frames[0].startswith("thread ("):
            threads[re.sub(r"\d+", "N", frames[0].partition("): ")[2] or "?")] += count
            frames = frames[1:] or frames
        own[component(frames[-1])] += count
        leaves[re.sub(r":\d+\)$", ")", frames[-1])] += count
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames if "crewflow/" in _frame_file(f)}:
            crewflow[name] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples; by thread: " + ", ".join(f"{k} {v / total:.0%}" for k, v in threads.most_common()),
           "self time by component (file of the innermost Python frame):"]  # fmt: skip
    out += [f"  {v / total:6.1%}  {k}" for k, v in own.most_common()]
    out.append("inclusive time of crewflow functions (middlewares enclose everything after them):")
    out += [f"  {v / total:6.1%}  {k}" for k, v in crewflow.most_common(top)]
    out.append("top innermost frames:")
    out += [f"  {v / total:6.1%}  {k}" for k, v in leaves.most_common(top)]
    return out


def profile(env: dict[str, str], token: str, seconds: float, workdir: Path) -> list[str]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ["py-spy not found: .venv/bin/pip install py-spy"]
    raw = workdir / "full.collapsed"
    with Server("full", env, workdir / "server-full-profile.log") as server:
        url = server.base + PATHS["full"]
        run_wrk(url, 1, token)
        recorder = subprocess.Popen([spy, "record", "--pid", str(server.process.pid), "--duration", f"{seconds:g}",
                                     "--rate", "250", "--gil", "--format", "raw", "--threads", "--output", str(raw)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(0.5)
        result = run_wrk(url, seconds, token)
        _, err = recorder.communicate(timeout=seconds + 60)
    if not raw.exists():
        return [f"py-spy produced nothing: {err.strip()[-500:]}"]
    lines = [f"py-spy record --gil --rate 250 (samples the thread holding the GIL: Python CPU time) for {seconds:g} s "
             f"under the same wrk load: {result.rps:,.0f} req/s, non-2xx {result.non_2xx}"]  # fmt: skip
    return lines + summarize_profile(raw.read_text().splitlines())


# -- breakdown (in process, sequential: where the full route's time goes) -----------------------------------------


async def _asgi_get(app: Any, path: str, query: bytes, token: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}  # fmt: skip
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _per_call(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """Median over 5 blocks of n calls: (CPU µs of this process per call, wall µs per call)."""
    for _ in range(max(n // 10, 5)):
        await call()
    cpu, wall = [], []
    for _ in range(5):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await call()
        cpu.append((time.process_time() - c0) / n * 1e6)
        wall.append((time.perf_counter() - w0) / n * 1e6)
    return statistics.median(cpu), statistics.median(wall)


async def breakdown_async(data_dir: str, token: str, n: int) -> list[str]:
    from litestar import Litestar

    from crewflow.bootstrap import build_api_container
    from crewflow.entrypoints.http import create_app
    from crewflow.entrypoints.http.pagination import page_out
    from crewflow.settings import Settings

    settings = Settings(data_dir=data_dir, log_level="warning",
                        extra={"CREWFLOW_JWT_SECRET": FULL_SECRET, "CREWFLOW_LOG_LEVEL": "warning"})  # fmt: skip
    container = await build_api_container(settings)
    container.limiter = RaisedLimits(container.limiter)
    full: Litestar = create_app(container)
    jwt_route = jwt_app()
    identity = container.tokens.verify(token)
    mini = minimal_token()

    async def verify() -> None:
        container.tokens.verify(token)

    async def status() -> None:
        await container.revocations.is_revoked(identity.jti)
        container.user_status.get(identity.user_id)

    async def unit_of_work() -> None:
        async with container.uow_factory.for_tenant(identity.tenant_id):
            pass

    async def list_flows() -> None:
        async with container.uow_factory.for_tenant(identity.tenant_id) as uow:
            page_out(await uow.flows.list(None, 20), lambda f: f)

    async def full_call() -> None:
        assert await _asgi_get(full, "/api/v1/flows", b"limit=20", token) == 200

    async def public_call() -> None:
        assert await _asgi_get(full, "/healthz", b"", token) == 200

    async def jwt_call() -> None:
        assert await _asgi_get(jwt_route, "/items", b"", mini) == 200

    rows = ["| step (in process, sequential, no HTTP server) | CPU µs per call | wall µs per call |", "|---|---|---|"]
    try:
        for label, call in [("minimal JWT app, whole ASGI call", jwt_call),
                            ("crewflow app, whole ASGI call `GET /api/v1/flows?limit=20`", full_call),
                            ("crewflow app, public `GET /healthz` (request id, headers; no auth, no DB)", public_call),
                            ("  `JwtTokenService.verify` (PyJWT decode + claims)", verify),
                            ("  revocation check + user-status cache lookup", status),
                            ("  open and close a tenant unit of work (SQLite: connection, BEGIN IMMEDIATE, rollback)",
                             unit_of_work),
                            ("  unit of work + `flows.list(None, 20)` + `page_out`", list_flows)]:  # fmt: skip
            cpu, wall = await _per_call(call, n)
            rows.append(f"| {label} | {cpu:,.0f} | {wall:,.0f} |")
    finally:
        await container.aclose()
    return rows


# -- main --------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 5 WebSocket runs")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 5, quick 2)")
    parser.add_argument("--seconds", type=float, help="wrk duration per round (default 10, quick 3)")
    parser.add_argument("--ws-runs", type=int, help="bench/ws_latency.py --runs (default 20, quick 5)")
    parser.add_argument("--skip-ws", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="sample the full server with py-spy under load, then time its steps in process")
    parser.add_argument("--markdown", help="also write the result tables to this file")
    parser.add_argument("--what-if", action="store_true",
                        help=f"add a fourth server to the rounds: {LABELS[WHAT_IF]}")
    parser.add_argument("--serve", choices=[*KINDS, WHAT_IF], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("bench/api.py needs wrk, the HTTP load generator, and it is not installed.\n"
              "Install it (Debian/Ubuntu): apt-get install -y wrk", file=sys.stderr)  # fmt: skip
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    warmup = 1.0 if args.quick else 2.0
    ws_runs = args.ws_runs or (5 if args.quick else 20)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{started}; {machine()}")
    print(versions())
    print(f"load: wrk -t{THREADS} -c{CONNECTIONS} -d{seconds:g}s --latency, {rounds} rounds per server in "
          f"alternation, {warmup:g} s wrk warm-up after each server start; uvicorn 1 worker, 127.0.0.1")  # fmt: skip
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="crewflow-bench-api-") as tmp:
        workdir = Path(tmp)
        env = server_env(str(workdir / "data"))
        with Server("full", env, workdir / "server-full-seed.log") as server:
            token = seed(server.base)
        print(f"seeded through the API: tenant 'bench', admin, 1 agent, {FLOWS} flows")
        tokens = {"hello": None, "jwt": minimal_token(), "full": token, WHAT_IF: token}
        kinds = [*KINDS, WHAT_IF] if args.what_if else list(KINDS)
        results: dict[str, list[WrkResult]] = {kind: [] for kind in kinds}
        for round_no in range(1, rounds + 1):
            for kind in kinds:
                with Server(kind, env, workdir / f"server-{kind}.log") as server:
                    shape = check_response(kind, server.base, tokens[kind])
                    url = server.base + PATHS[kind]
                    run_wrk(url, warmup, tokens[kind])
                    result = run_wrk(url, seconds, tokens[kind], server.process.pid)
                results[kind].append(result)
                print(f"round {round_no} {kind:5}: {result.rps:9,.0f} req/s  p50 {result.latency_ms['50%']:.2f} ms "
                      f"p99 {result.latency_ms['99%']:.2f} ms  server CPU {result.cpu_us_per_request:.0f} µs/req  "
                      f"non-2xx {result.non_2xx}  ({shape})", flush=True)  # fmt: skip
        summaries = {kind: Summary(kind, results[kind]) for kind in kinds}
        out += ["", *table(summaries), "", *ratio_lines(summaries)]
        invalid = [k for k, s in summaries.items() if s.non_2xx]
        out.append("valid: every response wrk got was 2xx" if not invalid
                   else f"NOT valid for {', '.join(invalid)}: non-2xx responses")  # fmt: skip
        late = [f"{k}: {s.socket_error_text()}" for k, s in summaries.items() if s.socket_errors]
        if late:
            out.append("wrk socket errors (timeout: a request unanswered after wrk's 2 s): " + "; ".join(late))
        print("\n".join(out), flush=True)
        if args.profile:
            prof = profile(env, token, seconds, workdir)
            print("\nprofile of the full server (py-spy):\n" + "\n".join(prof), flush=True)
            out += ["", "profile of the full server (py-spy):", *prof]
            rows = asyncio.run(breakdown_async(str(workdir / "data"), token, 50 if args.quick else 200))
            print("\n" + "\n".join(rows), flush=True)
            out += ["", *rows]
        if not args.skip_ws:
            ws = run_ws(ws_runs, env)
            met = ws.p95 <= WS_TARGET_P95_MS and ws.lost == 0
            ws_lines = ["", f"WebSocket (bench/ws_latency.py --runs {ws_runs}):", ws.output,
                        f"WebSocket p50 {ws.p50:.2f} ms, p95 {ws.p95:.2f} ms, lost or duplicated {ws.lost}: target "
                        f"p95 ≤ {WS_TARGET_P95_MS:g} ms and 0 lost {'met' if met else 'NOT met'}"]  # fmt: skip
            print("\n".join(ws_lines))
            out += ws_lines
    if args.markdown:
        Path(args.markdown).write_text("\n".join([started, machine(), versions(), *out]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
