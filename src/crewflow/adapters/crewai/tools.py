"""crewflow tools as CrewAI tools: each tool an agent may use becomes a ``BaseTool`` whose ``args_schema`` is a
pydantic model generated from the tool's input JSON Schema, and whose every call runs the tool in crewflow's
``ToolSandbox``.

The model: an object schema's ``properties`` become fields typed from their JSON Schema ``type`` (string →
str, integer → int, number → float, boolean → bool, array → list of the item type, object → dict; ``enum``
→ Literal; a list of types → a union; anything else → Any), required as the schema says, with their
``description`` and ``default``. A property whose name is not a usable Python field name keeps it as the
field's alias. A schema without properties gives one free-form ``input`` field.

Threads: CrewAI runs crews in worker threads (``asyncio.to_thread``) and may call a tool from yet another
thread. The sandbox is async and belongs to the engine's event loop, captured when the node started: a call
is sent there with ``asyncio.run_coroutine_threadsafe`` and the calling thread waits for its result; an
async call (``_arun``) on another loop awaits the same future. A call made on the engine's loop thread itself
is refused (waiting there would deadlock the loop).

CrewAI and pydantic are imported only when a tool is built (crewai stays out of ``import crewflow``).
"""

from __future__ import annotations

import asyncio
import functools
import keyword
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from crewflow.domain.agents import ToolRef
from crewflow.domain.errors import NodeExecutionError
from crewflow.domain.templates import to_text
from crewflow.ports.runtime import NodeEmitter, ToolSandbox, ToolWork

__all__ = ["SandboxCall", "ToolCallRefused", "args_model", "crewai_tool"]

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ToolCallRefused(Exception):
    """The call cannot be made (the node was cancelled, or it came from the engine's own loop thread)."""


@dataclass(frozen=True, slots=True)
class SandboxCall:
    """Where calls of one tool by one node run: the sandbox, the engine's loop, the node's emitter and ids."""

    sandbox: ToolSandbox
    loop: asyncio.AbstractEventLoop
    emit: NodeEmitter
    tenant_id: str
    execution_id: str
    node_id: str
    attempt: int
    cancelled: Callable[[], bool] = lambda: False

    async def run(self, ref: ToolRef, payload: Mapping[str, Any]) -> str:
        """Run the tool on the engine's loop; its output as text for the agent. A tool failure is told to the
        agent (it may try other input) rather than failing the node."""
        work = ToolWork(self.tenant_id, self.execution_id, self.node_id, self.attempt, ref, dict(payload),
                        ref.limits.timeout)  # fmt: skip
        try:
            outcome = await self.sandbox.run_tool(work, self.emit)
        except NodeExecutionError as exc:
            return f"The tool '{ref.id}' failed: {exc}"
        return to_text(outcome.output)

    def call(self, ref: ToolRef, payload: Mapping[str, Any]) -> str:
        """From a thread other than the loop's: wait for the call to finish on the engine's loop."""
        self._check()
        if _on_thread_of(self.loop):
            raise ToolCallRefused("a crewflow tool cannot be called synchronously from the engine's loop thread")
        return asyncio.run_coroutine_threadsafe(self.run(ref, payload), self.loop).result()

    async def acall(self, ref: ToolRef, payload: Mapping[str, Any]) -> str:
        self._check()
        if asyncio.get_running_loop() is self.loop:
            return await self.run(ref, payload)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.run(ref, payload), self.loop))

    def _check(self) -> None:
        if self.cancelled():
            raise ToolCallRefused("the node was cancelled")


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    thread = getattr(loop, "_thread_id", None)  # set while the loop runs (asyncio.BaseEventLoop)
    return thread is not None and thread == threading.get_ident()


# -- JSON Schema → pydantic ----------------------------------------------------------------------------------
def _json_type(schema: Any) -> Any:
    """The Python type of one property's JSON Schema."""
    if not isinstance(schema, Mapping):
        return Any
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str | int | bool) for v in enum):
        return Literal[tuple(enum)]
    kind = schema.get("type")
    if isinstance(kind, list):
        members = tuple(_json_type({**schema, "type": k}) for k in kind if isinstance(k, str))
        return Union[members] if members else Any  # noqa: UP007 - a runtime-built union
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        return list[_json_type(schema.get("items"))]  # type: ignore[misc]
    if kind == "object":
        return dict[str, Any]
    return Any


