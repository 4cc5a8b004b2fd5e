"""One typed settings object, read from ``CREWFLOW_*`` environment variables, with embedded defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Settings", "int_setting", "number_setting"]


def number_setting(env: Mapping[str, str], key: str, default: float, *, low: float, high: float,
                   above: bool = False) -> float:  # fmt: skip
    """The number in ``env[key]`` (``default`` when unset or empty) between ``low`` (excluded when
    ``above``) and ``high``; a ``ValueError`` naming the variable otherwise."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
    if value > high or value < low or (above and value == low):
        raise ValueError(f"{key} must be {'above' if above else 'at least'} {low:g} and at most {high:g}")
    return value


def int_setting(env: Mapping[str, str], key: str, default: int, *, low: int = 0, high: int = 2**31) -> int:
    """The integer in ``env[key]`` (``default`` when unset or empty) between ``low`` and ``high``."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{key} must be at least {low} and at most {high}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """``database_url`` None means the embedded SQLite file under ``data_dir``."""

    data_dir: str = ".crewflow"
    database_url: str | None = None
    redis_url: str | None = None
    mongodb_url: str | None = None
    default_provider: str = "scripted"
    providers_file: str | None = None
    scripted_latency: float = 0.0  # seconds each offline ``scripted`` answer takes (demos: to watch a run live)
    tenant: str = "local"
    max_parallel: int = 8
    db_pool_size: int = 20
    spare_schemas: int = 5
    tenants_per_connection: int = 250
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            data_dir=env.get("CREWFLOW_DATA_DIR", ".crewflow"),
            database_url=env.get("CREWFLOW_DATABASE_URL") or None,
            redis_url=env.get("CREWFLOW_REDIS_URL") or None,
            mongodb_url=env.get("CREWFLOW_MONGODB_URL") or None,
            default_provider=env.get("CREWFLOW_DEFAULT_PROVIDER", "scripted"),
            providers_file=env.get("CREWFLOW_PROVIDERS") or None,
            scripted_latency=number_setting(env, "CREWFLOW_SCRIPTED_LATENCY", 0.0, low=0, high=3600),
            tenant=env.get("CREWFLOW_TENANT", "local"),
            max_parallel=int_setting(env, "CREWFLOW_MAX_PARALLEL", 8),
            db_pool_size=int_setting(env, "CREWFLOW_DB_POOL_SIZE", 20),
            spare_schemas=int_setting(env, "CREWFLOW_SPARE_SCHEMAS", 5),
            tenants_per_connection=int_setting(env, "CREWFLOW_TENANTS_PER_CONNECTION", 250),
            log_level=env.get("CREWFLOW_LOG_LEVEL", "info"),
            log_format=env.get("CREWFLOW_LOG_FORMAT", "auto"),
            extra={k: v for k, v in env.items() if k.startswith("CREWFLOW_")},
        )

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir}/crewflow.db"
