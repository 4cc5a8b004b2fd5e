"""The ``crewflow`` command line.

Exit codes: 0 success; 1 the run failed or was cancelled; 2 invalid input (bad file, invalid flow, bad
option). User errors are one readable line each on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crewflow.domain.errors import FlowInvalid
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.flow import Flow
from crewflow.domain.scheduler import NodeStatus
from crewflow.domain.templates import to_text
from crewflow.ports.events import EventSink

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_FLOW = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"
# Subcommand groups that live in their own modules (each exposes ``register(subparsers)``).
EXTENSIONS = (
    "crewflow.entrypoints.cli_crewai",
    "crewflow.entrypoints.cli_admin",
    "crewflow.entrypoints.cli_keys",
    "crewflow.entrypoints.cli_backup",
    "crewflow.entrypoints.cli_worker",
    "crewflow.entrypoints.cli_tools",
)


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"crewflow: error: {message}\n")


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` (a string) or ``key:=json`` (any JSON value)."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        if ":=" in pair and pair.index(":=") < pair.index("=") + 1:
            key, raw = pair.split(":=", 1)
            try:
                inputs[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise UsageError(f"--input {key}:= is not valid JSON ({exc.msg})") from None
        elif "=" in pair:
            key, inputs_value = pair.split("=", 1)
            inputs[key] = inputs_value
        else:
            raise UsageError(f"--input '{pair}' must look like key=value or key:=<json>")
        if not key.strip():
            raise UsageError(f"--input '{pair}' has an empty name")
    return inputs


def _load(path: str) -> Flow:
    from crewflow.entrypoints.library import load_flow

    return load_flow(Path(path))


def _report_invalid(path: str, exc: FlowInvalid) -> int:
    for problem in exc.problems:
        print(f"{path}: {problem}", file=sys.stderr)
    return EXIT_USAGE


def cmd_validate(args: argparse.Namespace) -> int:
    from crewflow.domain.validation import ensure_valid

    try:
        flow = _load(args.file)
        ensure_valid(flow)
    except FlowInvalid as exc:
        return _report_invalid(args.file, exc)
    print(f"{args.file}: ok ({len(flow.nodes)} nodes, {len(flow.edges)} edges)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    return _run_file(args.file, args)


def cmd_demo(args: argparse.Namespace) -> int:
    return _run_file(str(DEMO_FLOW), args)


def _run_file(path: str, args: argparse.Namespace) -> int:
    from crewflow.domain.validation import ensure_valid

    try:
        inputs = _parse_inputs(args.input or [])
        flow = _load(path)
        graph = ensure_valid(flow)
    except FlowInvalid as exc:
        return _report_invalid(path, exc)
    except UsageError as exc:
        print(f"crewflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = flow.missing_inputs(inputs)
    if missing:
        names = ", ".join(missing)
        print(f"crewflow: error: missing required input(s): {names} (pass --input NAME=VALUE)", file=sys.stderr)
        return EXIT_USAGE
    progress = _Progress(flow, enabled=not args.quiet and not args.json)
    try:
        result = asyncio.run(_execute(flow, graph, inputs, args, progress))
    except UsageError as exc:
        print(f"crewflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("crewflow: interrupted", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.stop()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        _print_result(result)
    return EXIT_OK if result.ok else EXIT_FAILED


async def _execute(flow: Flow, graph: Any, inputs: Mapping[str, Any], args: argparse.Namespace,
                   progress: _Progress) -> Any:  # fmt: skip
    """Run in-process. With a providers file, non-scripted agents run on CrewAI over the failover gateway;
    with a database URL the run is recorded (execution, node checkpoints, events) in the tenant's store."""
    from contextlib import nullcontext

    from crewflow.bootstrap import LocalLLM, build_engine, build_local_llm
    from crewflow.domain.flow import NodeKind
    from crewflow.entrypoints.cli_tools import open_local_tools
    from crewflow.entrypoints.providers_file import load_providers_file
    from crewflow.settings import Settings

    settings = Settings.from_env()
    tenant = args.tenant or settings.tenant
    providers_path = args.providers or settings.providers_file
    database_url = args.database_url or settings.database_url
    llm: LocalLLM | None = None
    if providers_path:
        providers = load_providers_file(providers_path)
        llm = build_local_llm(tenant, providers.providers, providers.budget)
    # Tools run only sandboxed: open this machine's sandbox when the flow has tool nodes or agents with tools.
    needs_tools = any(n.kind == NodeKind.TOOL for n in flow.nodes) or any(a.tools for a in flow.agents.values())
    try:
        async with open_local_tools(settings.extra) if needs_tools else nullcontext(None) as local:
            engine = build_engine(settings, gateway=llm.gateway if llm else None,
                                  tools=local.sandbox if local is not None else None)  # fmt: skip
            options: dict[str, Any] = {"graph": graph, "listeners": (progress.on_event,),
                                       "max_parallel": args.max_parallel, "timeout": args.timeout}  # fmt: skip
            if not database_url:
                return await engine.run(flow, inputs, tenant_id=tenant, **options)
            return await _execute_recorded(engine, database_url, tenant, flow, inputs, options)
    finally:
        if llm is not None:
            await llm.aclose()