def _field_name(name: str, taken: set[str]) -> str:
    """A Python field name for a property (the property's own when it is usable)."""
    from pydantic import BaseModel

    usable = _IDENT.fullmatch(name) and not keyword.iskeyword(name) and not name.startswith(("_", "model_"))
    if usable and not hasattr(BaseModel, name):
        return name
    base = re.sub(r"\W", "_", name).strip("_") or "field"
    candidate = f"arg_{base}"
    while candidate in taken:
        candidate += "_"
    return candidate


def args_model(ref: ToolRef) -> type[Any]:
    """The pydantic model of a tool's arguments, from its input JSON Schema."""
    from pydantic import ConfigDict, Field, create_model

    schema = ref.input_schema if isinstance(ref.input_schema, Mapping) else {}
    properties = schema.get("properties")
    required = set(schema.get("required") or ())
    fields: dict[str, Any] = {}
    if not isinstance(properties, Mapping) or not properties:
        fields["input"] = (Any, Field(default=None, description="the tool's input (any JSON value)"))
    else:
        taken: set[str] = set()
        for name, spec in properties.items():
            field_name = _field_name(str(name), taken)
            taken.add(field_name)
            spec = spec if isinstance(spec, Mapping) else {}
            kind = _json_type(spec)
            options: dict[str, Any] = {}
            if field_name != name:
                options["alias"] = name
            if isinstance(spec.get("description"), str):
                options["description"] = spec["description"]
            if name in required:
                fields[field_name] = (kind, Field(..., **options))
            else:
                fields[field_name] = (kind | None, Field(default=spec.get("default"), **options))
    config = ConfigDict(populate_by_name=True, extra="ignore")
    model: type[Any] = create_model(f"{_class_name(ref.id)}Args", __config__=config, **fields)
    return model


def _payload(model: type[Any], ref: ToolRef, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The tool's input document from validated arguments (by field name): property names back, and the
    optional properties the agent left out dropped rather than sent as null."""
    required = set(ref.input_schema.get("required") or ()) if isinstance(ref.input_schema, Mapping) else set()
    payload: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        if field_name not in arguments:
            continue
        name = info.alias or field_name
        value = arguments[field_name]
        if value is None and name not in required:
            continue
        payload[name] = value
    if set(payload) == {"input"} and not (isinstance(ref.input_schema, Mapping) and ref.input_schema.get(
            "properties")):  # fmt: skip
        only = payload["input"]
        return dict(only) if isinstance(only, Mapping) else {"input": only}
    return payload


def crewai_tool(ref: ToolRef, call: SandboxCall) -> Any:
    """A CrewAI ``BaseTool`` running ``ref`` through ``call``'s sandbox."""
    model = args_model(ref)
    tool = _tool_class()(name=ref.id, description=ref.description or f"crewflow tool {ref.id}", args_schema=model)
    tool._ref = ref
    tool._call = call
    return tool


@functools.cache
def _tool_class() -> type[Any]:
    from crewai.tools import BaseTool
    from pydantic import PrivateAttr

    class SandboxTool(BaseTool):
        """A crewflow tool as CrewAI sees it: each call runs in crewflow's tool sandbox."""

        _ref: Any = PrivateAttr(default=None)
        _call: Any = PrivateAttr(default=None)

        def _arguments(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
            validated = self.args_schema.model_validate(dict(kwargs))
            given = {k: getattr(validated, k) for k in validated.model_fields_set}
            return _payload(self.args_schema, self._ref, given)

        def _run(self, **kwargs: Any) -> str:
            result: str = self._call.call(self._ref, self._arguments(kwargs))
            return result

        async def _arun(self, **kwargs: Any) -> str:
            result: str = await self._call.acall(self._ref, self._arguments(kwargs))
            return result

    return SandboxTool


def _class_name(ident: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", ident) if part) or "Tool"
