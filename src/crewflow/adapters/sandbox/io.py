"""What every sandbox backend shares: a tool call's JSON contract and how its failures read.

A tool reads one JSON document on stdin and writes one on stdout; stderr is its log. Before a run the input
is checked against the tool's input JSON Schema (Draft 2020-12 unless the schema's ``$schema`` says
otherwise); after it, stdout (capped at ``limits.output_bytes``) must parse as one JSON document that
matches the output schema. stderr lines are emitted as ``node.log`` events (``{"line", "stream", "tool"}``),
at most ``MAX_LOG_LINES`` of at most ``MAX_LINE_CHARS`` characters each.

Failures are ``NodeExecutionError``: the tool's own faults (bad input or output, non-zero exit, timeout,
out of memory) are not retryable — the same input would fail the same way; the engine's faults (Docker not
answering, an image pull failing) are. Messages only carry the tool's id, its limits and what the tool
itself printed — never the host's environment.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators
from jsonschema.protocols import Validator

from crewflow.domain.agents import ToolRef
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.events import EventKind
from crewflow.ports.runtime import NodeEmitter, NodeOutcome, ToolWork

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_LOG_LINES",
    "RawRun",
    "StderrLog",
    "StdoutBuffer",
    "call_timeout",
    "encode_input",
    "engine_error",
    "outcome_of",
    "validate_input",
]

MAX_LOG_LINES = 200
MAX_LINE_CHARS = 2000
_VALIDATORS: OrderedDict[str, Validator] = OrderedDict()
_VALIDATOR_CACHE = 256


def call_timeout(work: ToolWork) -> float:
    """The wall-clock limit of this call: the tool's limit, or the caller's if it is shorter."""
    limit = work.tool.limits.timeout
    return min(limit, work.timeout) if work.timeout is not None and work.timeout > 0 else limit


def _validator(tool: ToolRef, schema: Mapping[str, Any], which: str) -> Validator:
    key = json.dumps(schema, sort_keys=True, default=str)
    found = _VALIDATORS.get(key)
    if found is not None:
        _VALIDATORS.move_to_end(key)
        return found
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(dict(schema))
    except schema_exceptions.SchemaError as exc:
        raise NodeExecutionError(f"tool {tool.id} has an invalid {which} schema: {_short(exc.message)}",
                                 retryable=False) from None  # fmt: skip
    made: Validator = cls(dict(schema))
    _VALIDATORS[key] = made
    if len(_VALIDATORS) > _VALIDATOR_CACHE:
        _VALIDATORS.popitem(last=False)
    return made


def _first_problem(validator: Validator, document: Any) -> str | None:
    errors = sorted(validator.iter_errors(document), key=schema_exceptions.relevance)
    if not errors:
        return None
    best = errors[0]
    return f"{best.json_path}: {_short(best.message)}"


def validate_input(tool: ToolRef, payload: Any) -> None:
    """Raise a non-retryable ``NodeExecutionError`` naming the first problem if ``payload`` breaks the
    tool's input schema."""
    if not tool.input_schema:
        return
    problem = _first_problem(_validator(tool, tool.input_schema, "input"), payload)
    if problem is not None:
        raise NodeExecutionError(f"tool {tool.id} input does not match its input schema: {problem}",
                                 retryable=False)  # fmt: skip


def encode_input(tool: ToolRef, payload: Any) -> bytes:
    """The payload as the JSON bytes written on the tool's stdin."""
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise NodeExecutionError(f"tool {tool.id} input is not JSON-serialisable: {exc}", retryable=False) from None