async def _execute_recorded(engine: Any, database_url: str, tenant: str, flow: Flow, inputs: Mapping[str, Any],
                            options: dict[str, Any]) -> Any:  # fmt: skip
    from crewflow.adapters.sql import CheckpointSink, SqlUnitOfWorkFactory, open_database
    from crewflow.application.run_flow import run_recorded

    tenant_id = await _ensure_tenant(database_url, tenant)
    database = open_database(database_url)
    try:
        uow_factory = SqlUnitOfWorkFactory(database)
        # node checkpoints and the replay log, one transaction per batch
        sinks: list[EventSink] = [CheckpointSink(uow_factory, tenant_id, store_events=True)]
        return await run_recorded(engine, uow_factory, tenant_id, flow, inputs, sinks=sinks, **options)
    finally:
        await database.dispose()


async def _ensure_tenant(database_url: str, tenant: str) -> str:
    """The tenant's id (given its id or slug). The default ``local`` tenant is created on first use; any
    other tenant must exist (``crewflow tenants create``)."""
    from datetime import UTC, datetime

    from crewflow.adapters.sql.engine import tenant_schema
    from crewflow.adapters.sql.provisioning import open_provisioner
    from crewflow.domain.tenancy import Tenant

    provisioner = open_provisioner(database_url)
    try:
        try:
            tenants = await provisioner.list_tenants()
        except Exception as exc:
            if "UndefinedTable" in type(exc).__name__ or "no such table" in str(exc):
                raise UsageError("the database has no crewflow tables yet; run: crewflow migrate") from None
            raise
        for known in tenants:
            if tenant in (known.id, known.slug):
                return known.id
        if tenant != "local":
            raise UsageError(f"tenant {tenant!r} does not exist (create it with: crewflow tenants create {tenant})")
        local = Tenant(id="local", slug="local", name="Local", db_schema=tenant_schema("local"),
                       created_at=datetime.now(UTC))  # fmt: skip
        await provisioner.register(local)
        return local.id
    finally:
        await provisioner.aclose()


