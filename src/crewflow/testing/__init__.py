"""Test helpers shipped with crewflow, so users can test their own flows offline: a real local LLM server
speaking the OpenAI-compatible and Anthropic APIs with scripted answers and injectable faults.

Import ``crewflow.testing.llm_server`` for the server; this package imports nothing heavy by itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crewflow.testing.llm_server import Fault, LLMTestServer, SimulatedProvider

__all__ = ["Fault", "LLMTestServer", "SimulatedProvider"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crewflow.testing import llm_server

        return getattr(llm_server, name)
    raise AttributeError(name)