def engine_error(tool: ToolRef, what: str, exc: BaseException) -> NodeExecutionError:
    """A retryable failure of the sandbox itself (not of the tool)."""
    return NodeExecutionError(f"tool {tool.id}: {what}: {_short(str(exc) or type(exc).__name__)}", retryable=True)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StdoutBuffer:
    """Collects stdout up to ``limit`` bytes; ``overflow`` once more arrived (the rest is dropped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self.size = 0
        self.overflow = False

    def feed(self, data: bytes) -> bool:
        """Add ``data``; False once the limit is exceeded (the caller should stop the tool)."""
        if self.overflow:
            return False
        room = self.limit - self.size
        if len(data) > room:
            self._parts.append(data[:room])
            self.size = self.limit
            self.overflow = True
            return False
        self._parts.append(data)
        self.size += len(data)
        return True

    def value(self) -> bytes:
        return b"".join(self._parts)


class StderrLog:
    """Splits stderr into lines, emits each as a ``node.log`` event (capped) and remembers the last one."""

    def __init__(self, tool: ToolRef, emit: NodeEmitter, *, stream: str = "stderr") -> None:
        self.tool = tool
        self.emit = emit
        self.stream = stream
        self._partial = bytearray()
        self.emitted = 0
        self.dropped = 0
        self.last_line = ""

    def feed(self, data: bytes) -> None:
        self._partial.extend(data)
        while True:
            cut = self._partial.find(b"\n")
            if cut < 0:
                break
            line = bytes(self._partial[:cut])
            del self._partial[: cut + 1]
            self._line(line)
        if len(self._partial) > MAX_LINE_CHARS * 4:  # a very long line: keep its start only
            line = bytes(self._partial[: MAX_LINE_CHARS * 4])
            self._partial.clear()
            self._line(line)

    def close(self) -> None:
        if self._partial:
            line = bytes(self._partial)
            self._partial.clear()
            self._line(line)
        if self.dropped:
            self._send(f"... {self.dropped} more stderr lines not shown")

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        if len(text) > MAX_LINE_CHARS:
            text = text[:MAX_LINE_CHARS] + "…"
        if text.strip():
            self.last_line = text.strip()
        if self.emitted >= MAX_LOG_LINES:
            self.dropped += 1
            return
        self.emitted += 1
        self._send(text)

    def _send(self, text: str) -> None:
        with contextlib.suppress(Exception):  # a failing listener must not fail the tool call
            self.emit(EventKind.NODE_LOG, {"line": text, "stream": self.stream, "tool": self.tool.id})


@dataclass(frozen=True, slots=True)
class RawRun:
    """What a backend observed of one run. ``exit_code`` None: no exit status (killed before it ended)."""

    exit_code: int | None
    stdout: bytes
    stdout_overflow: bool = False
    timed_out: bool = False
    oom_killed: bool = False
    last_stderr: str = ""
    killed_by_signal: int | None = None


def outcome_of(tool: ToolRef, raw: RawRun, timeout: float) -> NodeOutcome:
    """Map a run to its output or to the failure a user can act on."""
    limits = tool.limits
    if raw.timed_out:
        raise NodeExecutionError(f"tool {tool.id} timed out after {timeout:g}s and was killed", retryable=False)
    if raw.oom_killed:
        raise NodeExecutionError(f"tool {tool.id} was killed: out of memory (limit {limits.memory_mb} MiB)",
                                 retryable=False)  # fmt: skip
    if raw.stdout_overflow:
        raise NodeExecutionError(f"tool {tool.id} output is larger than its limit of {limits.output_bytes} bytes",
                                 retryable=False)  # fmt: skip
    if raw.killed_by_signal is not None:
        tail = f": {_short(raw.last_stderr)}" if raw.last_stderr else ""
        raise NodeExecutionError(f"tool {tool.id} was killed by signal {raw.killed_by_signal}{tail}", retryable=False)
    if raw.exit_code != 0:
        tail = f": {_short(raw.last_stderr)}" if raw.last_stderr else " (no stderr)"
        raise NodeExecutionError(f"tool {tool.id} exited with status {raw.exit_code}{tail}", retryable=False)
    try:
        output = json.loads(raw.stdout)
    except (ValueError, UnicodeDecodeError):
        raise NodeExecutionError(f"tool {tool.id} output is not valid JSON", retryable=False) from None
    if tool.output_schema:
        problem = _first_problem(_validator(tool, tool.output_schema, "output"), output)
        if problem is not None:
            raise NodeExecutionError(f"tool {tool.id} output does not match its output schema: {problem}",
                                     retryable=False)  # fmt: skip
    return NodeOutcome(output=output)
