"""CrewAI adapters: the ``AgentRuntime`` that runs agent and crew nodes on CrewAI through our LLM gateway
(``runtime.CrewAIRuntime`` with ``llm.FailoverLLM``), and import/export of CrewAI definitions (``interop``).

Nothing here imports crewai at module import: the runtime imports it lazily, with telemetry turned off."""

from crewflow.adapters.crewai.runtime import CrewAIRuntime

__all__ = ["CrewAIRuntime"]
