"""Agent runtimes that need no LLM provider: the deterministic offline ``scripted`` runtime and the router
that sends each agent to the runtime its provider needs."""

from crewflow.adapters.runtime.routing import ProviderRoutingRuntime
from crewflow.adapters.runtime.scripted import ScriptedRuntime

__all__ = ["ProviderRoutingRuntime", "ScriptedRuntime"]