class _Progress:
    """Live per-node status table on a terminal; one line per node event otherwise."""

    _STYLE: Mapping[str, str] = {
        "pending": "dim", "running": "yellow", "retrying": "magenta", "completed": "green",
        "failed": "red", "skipped": "dim", "cancelled": "red",
    }  # fmt: skip

    def __init__(self, flow: Flow, *, enabled: bool) -> None:
        self.flow = flow
        self.enabled = enabled
        self.status = {node.id: "pending" for node in flow.nodes}
        self.detail: dict[str, str] = {}
        self.live: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=12, transient=False)
            self.live.start()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"flow {self.flow.name or self.flow.id}", expand=False)
        table.add_column("node")
        table.add_column("kind")
        table.add_column("status")
        table.add_column("detail", overflow="ellipsis", max_width=60)
        for node in self.flow.nodes:
            status = self.status[node.id]
            table.add_row(node.id, node.kind.value, f"[{self._STYLE.get(status, '')}]{status}[/]",
                          self.detail.get(node.id, ""))  # fmt: skip
        return table

    _KIND_STATUS: Mapping[EventKind, str] = {
        EventKind.NODE_STARTED: NodeStatus.RUNNING, EventKind.NODE_COMPLETED: NodeStatus.COMPLETED,
        EventKind.NODE_FAILED: NodeStatus.FAILED, EventKind.NODE_RETRYING: NodeStatus.RETRYING,
        EventKind.NODE_SKIPPED: NodeStatus.SKIPPED, EventKind.NODE_CANCELLED: NodeStatus.CANCELLED,
    }  # fmt: skip

    def on_event(self, event: ExecutionEvent) -> None:
        if not self.enabled or event.node_id is None or event.kind not in self._KIND_STATUS:
            return
        status = str(self._KIND_STATUS[event.kind])
        self.status[event.node_id] = status
        data = event.data
        if event.kind == EventKind.NODE_COMPLETED:
            detail = f"{data.get('duration', 0.0) * 1000:.0f} ms"
        elif event.kind in (EventKind.NODE_FAILED, EventKind.NODE_RETRYING):
            detail = f"attempt {data.get('attempt')}: {data.get('error')}"
        elif event.kind == EventKind.NODE_STARTED and data.get("attempt", 1) > 1:
            detail = f"attempt {data.get('attempt')}"
        else:
            detail = self.detail.get(event.node_id, "")
        self.detail[event.node_id] = detail
        if self.live is not None:
            self.live.update(self._table())
        else:
            print(f"  {event.node_id:<20} {status:<10} {detail}".rstrip(), file=sys.stderr)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _print_result(result: Any) -> None:
    duration = f"{result.duration:.2f}s" if result.duration is not None else "-"
    print(f"run {result.execution_id}: {result.status} in {duration}")
    if result.error:
        print(f"error: {result.error}")
    for node_id, value in result.outputs.items():
        print(f"\n== {node_id} ==\n{to_text(value)}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1 or not 0 < args.port < 65536:
        raise UsageError("--workers must be at least 1 and --port between 1 and 65535")
    if args.demo:
        os.environ["CREWFLOW_DEMO"] = "1"  # read by every server worker at start-up
        # offline answers take a moment and stream word by word, so a demo run can be watched live
        os.environ.setdefault("CREWFLOW_SCRIPTED_LATENCY", "0.8")
    print(f"crewflow serving on http://{args.host}:{args.port} (API docs: /api/v1/schema)", file=sys.stderr)
    uvicorn.run("crewflow.entrypoints.http.asgi:app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", proxy_headers=args.proxy_headers)  # fmt: skip
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from crewflow import __version__

    parser = _Parser(prog="crewflow", description="Build, run and watch AI workflows.")
    parser.add_argument("--version", action="version", version=f"crewflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check a flow file and list every problem")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    for name, handler, help_text in (
        ("run", cmd_run, "run a flow file in-process and print its outputs"),
        ("demo", cmd_demo, "run the bundled demo flow offline"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "run":
            p.add_argument("file")
        p.add_argument("--input", "-i", action="append", metavar="KEY=VALUE",
                       help="a run input; KEY:=JSON for a JSON value (repeatable)")  # fmt: skip
        p.add_argument("--json", action="store_true", help="print the whole result as JSON")
        p.add_argument("--quiet", "-q", action="store_true", help="no live progress")
        p.add_argument("--max-parallel", type=int, default=None, help="nodes running at once")
        p.add_argument("--timeout", type=float, default=None, help="fail the run after this many seconds")
        p.add_argument("--providers", metavar="FILE", help="LLM providers file (default: $CREWFLOW_PROVIDERS)")
        p.add_argument("--tenant", help="tenant id or slug the run belongs to (default: $CREWFLOW_TENANT or local)")
        p.add_argument("--database-url", help="record the run in this database (default: $CREWFLOW_DATABASE_URL;"
                       " none: the run is not stored)")  # fmt: skip
        p.set_defaults(func=handler)

    p = sub.add_parser("serve", help="run the HTTP API, WebSocket and canvas")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a proxy in front")
    p.add_argument("--demo", action="store_true", help="create the demo workspace (an offline demo flow) if missing")
    p.set_defaults(func=cmd_serve)

    for module in EXTENSIONS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from crewflow.entrypoints.logs import configure_logging
    from crewflow.settings import Settings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(Settings.from_env())
        code: int = args.func(args)
    except UsageError as exc:
        print(f"crewflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:  # configuration and file-system errors: one line, no traceback
        print(f"crewflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3"):
            raise
        # A database that is down or refuses: one line naming the error class, never the SQL or parameters.
        print(f"crewflow: error: database error ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
