"""The LLM providers file used by the CLI and the library (the platform keeps providers per tenant in its
database instead). Keys are read from environment variables named in the file, never written in it::

    budget: 5.00                      # optional spending limit for the run's tenant
    providers:
      - name: primary
        kind: openai                  # openai | azure | vllm | lmstudio | ollama | anthropic | scripted
        base_url: https://api.openai.com/v1
        model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY
        priority: 1                   # lower is tried first
        price: {input_per_1k: 0.00015, output_per_1k: 0.0006}
        timeout: 60
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crewflow.domain.failover import Budget, Price
from crewflow.ports.llm import ProviderConfig

__all__ = ["ProvidersFile", "ProvidersFileError", "load_providers_file"]

_KEYS = {"name", "kind", "base_url", "model", "api_key_env", "priority", "price", "timeout", "connect_timeout",
         "max_connections", "api_version", "headers"}  # fmt: skip


class ProvidersFileError(ValueError):
    """The providers file is unreadable or malformed (the message names the entry and field, never a key)."""


@dataclass(frozen=True, slots=True)
class ProvidersFile:
    providers: tuple[ProviderConfig, ...]
    budget: Budget | None = None


def _number(entry: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProvidersFileError(f"{where}.{key} must be a number")
    return float(value)


def load_providers_file(path: str | Path, env: Mapping[str, str] | None = None) -> ProvidersFile:
    import yaml

    env = os.environ if env is None else env
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvidersFileError(f"no such providers file: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ProvidersFileError(f"cannot read providers file {path}: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), list) or not data["providers"]:
        raise ProvidersFileError(f"{path}: needs a non-empty 'providers' list")
    configs: list[ProviderConfig] = []
    for index, entry in enumerate(data["providers"]):
        where = f"{path}: providers[{index}]"
        if not isinstance(entry, Mapping):
            raise ProvidersFileError(f"{where} must be a mapping")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            hint = " (put keys in an environment variable named by api_key_env)" if "api_key" in unknown else ""
            raise ProvidersFileError(f"{where}: unknown field(s) {', '.join(unknown)}{hint}")
        for required in ("name", "kind", "model"):
            if not isinstance(entry.get(required), str) or not entry[required]:
                raise ProvidersFileError(f"{where}.{required} is required (a string)")
        api_key = ""
        if entry.get("api_key_env"):
            variable = str(entry["api_key_env"])
            if variable not in env:
                raise ProvidersFileError(f"{where}: environment variable {variable} (api_key_env) is not set")
            api_key = env[variable]
        price = entry.get("price") or {}
        if not isinstance(price, Mapping):
            raise ProvidersFileError(f"{where}.price must be a mapping")
        configs.append(ProviderConfig(
            name=entry["name"], kind=entry["kind"], model=entry["model"], base_url=str(entry.get("base_url", "")),
            api_key=api_key, priority=int(_number(entry, "priority", where, 0)),
            price=Price(_number(price, "input_per_1k", f"{where}.price", 0.0),
                        _number(price, "output_per_1k", f"{where}.price", 0.0)),
            timeout=_number(entry, "timeout", where, 60.0),
            connect_timeout=_number(entry, "connect_timeout", where, 5.0),
            max_connections=int(_number(entry, "max_connections", where, 100)),
            api_version=entry.get("api_version"), headers=dict(entry.get("headers") or {}),
        ))  # fmt: skip
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ProvidersFileError(f"{path}: provider names must be unique")
    budget = data.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0):
        raise ProvidersFileError(f"{path}: budget must be a non-negative number")
    return ProvidersFile(tuple(configs), Budget(float(budget)) if budget is not None else None)
