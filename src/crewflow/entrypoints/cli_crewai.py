"""``crewflow import crewai PATH`` and ``crewflow export crewai FLOW_FILE -o DIR``.

Import reads a CrewAI project (a folder with ``agents.yaml`` + ``tasks.yaml``, also under ``config/``) or a
``crewai.flow/v1`` file and writes a crewflow flow file (stdout, or ``-o``). What the importer assumed (task
assignment, context) or ignored is printed as ``note:`` lines on stderr. Export writes ``agents.yaml`` +
``tasks.yaml`` for a single-crew flow, otherwise one ``crewai.flow/v1`` file.

Exit codes: 0 done; 2 invalid input (each problem one line on stderr, never a traceback)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["cmd_export", "cmd_import", "register"]

EXIT_OK, EXIT_USAGE = 0, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = subparsers.add_parser("import", help="import definitions from another framework")
    formats = imp.add_subparsers(dest="import_format", metavar="FORMAT", required=True)
    crewai = formats.add_parser(
        "crewai",
        help="a CrewAI project folder (agents.yaml + tasks.yaml) or a crewai.flow/v1 file",
        description="Convert a CrewAI project (agents.yaml + tasks.yaml) into a flow with one crew node, or a "
        "declarative crewai.flow/v1 file into a crewflow flow. Assumptions are printed as notes on stderr.",
    )
    crewai.add_argument("path", metavar="PATH", help="project folder or crewai.flow/v1 YAML/JSON file")
    crewai.add_argument("-o", "--output", metavar="FILE", help="write the flow here (default: stdout)")
    crewai.add_argument("--assign", action="append", default=[], metavar="TASK=AGENT",
                        help="run TASK with AGENT (for tasks.yaml entries without 'agent:'; repeatable)")  # fmt: skip
    crewai.set_defaults(func=cmd_import)

    exp = subparsers.add_parser("export", help="export a flow to another framework's format")
    targets = exp.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    crewai_out = targets.add_parser(
        "crewai",
        help="agents.yaml + tasks.yaml for a single-crew flow, else a crewai.flow/v1 file",
        description="Write a flow as CrewAI definitions: agents.yaml and tasks.yaml when the flow is one crew "
        "between an input and an output node, otherwise one crewai.flow/v1 document.",
    )
    crewai_out.add_argument("flow_file", metavar="FLOW_FILE", help="a crewflow flow file (YAML or JSON)")
    crewai_out.add_argument("-o", "--output", metavar="DIR", required=True, help="folder to write into")
    crewai_out.set_defaults(func=cmd_export)


def _fail(problems: tuple[str, ...] | list[str]) -> int:
    for problem in problems:
        print(f"crewflow: error: {problem}", file=sys.stderr)
    return EXIT_USAGE


def cmd_import(args: argparse.Namespace) -> int:
    import yaml

    from crewflow.adapters.crewai.interop import InteropError, import_crewai_path

    assign: dict[str, str] = {}
    for pair in args.assign or []:
        task, sep, agent = pair.partition("=")
        if not sep or not task.strip() or not agent.strip():
            return _fail([f"--assign '{pair}' must look like TASK=AGENT"])
        assign[task.strip()] = agent.strip()
    try:
        result = import_crewai_path(args.path, assign=assign or None)
    except InteropError as exc:
        return _fail(list(exc.problems))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    text = yaml.safe_dump(result.document, sort_keys=False, allow_unicode=True, width=120)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _fail([f"cannot write {args.output}: {exc.strerror or exc}"])
        print(f"wrote {args.output} ({len(result.flow.nodes)} nodes)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from crewflow.adapters.crewai.interop import InteropError, export_crewai, write_export
    from crewflow.domain.errors import FlowInvalid
    from crewflow.domain.validation import validate_flow
    from crewflow.entrypoints.library import load_flow

    try:
        flow = load_flow(Path(args.flow_file))
    except FlowInvalid as exc:
        return _fail([f"{args.flow_file}: {p}" for p in exc.problems])
    problems = validate_flow(flow)
    if problems:
        return _fail([f"{args.flow_file}: {p}" for p in problems])
    try:
        result = export_crewai(flow)
        written = write_export(result, args.output)
    except InteropError as exc:
        return _fail(list(exc.problems))
    except OSError as exc:
        return _fail([f"cannot write into {args.output}: {exc.strerror or exc}"])
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for path in written:
        print(path)
    return EXIT_OK
