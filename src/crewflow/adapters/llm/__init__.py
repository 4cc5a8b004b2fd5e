"""LLM provider adapters: OpenAI-compatible, Anthropic, scripted (offline). ``build_provider`` picks one from
a ``ProviderConfig``. aiohttp is imported by the HTTP adapters only when they are built."""

from __future__ import annotations

from crewflow.ports.llm import LLMProvider, ProviderConfig

__all__ = ["PROVIDER_KINDS", "build_provider"]

PROVIDER_KINDS = ("openai", "azure", "vllm", "lmstudio", "ollama", "anthropic", "scripted")


def build_provider(config: ProviderConfig) -> LLMProvider:
    """The adapter for ``config.kind``. ``vllm``, ``lmstudio`` and ``ollama`` are OpenAI-compatible
    (``base_url`` ends with ``/v1``)."""
    kind = config.kind.lower()
    if kind in ("openai", "azure", "vllm", "lmstudio", "ollama"):
        from crewflow.adapters.llm.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(config)
    if kind == "anthropic":
        from crewflow.adapters.llm.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    if kind == "scripted":
        from crewflow.adapters.llm.scripted import ScriptedProvider

        return ScriptedProvider(config.name, config.model)
    raise ValueError(f"unknown LLM provider kind {config.kind!r} (expected one of {', '.join(PROVIDER_KINDS)})")
